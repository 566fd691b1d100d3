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
``end`` row rule and that rule's threshold from the training part (`export_run_dirs`,
`trainer.benchmarks.skab_export`); nothing else in the outputs changes.
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
    rows_over_threshold,
)
from trainer.benchmarks.skab_select import Candidate, choose, in_subset
from trainer.config import TrainerConfig, load_config
from trainer.data.series import Series
from trainer.data.skab import ANOMALY_FREE, CHANNELS, data_root, labelled_files, read_skab_file
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
    threshold_margin: float = 1.0  # threshold = margin x calibrated value (see skab_scoring.threshold_spec)
    validation: str = "tail"  # early-stopping windows: the last `val_fraction` in time, or every n-th
    val_fraction: float = 0.1
    baseline_input: str = "rows"  # baselines score single rows (as SKAB's T2+Q) or flattened windows
    detrend_channels: tuple[str, ...] = ()  # VAE inputs: these channels centred on each window's mean
    calibrate_on: str = "rows"  # threshold from training row scores (same rule as test rows) or windows
    anomaly_free_rows: int = 0  # > 0: also measure the false-alarm rate on the anomaly-free run (see below)
    # Development split (`trainer.benchmarks.skab_select`): files (``valve1/3``) or folders (``valve1``) whose
    # test labels may be used to choose the VAE's row rule and margin; metrics are also reported separately
    # for them and for the held-out files.
    dev_files: tuple[str, ...] = ()
    select_row_scores: tuple[str, ...] = ()  # candidates; empty: no selection, `row_score` as given
    select_margins: tuple[float, ...] = ()  # candidates; empty: no selection, `threshold_margin` as given
    select_max_far_pct: float = 15.0  # limits a candidate must meet on the development files
    select_max_mar_pct: float = 25.0

    @property
    def selects(self) -> bool:
        return bool(self.select_row_scores) and bool(self.select_margins)


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
        section.str_list("dev_files", []),
        section.str_list("select_row_scores", []),
        _positive_numbers(section, "select_margins"),
        section.number("select_max_far_pct", 15.0, minimum=0, maximum=100),
        section.number("select_max_mar_pct", 25.0, minimum=0, maximum=100),
    )
    section.finish()
    for i, rule in enumerate(options.select_row_scores):
        if rule not in ROW_SCORES:
            raise ConfigError(
                f"data -> skab -> select_row_scores -> {i}", f"must be one of {', '.join(ROW_SCORES)}", rule
            )
    if bool(options.select_row_scores) != bool(options.select_margins):
        raise ConfigError(
            "data -> skab -> select_margins",
            "select_row_scores and select_margins are given together (both empty: no selection)",
            list(options.select_margins),
        )
    if options.selects and not options.dev_files:
        raise ConfigError(
            "data -> skab -> dev_files", "selection needs the development files it chooses on", []
        )
    if 0 < options.anomaly_free_rows <= options.train_rows:
        raise ConfigError(
            "data -> skab -> anomaly_free_rows",
            f"must be 0 or more than train_rows ({options.train_rows})",
            options.anomaly_free_rows,
        )
    return options


def _positive_numbers(section: Section, key: str) -> tuple[float, ...]:
    values = section.get(key, list, [])
    out: list[float] = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{section.key_path(key)} -> {i}", "must be a positive number", value)
        out.append(float(value))
    return tuple(out)


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
    vae_window_scores: np.ndarray | None = None  # every window's VAE score, to rescore with another setting
    vae_model: Any = None
    scaler: StandardScaler | None = None
    vae_history: dict[str, Any] = field(default_factory=dict)  # the VAE's loss history (`History.to_dict`)


def validation_mask(n_windows: int, options: SkabOptions) -> np.ndarray:
    """Which training windows are held out for early stopping: the last `val_fraction` of them in time
    (``tail``, as Keras' ``validation_split`` in SKAB's notebooks; the VAE stops when it starts to fit the
    early rows only) or every ``round(1 / val_fraction)``-th window (``interleaved``)."""
    n_val = max(1, round(n_windows * options.val_fraction))
    if options.validation == "tail":
        return np.arange(n_windows) >= n_windows - n_val
    every = max(2, round(1 / options.val_fraction))
    return np.arange(n_windows) % every == every - 1


