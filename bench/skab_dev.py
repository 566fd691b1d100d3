"""What the SKAB development tools share (`skab_score_kinds.py`, `skab_error_shares.py`, `skab_row_rules.py`):
the benchmark config with its development split, a seed set on it, the means over seeds, and the command line
of the tools that run several seeds."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import emit
from trainer.benchmarks.skab_options import DEFAULT_CONFIG, SkabOptions, parse_options
from trainer.config import TrainerConfig, load_config


def dev_setup(parser: argparse.ArgumentParser, config_path: Path) -> tuple[TrainerConfig, SkabOptions]:
    """The config at `config_path` and its `[data.skab]` options; a usage error (exit 2) when it has no
    development split or no anomaly-free pseudo-files, which these tools judge settings on."""
    base = load_config(config_path)
    options = parse_options(base.data.generic.options if base.data.generic is not None else {})
    if not options.dev_files or not options.anomaly_free_rows:
        parser.error("the config needs [data.skab] dev_files and anomaly_free_rows")
    return base, options


def with_seed(config: TrainerConfig, seed: int) -> TrainerConfig:
    return dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))


def seed_means(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, the means over seeds of the chosen setting's development F1, FAR and MAR and of its
    anomaly-free FAR; `runs` maps each seed to `{variant: {"chosen_on_dev", "anomaly_free_far_pct"}}`."""
    names = list(next(iter(runs.values())))
    return {name: {
        key: round(statistics.mean(run[name]["chosen_on_dev"][key] for run in runs.values()), 4)
        for key in ("f1", "far_pct", "mar_pct")} | {
        "anomaly_free_far_pct": round(statistics.mean(run[name]["anomaly_free_far_pct"]
                                                      for run in runs.values()), 2)}
        for name in names}


OneSeed = Callable[[Path, TrainerConfig, SkabOptions], dict[str, Any]]


def seeds_main(argv: list[str] | None, doc: str | None, one_seed: OneSeed) -> int:
    """The command line of a tool that runs `one_seed(data_dir, config, options)` for each of `--seeds` and
    prints (and with `--out` writes) the JSON of every seed's variants and their means over seeds."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the SKAB folder (holding data/)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    base, options = dev_setup(parser, args.config)
    runs = {}
    for seed in args.seeds:
        runs[str(seed)] = one_seed(args.data_dir, with_seed(base, seed), options)
        print(f"seed {seed} done", file=sys.stderr)
    report = {"config": str(args.config), "dev_files": list(options.dev_files), "seeds": runs,
              "mean_over_seeds": seed_means(runs)}
    return emit(report, args.out)
