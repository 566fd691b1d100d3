"""SKAB outlier-detection benchmark, exactly the published leaderboard protocol.

For each of the 34 labelled files separately: the first 400 rows are the training part (the scaler and the
model are fitted on them, nothing else), windows are 60 rows, the threshold comes from the training part's
window scores; every row of the test part (row 400 on) gets a 0/1 prediction. Predictions and labels of the
test parts of all files are concatenated and scored point-wise (F1, FAR %, MAR %:
`trainer.metrics.skab_metrics`).
The VAE, PCA T-squared + Q and Isolation Forest run on the same split; the baselines score single standardised
rows by default (``baseline_input = "rows"``, as SKAB's own T-squared+Q), or the VAE's flattened windows.

The VAE's inputs have the channels named in ``detrend_channels`` centred on each window's mean, and row
scores come from window scores by the ``row_score`` rule (`trainer.benchmarks.skab_scoring`). The threshold is
calibrated on the training part's row scores made by the same rule (``calibrate_on = "rows"``) or on its
window scores (``"windows"``, the earlier behaviour). Scores in ``scores.csv`` are divided by the file's
threshold, so ``is_anomaly`` is ``score > 1`` and scores of different files are comparable.

With a development split (``dev_files`` and the ``select_*`` keys) the VAE's row rule and margin are chosen
on the development files' test parts (`trainer.benchmarks.skab_select`) and applied to every file by
rescoring the kept window scores; the metrics are reported on all files and, separately, on the development
and the held-out files.

``--export-runs DIR`` also writes each file's VAE as a RUN_DIR for `edge-trainer export`, with the causal
``end`` row rule and that rule's threshold from the training part (`skab_outputs.export_run_dirs`,
`trainer.benchmarks.skab_export`); nothing else in the outputs changes.

This module runs the whole protocol (`run_benchmark`, the CLI's `add_arguments` and `run`), the dev-split
selection (`select_vae_setting`) and the anomaly-free check (`anomaly_free_far`). The options are in
`trainer.benchmarks.skab_options`, one file's run and rescoring in `trainer.benchmarks.skab_file`, what a run
writes in `trainer.benchmarks.skab_outputs`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.configtools import ConfigError
from trainer.benchmarks.skab_file import FileResult, rescore_vae, run_file
from trainer.benchmarks.skab_options import (
    DEFAULT_CONFIG,
    MODELS,
    SkabOptions,
    check_evaluation,
    parse_options,
)
from trainer.benchmarks.skab_outputs import export_run_dirs, save_vae_models, summarise, write_outputs
from trainer.benchmarks.skab_scoring import read_leaderboard
from trainer.benchmarks.skab_select import Candidate, choose, in_subset
from trainer.config import TrainerConfig, load_config
from trainer.data.series import Series
from trainer.data.skab import ANOMALY_FREE, data_root, labelled_files, read_skab_file
from trainer.metrics import skab_metrics

log = logging.getLogger(__name__)


def select_vae_setting(
    results: list[FileResult], config: TrainerConfig, options: SkabOptions
) -> tuple[Candidate, list[Candidate]]:
    """Choose the VAE's (row rule, margin) on the development files' test parts
    (`trainer.benchmarks.skab_select.choose`); returns the choice and every candidate's dev metrics."""
    dev = [r for r in results if in_subset(r.name, options.dev_files)]
    if not dev:
        raise ValueError(f"dev_files {list(options.dev_files)}: none of the selected files is one")
    labels = np.concatenate([r.labels for r in dev])
    if labels.min() == labels.max():  # FAR or MAR would be undefined (null) for every candidate
        kind = "anomalous" if labels.min() == 0 else "normal"
        raise ValueError(f"dev_files {list(options.dev_files)}: their test parts hold no {kind} rows, so no "
                         "setting can be chosen on them; name files with both")
    candidates: list[Candidate] = []
    for rule in options.select_row_scores:
        for margin in options.select_margins:
            scores = np.concatenate([rescore_vae(r, (rule, margin), config, options)[0] for r in dev])
            m = skab_metrics(labels, (scores > 1.0).astype(np.int8))
            candidates.append(Candidate(rule, margin, m["f1"], m["far_pct"], m["mar_pct"]))
    return choose(candidates, options.select_max_far_pct, options.select_max_mar_pct), candidates


