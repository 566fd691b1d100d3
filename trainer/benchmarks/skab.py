"""SKAB outlier-detection benchmark, exactly the published leaderboard protocol.

For each of the 34 labelled files separately: the first 400 rows are the training part (the scaler and the
model are fitted on them, nothing else), windows are 60 rows, the threshold comes from the training part's
window scores; every row of the test part (row 400 on) gets a 0/1 prediction. Predictions and labels of the
test parts of all files are concatenated and scored point-wise (F1, FAR %, MAR %:
`trainer.metrics.skab_metrics`).
The VAE, PCA T-squared + Q and Isolation Forest run on the same split; the baselines score single standardised
rows by default (``baseline_input = "rows"``, as SKAB's own T-squared+Q), or the VAE's flattened windows.

The VAE's inputs have the slow thermal channels (``detrend_channels``) centred on each window's mean, and row
scores come from window scores by the ``row_score`` rule (`trainer.benchmarks.skab_scoring`). The threshold is
calibrated on the training part's row scores made by the same rule (``calibrate_on = "rows"``) or on its
window scores (``"windows"``, the earlier behaviour). Scores in ``scores.csv`` are divided by the file's
threshold, so ``is_anomaly`` is ``score > 1`` and scores of different files are comparable.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.configtools import ConfigError, Section
from trainer.baselines import IsolationForestBaseline, PcaT2Q
from trainer.benchmarks.skab_scoring import (
    ROW_SCORES,
    channel_indices,
    lag1_variance_ratio,
    model_windows,
    read_leaderboard,
    row_scores,
    training_row_scores,
)
from trainer.calibration import ThresholdSpec, calibrate
from trainer.config import TrainerConfig, load_config
from trainer.data.series import Series
from trainer.data.skab import ANOMALY_FREE, data_root, labelled_files, read_skab_file
from trainer.data.windows import StandardScaler
from trainer.metrics import binary_metrics, skab_metrics

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "skab.toml"
MODELS = ("vae", "pca_t2q", "isolation_forest")
BASELINE_INPUTS = ("rows", "windows")
VALIDATIONS = ("tail", "interleaved")
CALIBRATE_ON = ("rows", "windows")


@dataclass(frozen=True)
class SkabOptions:
    """The `[data.skab]` table of the benchmark config."""

    train_rows: int = 400  # protocol: first 400 rows of each file
    row_score: str = "min"
    threshold_margin: float = 1.0  # threshold = margin x calibrated value (see _threshold)
    validation: str = "tail"  # early-stopping windows: the last `val_fraction` in time, or every n-th
    val_fraction: float = 0.1
    baseline_input: str = "rows"  # baselines score single rows (as SKAB's T2+Q) or flattened windows
    detrend_channels: tuple[str, ...] = ()  # VAE inputs: these channels centred on each window's mean
    calibrate_on: str = "rows"  # threshold from training row scores (same rule as test rows) or windows
    anomaly_free_rows: int = 0  # > 0: also measure the false-alarm rate on the anomaly-free run (see below)


def parse_options(raw: dict[str, Any]) -> SkabOptions:
    """Strictly parse `[data.skab]` (unknown keys are errors naming `data -> skab -> KEY`)."""
    section = Section(raw, "data -> skab")
    options = SkabOptions(
        section.integer("train_rows", 400, minimum=2),
        section.choice("row_score", ROW_SCORES, "min"),
        section.number("threshold_margin", 1.0, minimum=0, exclusive_minimum=True),
        section.choice("validation", VALIDATIONS, "tail"),
        section.number("val_fraction", 0.1, minimum=0, maximum=0.5, exclusive_minimum=True),
        section.choice("baseline_input", BASELINE_INPUTS, "rows"),
        section.str_list("detrend_channels", []),
        section.choice("calibrate_on", CALIBRATE_ON, "rows"),
        section.integer("anomaly_free_rows", 0, minimum=0),
    )
    section.finish()
    if 0 < options.anomaly_free_rows <= options.train_rows:
        raise ConfigError(
            "data -> skab -> anomaly_free_rows",
            f"must be 0 or more than train_rows ({options.train_rows})",
            options.anomaly_free_rows,
        )
    return options


@dataclass
class FileResult:
    """One file's test-part rows: labels, per-model row scores (divided by the threshold) and thresholds."""

    name: str
    timestamps: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    thresholds: dict[str, dict[str, Any]]
    vae_epochs: int = 0
    lag1_ratio: dict[str, float] = field(default_factory=dict)  # per channel, training rows (slow: near 0)


