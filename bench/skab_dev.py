"""What the SKAB development tools share (`skab_score_kinds.py`, `skab_error_shares.py`): the benchmark config
with its development split, and a seed set on it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from trainer.benchmarks.skab_options import SkabOptions, parse_options
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