def _vae_window_scores(
    train: np.ndarray, val: np.ndarray, every: np.ndarray, config: TrainerConfig
) -> tuple[np.ndarray, dict[str, Any], Any]:
    """Fit the VAE on `train` (early stopping on `val`); return the scores of `every` window (all already
    model inputs: standardised, slow channels centred), the loss history and the model."""
    from trainer.scoring import build_scorer, score_windows
    from trainer.train import fit_vae

    model, history = fit_vae(train, val, config.model, config.training, progress=False)
    n_channels = every.shape[1]
    identity = StandardScaler(np.zeros(n_channels), np.ones(n_channels)).to_dict()
    scorer = build_scorer(model, identity, "reconstruction", None)
    return score_windows(scorer, every).score, history.to_dict(), model


def _save_vae(
    path: Path,
    model: Any,
    name: str,
    scaler: StandardScaler,
    *,
    config: TrainerConfig,
    threshold: dict[str, Any],
    detrend_channels: tuple[str, ...],
) -> None:
    from trainer.train import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "file": name,
        "channels": list(CHANNELS),
        "scaler": scaler.to_dict(),
        # model inputs: rows scaled by `scaler`, then these channels centred on each window's own mean
        "detrend_channels": list(detrend_channels),
        "window_length": config.windows.length,
        "scoring": "reconstruction",
        "threshold": threshold,  # includes the row rule the threshold applies to
        "model_config": asdict(config.model),
        "train_config": asdict(config.training),
    }
    save_checkpoint(path, model, metadata)


def run_file(
    series: Series,
    config: TrainerConfig,
    options: SkabOptions,
    models: tuple[str, ...],
    vae_setting: tuple[str, float] | None = None,
) -> FileResult:
    """Fit every model on the training part of one file and score its test part. The VAE uses
    `vae_setting` (row rule, margin) when given, else the options' `row_score` and `threshold_margin`; its
    window scores and model are kept in the result (`rescore_vae`, `save_vae_models`)."""
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
    epochs, vae, vae_scores = 0, None, None
    history: dict[str, Any] = {}
    for name in models:
        rule, margin = options.row_score, options.threshold_margin
        if name == "vae":
            train_windows = windows[:n_train_windows]
            held_out = validation_mask(n_train_windows, options)
            window_scores, history, vae = _vae_window_scores(
                train_windows[~held_out], train_windows[held_out], windows, config
            )
            epochs = len(history["val_loss"])
            n_fit = n_train_windows
            rule, margin = vae_setting or (rule, margin)
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
        if name == "vae":
            vae_scores = fit_scores
        try:
            rows, thresholds[name] = rows_over_threshold(
                fit_scores,
                len(series),
                n_fit,
                per_row=name != "vae" and options.baseline_input == "rows",  # one score per row already
                rule=rule,
                margin=margin,
                residual=name != "isolation_forest",
                config=config,
                calibrate_on=options.calibrate_on,
            )
        except ValueError as exc:
            raise ValueError(f"SKAB file {series.name}: {name} {exc}") from exc
        scores[name] = rows[test]
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
        vae_scores,
        vae,
        scaler,
        history,
    )