def validation_mask(n_windows: int, options: SkabOptions) -> np.ndarray:
    """Which training windows are held out for early stopping: the last `val_fraction` of them in time
    (``tail``, as Keras' ``validation_split`` in SKAB's notebooks; the VAE stops when it starts to fit the
    early rows only) or every ``round(1 / val_fraction)``-th window (``interleaved``)."""
    n_val = max(1, round(n_windows * options.val_fraction))
    if options.validation == "tail":
        return np.arange(n_windows) >= n_windows - n_val
    every = max(2, round(1 / options.val_fraction))
    return np.arange(n_windows) % every == every - 1


def _threshold(
    train_scores: np.ndarray, config: TrainerConfig, margin: float, residual: bool
) -> tuple[float, dict[str, Any]]:
    """The calibrated value times `margin` for `residual` scores (non-negative errors and statistics: SKAB's
    notebooks use 1.5 x the 99 % quantile of training residuals); for other scores (Isolation Forest's, in
    (0, 1] with 0.5 meaning no evidence) the margin stretches the distance above the training median."""
    spec: ThresholdSpec = calibrate(
        train_scores, config.calibration.method, config.calibration.target_far, **config.calibration.params
    )
    median = float(np.median(train_scores))
    value = margin * spec.value if residual else median + margin * (spec.value - median)
    return value, {**spec.to_dict(), "margin": margin, "train_median": median, "threshold": value}


def _vae_window_scores(
    train: np.ndarray, val: np.ndarray, every: np.ndarray, config: TrainerConfig
) -> tuple[np.ndarray, int, Any]:
    """Fit the VAE on `train` (early stopping on `val`); return the scores of `every` window (all already
    model inputs: standardised, slow channels centred), the number of epochs run and the model."""
    from trainer.scoring import build_scorer, score_windows
    from trainer.train import fit_vae

    model, history = fit_vae(train, val, config.model, config.training, progress=False)
    n_channels = every.shape[1]
    identity = StandardScaler(np.zeros(n_channels), np.ones(n_channels)).to_dict()
    scorer = build_scorer(model, identity, "reconstruction", None)
    return score_windows(scorer, every).score, len(history.val_loss), model


def _save_vae(
    path: Path,
    model: Any,
    series: Series,
    *,
    scaler: StandardScaler,
    config: TrainerConfig,
    threshold: dict[str, Any],
    detrend_channels: tuple[str, ...],
) -> None:
    from trainer.train import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "file": series.name,
        "channels": list(series.channels),
        "scaler": scaler.to_dict(),
        # model inputs: rows scaled by `scaler`, then these channels centred on each window's own mean
        "detrend_channels": list(detrend_channels),
        "window_length": config.windows.length,
        "scoring": "reconstruction",
        "threshold": threshold,
        "model_config": asdict(config.model),
        "train_config": asdict(config.training),
    }
    save_checkpoint(path, model, metadata)