def development_series(data_dir: Path, options: SkabOptions) -> list[Series]:
    """The labelled files named by `dev_files`, read, in file order."""
    return [read_skab_file(path) for path in labelled_files(data_dir)
            if in_subset(f"{path.parent.name}/{path.stem}", options.dev_files)]


def anomaly_free_parts(data_dir: Path, options: SkabOptions) -> list[Series]:
    """The anomaly-free run cut into consecutive unlabelled pseudo-files of `anomaly_free_rows` rows (all
    labels 0), each to be run like a labelled file; empty when `anomaly_free_rows` is 0 or the file is
    absent."""
    path = data_root(data_dir) / ANOMALY_FREE
    if options.anomaly_free_rows == 0 or not path.is_file():
        return []
    free, n = read_skab_file(path, labelled=False), options.anomaly_free_rows
    stamps = free.timestamps if free.timestamps is not None else np.arange(len(free), dtype=float)
    return [
        Series(f"anomaly-free/{k}", free.values[k * n : (k + 1) * n], list(free.channels),
               stamps[k * n : (k + 1) * n], np.zeros(n, np.int8))
        for k in range(len(free) // n)
    ]


def anomaly_free_far(
    data_dir: Path,
    config: TrainerConfig,
    options: SkabOptions,
    models: tuple[str, ...],
    vae_setting: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """False-alarm rates on normal data that holds no test row: each pseudo-file of `anomaly_free_parts`
    run through `run_file` like a labelled file (its first `train_rows` rows train). Needs no labels, so
    settings can be judged on it honestly. Empty when there is no anomaly-free data to run."""
    results = [run_file(part, config, options, models, vae_setting)
               for part in anomaly_free_parts(data_dir, options)]
    if not results:
        return {}
    rows = sum(len(r.labels) for r in results)
    summary: dict[str, Any] = {"pseudo_files": len(results), "test_rows": rows}
    for name in models:
        flagged = sum(int((r.scores[name] > 1.0).sum()) for r in results)
        summary[name] = {"far_pct": 100.0 * flagged / max(1, rows)}
    return summary


def run_benchmark(
    data_dir: Path,
    out: Path,
    config: TrainerConfig,
    *,
    models: tuple[str, ...] = MODELS,
    limit: int | None = None,
    files: list[str] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    export_runs: Path | None = None,
    export_margin: float | None = None,
) -> dict[str, Any]:
    """The whole protocol; returns the JSON summary (also written to `out/metrics.json`). With
    `export_runs`, each file's VAE is also written there as a RUN_DIR for `edge-trainer export`
    (`export_run_dirs`); the metrics and scores do not depend on it."""
    generic = config.data.generic.options if config.data.generic is not None else {}
    options = parse_options(generic)
    check_evaluation(config.evaluation, config.source_path or None)
    if export_runs is not None and "vae" not in models:
        raise ValueError("--export-runs writes the VAE's run directories: include vae in --models")
    if export_margin is not None and not export_margin > 0:
        raise ValueError(f"--export-margin must be positive, got {export_margin:g}")
    paths = labelled_files(data_dir)
    if files:
        wanted = set(files)
        paths = [p for p in paths if f"{p.parent.name}/{p.stem}" in wanted]
        unknown = wanted - {f"{p.parent.name}/{p.stem}" for p in paths}
        if unknown:
            raise ValueError(f"--files: no SKAB file(s) {sorted(unknown)} in {data_root(data_dir)}")
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"no SKAB files selected in {data_root(data_dir)}")
    started = time.monotonic()
    results: list[FileResult] = []
    for path in paths:
        result = run_file(read_skab_file(path), config, options, models)
        results.append(result)
        log.info("%s: %d test rows, %d anomalous", result.name, len(result.labels), int(result.labels.sum()))
        if on_file is not None:
            on_file(result)
    setting: tuple[str, float] | None = None
    selection: dict[str, Any] = {}
    if options.selects and "vae" in models:
        chosen, candidates = select_vae_setting(results, config, options)
        setting = (chosen.row_score, chosen.margin)
        for r in results:
            r.scores["vae"], r.thresholds["vae"] = rescore_vae(r, setting, config, options)
        selection = {
            "rule": "highest F1 on the dev files among candidates within the FAR and MAR limits there, "
            "else the highest F1",
            "max_far_pct": options.select_max_far_pct,
            "max_mar_pct": options.select_max_mar_pct,
            "chosen": chosen.to_dict(),
            "candidates_on_dev": [c.to_dict() for c in candidates],
        }
        log.info("VAE setting chosen on the dev files: row_score %s, margin %g", *setting)
    row_score, margin = setting or (options.row_score, options.threshold_margin)
    save_vae_models(out / "models", results, config, options)
    if export_runs is not None:
        export_run_dirs(export_runs, results, paths, config, options, setting=(row_score, margin),
                        margin=export_margin)
    summary = summarise(results, models)
    subsets: dict[str, Any] = {}
    if options.dev_files:
        dev = [r for r in results if in_subset(r.name, options.dev_files)]
        held_out = [r for r in results if not in_subset(r.name, options.dev_files)]
        subsets = {
            name: {"files": [r.name for r in part], "models": summarise(part, models)}
            for name, part in (("dev", dev), ("held_out", held_out))
            if part
        }
    meta = {
        "benchmark": "skab",
        "protocol": f"per file: first {options.train_rows} rows train (scaler + model), windows of "
        f"{config.windows.length}, threshold from training {options.calibrate_on}, point-wise metrics "
        f"over the concatenated test parts",
        "files_used": len(results),
        "test_rows": int(sum(len(r.labels) for r in results)),
        "config": config.source_path,
        "options": asdict(options),
        "calibration": {
            "method": config.calibration.method,
            "target_far": config.calibration.target_far,
            "params": config.calibration.params,
        },
        "vae_setting": {
            "row_score": row_score,
            "threshold_margin": margin,
            "selection": selection,
        },
        "subsets": subsets,
        "anomaly_free": anomaly_free_far(Path(data_dir), config, options, models, setting),
        "seconds": round(time.monotonic() - started, 1),
    }
    write_outputs(
        out, results, summary, leaderboard=read_leaderboard(Path(data_dir)), meta=meta, models=models
    )
    return {**meta, "models": summary}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-trainer benchmark skab`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="the SKAB folder (holding data/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="benchmark config (TOML)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N files (smoke runs, tests)")
    parser.add_argument(
        "--files",
        nargs="+",
        default=None,
        metavar="FOLDER/STEM",
        help="only these files, e.g. valve1/0 other/3",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to run")
    parser.add_argument(
        "--export-runs",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each file's VAE as DIR/<folder>_<file>/, a run directory for `edge-trainer export "
        "--run` (causal `end` row rule, threshold from the file's training part)",
    )
    parser.add_argument(
        "--export-margin",
        type=float,
        default=None,
        metavar="M",
        help="threshold margin of the exported run directories (default: the VAE's margin in this run)",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `edge-trainer benchmark skab`; prints the JSON summary."""
    try:
        config = load_config(args.config)
        summary = run_benchmark(
            args.data_dir,
            args.out,
            config,
            models=tuple(args.models),
            limit=args.limit,
            files=args.files,
            export_runs=args.export_runs,
            export_margin=args.export_margin,
        )
    except (ConfigError, ValueError) as exc:
        log.error("benchmark skab: %s", exc)
        print(f"error: {exc}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0