def rescore_vae(
    result: FileResult, setting: tuple[str, float], config: TrainerConfig, options: SkabOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """The VAE's test-row scores (divided by the threshold) and threshold spec of one file under another
    (row rule, margin) setting, from the window scores kept in `result`: no retraining."""
    if result.vae_window_scores is None:
        raise ValueError(f"SKAB file {result.name}: no VAE window scores to rescore")
    n_rows = options.train_rows + len(result.labels)
    rows, spec = rows_over_threshold(
        result.vae_window_scores,
        n_rows,
        options.train_rows - config.windows.length + 1,
        per_row=False,
        rule=setting[0],
        margin=setting[1],
        residual=True,
        config=config,
        calibrate_on=options.calibrate_on,
    )
    return rows[options.train_rows :], spec


def select_vae_setting(
    results: list[FileResult], config: TrainerConfig, options: SkabOptions
) -> tuple[Candidate, list[Candidate]]:
    """Choose the VAE's (row rule, margin) on the development files' test parts
    (`trainer.benchmarks.skab_select.choose`); returns the choice and every candidate's dev metrics."""
    dev = [r for r in results if in_subset(r.name, options.dev_files)]
    if not dev:
        raise ValueError(f"dev_files {list(options.dev_files)}: none of the selected files is one")
    labels = np.concatenate([r.labels for r in dev])
    candidates: list[Candidate] = []
    for rule in options.select_row_scores:
        for margin in options.select_margins:
            scores = np.concatenate([rescore_vae(r, (rule, margin), config, options)[0] for r in dev])
            m = skab_metrics(labels, (scores > 1.0).astype(np.int8))
            candidates.append(Candidate(rule, margin, m["f1"], m["far_pct"], m["mar_pct"]))
    return choose(candidates, options.select_max_far_pct, options.select_max_mar_pct), candidates


def save_vae_models(
    model_dir: Path, results: list[FileResult], config: TrainerConfig, options: SkabOptions
) -> None:
    """Each file's VAE as a checkpoint named after the file (weights, scaler, threshold spec)."""
    for r in results:
        if r.vae_model is None or r.scaler is None:
            continue
        _save_vae(
            model_dir / f"{r.name.replace('/', '_')}.pt",
            r.vae_model,
            r.name,
            r.scaler,
            config=config,
            threshold=r.thresholds["vae"],
            detrend_channels=options.detrend_channels,
        )


def export_run_dirs(
    out: Path,
    results: list[FileResult],
    paths: list[Path],
    config: TrainerConfig,
    options: SkabOptions,
    *,
    setting: tuple[str, float],
    margin: float | None = None,
) -> list[Path]:
    """A RUN_DIR per file under `out` (`out/<folder>_<file>/`) for `edge-trainer export --run`
    (`trainer.benchmarks.skab_export`): the file's VAE with the causal ``end`` row rule and its threshold from
    the training part by that rule (`rescore_vae`), with `margin` (default: the VAE setting's margin).
    `paths` are the files of `results`, in the same order."""
    from trainer.benchmarks.skab_export import EXPORT_ROW_SCORE, write_run_dir

    written: list[Path] = []
    n_train_windows = options.train_rows - config.windows.length + 1
    export_setting = (EXPORT_ROW_SCORE, setting[1] if margin is None else margin)
    for result, path in zip(results, paths, strict=True):
        if result.vae_model is None or result.scaler is None:
            continue
        rows, spec = rescore_vae(result, export_setting, config, options)
        run_dir = out / result.name.replace("/", "_")
        write_run_dir(
            run_dir,
            read_skab_file(path),
            result.vae_model,
            result.scaler,
            config=config,
            detrend_channels=options.detrend_channels,
            train_rows=options.train_rows,
            early_stopping=validation_mask(n_train_windows, options),
            threshold=spec,
            test_rows=rows,
            history=result.vae_history,
            benchmark_setting=setting,
        )
        log.info("%s: run directory %s (row rule end, threshold %.6g)", result.name, run_dir,
                 spec["threshold"])
        written.append(run_dir)
    return written


def anomaly_free_far(
    data_dir: Path,
    config: TrainerConfig,
    options: SkabOptions,
    models: tuple[str, ...],
    vae_setting: tuple[str, float] | None = None,
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
            vae_setting,
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
    export_runs: Path | None = None,
    export_margin: float | None = None,
) -> dict[str, Any]:
    """The whole protocol; returns the JSON summary (also written to `out/metrics.json`). With
    `export_runs`, each file's VAE is also written there as a RUN_DIR for `edge-trainer export`
    (`export_run_dirs`); the metrics and scores do not depend on it."""
    generic = config.data.generic.options if config.data.generic is not None else {}
    options = parse_options(generic)
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