def run_file(
    series: Series,
    config: TrainerConfig,
    options: SkabOptions,
    models: tuple[str, ...],
    model_dir: Path | None = None,
) -> FileResult:
    """Fit every model on the training part of one file and score its test part; with `model_dir` the VAE
    is saved there as a checkpoint (weights, scaler, threshold) named after the file."""
    length = config.windows.length
    if series.labels is None:
        raise ValueError(f"SKAB file {series.name}: no labels")
    if len(series) < options.train_rows + 1 or options.train_rows < length + 10:
        raise ValueError(
            f"SKAB file {series.name}: {len(series)} rows; need more than {options.train_rows} "
            f"training rows, which must hold at least {length + 10} rows for windows of {length}"
        )
    scaler = StandardScaler.fit(series.values[: options.train_rows])
    detrend = channel_indices(options.detrend_channels, series.channels, "data -> skab -> detrend_channels")
    windows = model_windows(series.values, scaler, length, detrend)
    n_train_windows = options.train_rows - length + 1
    test = slice(options.train_rows, None)
    scores: dict[str, np.ndarray] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    epochs = 0
    for name in models:
        if name == "vae":
            train_windows = windows[:n_train_windows]
            held_out = validation_mask(n_train_windows, options)
            window_scores, epochs, vae = _vae_window_scores(
                train_windows[~held_out], train_windows[held_out], windows, config
            )
            n_fit = n_train_windows
        else:
            baseline = (
                PcaT2Q(seed=config.training.seed)
                if name == "pca_t2q"
                else IsolationForestBaseline(seed=config.training.seed)
            )
            if options.baseline_input == "rows":
                inputs, n_fit = scaler.transform(series.values), options.train_rows
            else:
                inputs, n_fit = windows.reshape(len(windows), -1), n_train_windows
            window_scores = baseline.fit(inputs[:n_fit]).score(inputs)
        fit_scores = np.asarray(window_scores, dtype=np.float64)
        per_row = name != "vae" and options.baseline_input == "rows"  # one score per row already
        calibration_scores = fit_scores[:n_fit]
        if not per_row and options.calibrate_on == "rows":
            calibration_scores = training_row_scores(calibration_scores, length, options.row_score)
        value, spec = _threshold(
            calibration_scores, config, options.threshold_margin, residual=name != "isolation_forest"
        )
        if value <= 0:
            raise ValueError(f"SKAB file {series.name}: {name} threshold {value:g} is not positive")
        rows = fit_scores if per_row else row_scores(fit_scores, len(series), length, options.row_score)
        scores[name] = rows[test] / value
        thresholds[name] = spec
        if name == "vae" and model_dir is not None:
            _save_vae(
                model_dir / f"{series.name.replace('/', '_')}.pt",
                vae,
                series,
                scaler=scaler,
                config=config,
                threshold=spec,
                detrend_channels=options.detrend_channels,
            )
    timestamps = series.timestamps if series.timestamps is not None else np.arange(len(series), dtype=float)
    ratio = lag1_variance_ratio(series.values[: options.train_rows])
    return FileResult(
        series.name,
        timestamps[test],
        series.labels[test].astype(np.int8),
        scores,
        thresholds,
        epochs,
        {c: round(float(r), 4) for c, r in zip(series.channels, ratio, strict=True)},
    )


def anomaly_free_far(
    data_dir: Path, config: TrainerConfig, options: SkabOptions, models: tuple[str, ...]
) -> dict[str, Any]:
    """False-alarm rates on normal data that holds no test row: the anomaly-free run cut into consecutive
    pseudo-files of `anomaly_free_rows` rows, each run through `run_file` like a labelled file (its first
    `train_rows` rows train). Needs no labels, so settings can be judged on it honestly. Empty when
    `anomaly_free_rows` is 0 or the file is absent."""
    path = data_root(data_dir) / ANOMALY_FREE
    if options.anomaly_free_rows == 0 or not path.is_file():
        return {}
    free, n = read_skab_file(path, labelled=False), options.anomaly_free_rows
    stamps = free.timestamps if free.timestamps is not None else np.arange(len(free), dtype=float)
    results = [
        run_file(
            Series(
                f"anomaly-free/{k}",
                free.values[k * n : (k + 1) * n],
                list(free.channels),
                stamps[k * n : (k + 1) * n],
                np.zeros(n, np.int8),
            ),
            config,
            options,
            models,
        )
        for k in range(len(free) // n)
    ]
    rows = sum(len(r.labels) for r in results)
    summary: dict[str, Any] = {"pseudo_files": len(results), "test_rows": rows}
    for name in models:
        flagged = sum(int((r.scores[name] > 1.0).sum()) for r in results)
        summary[name] = {"far_pct": 100.0 * flagged / max(1, rows)}
    return summary


def summarise(results: list[FileResult], models: tuple[str, ...]) -> dict[str, Any]:
    """Point-wise metrics over the concatenated test parts, per model."""
    labels = np.concatenate([r.labels for r in results])
    summary: dict[str, Any] = {}
    for name in models:
        scores = np.concatenate([r.scores[name] for r in results])
        metrics = skab_metrics(labels, (scores > 1.0).astype(np.int8))
        ranking = binary_metrics(labels, scores, 1.0)
        summary[name] = {**metrics, "roc_auc": ranking["roc_auc"], "pr_auc": ranking["pr_auc"]}
    return summary


def write_outputs(
    out: Path,
    results: list[FileResult],
    summary: dict[str, Any],
    *,
    leaderboard: list[dict[str, Any]],
    meta: dict[str, Any],
    models: tuple[str, ...],
) -> None:
    """metrics.json, scores.csv (the first model: the VAE), scores_<baseline>.csv and leaderboard.md (the
    VAE checkpoints are already in `out/models/`)."""
    out.mkdir(parents=True, exist_ok=True)
    per_file = [
        {
            "file": r.name,
            "rows": len(r.labels),
            "anomalous_rows": int(r.labels.sum()),
            "vae_epochs": r.vae_epochs,
            "train_lag1_variance_ratio": r.lag1_ratio,
            "thresholds": r.thresholds,
            **{f"{m}_predicted_rows": int((r.scores[m] > 1.0).sum()) for m in models},
        }
        for r in results
    ]
    document = {**meta, "models": summary, "leaderboard": leaderboard, "files": per_file}
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for i, name in enumerate(models):
        target = out / ("scores.csv" if i == 0 else f"scores_{name}.csv")
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "datetime", "label", "score", "is_anomaly"])
            for r in results:
                for ts, label, score in zip(r.timestamps, r.labels, r.scores[name], strict=True):
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
                    writer.writerow([r.name, stamp, int(label), f"{score:.6g}", int(score > 1.0)])
    lines = ["| Algorithm | F1 | FAR, % | MAR, % |", "|---|---|---|---|"]
    lines += [
        f"| {name} (this run) | {m['f1']:.2f} | {m['far_pct']:.2f} | {m['mar_pct']:.2f} |"
        for name, m in summary.items()
    ]
    lines += [
        f"| {r['algorithm']} (leaderboard) | {r['f1']:g} | {r['far_pct']:g} | {r['mar_pct']:g} |"
        for r in leaderboard
    ]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_benchmark(
    data_dir: Path,
    out: Path,
    config: TrainerConfig,
    *,
    models: tuple[str, ...] = MODELS,
    limit: int | None = None,
    files: list[str] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
) -> dict[str, Any]:
    """The whole protocol; returns the JSON summary (also written to `out/metrics.json`)."""
    generic = config.data.generic.options if config.data.generic is not None else {}
    options = parse_options(generic)
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
        result = run_file(read_skab_file(path), config, options, models, out / "models")
        results.append(result)
        log.info("%s: %d test rows, %d anomalous", result.name, len(result.labels), int(result.labels.sum()))
        if on_file is not None:
            on_file(result)
    summary = summarise(results, models)
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
        "anomaly_free": anomaly_free_far(Path(data_dir), config, options, models),
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


def run(args: argparse.Namespace) -> int:
    """Entry point of `edge-trainer benchmark skab`; prints the JSON summary."""
    try:
        config = load_config(args.config)
        summary = run_benchmark(
            args.data_dir, args.out, config, models=tuple(args.models), limit=args.limit, files=args.files
        )
    except (ConfigError, ValueError) as exc:
        log.error("benchmark skab: %s", exc)
        print(f"error: {exc}")
        return 2
    print(json.dumps(summary, indent=2))
    return 0
