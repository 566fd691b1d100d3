"""`fit_run`: config -> trained, calibrated RUN_DIR. The RUN_DIR layout is the contract with `export`.

RUN_DIR/
  checkpoint.pt     weights + metadata (`trainer.train.save_checkpoint`; load with `load_checkpoint`)
  config.toml       the effective training config (the file's settings plus command-line overrides, e.g. the
                    benchmark's --data-dir/--epochs/--max-units; `trainer.config.config_to_toml`)
  run.json          everything export needs besides weights:
                    channels (model channels), input_channels (graph input order: model channels, then
                    condition channels for regime scaling), condition_channels, window_length, stride,
                    sample_period_s, scaler (`StandardScaler`/`RegimeScaler.to_dict()`), detrend_channels
                    (model channels centred on each window's mean after scaling, in-graph; `fit` writes [],
                    the SKAB benchmark's run directories name theirs; absent in older runs = []), scoring
                    (score kind), latent_stats, score_baseline (null, or {"kind": "per_asset_initial",
                    "windows": N, "statistic": "median"}), threshold (`ThresholdSpec.to_dict()`, on adjusted
                    scores when a baseline is used; `params.margin`, when present, multiplies the method's
                    value, and export applies it again after recalibrating), score_quantiles,
                    calibration_scores (a sorted sample of the calibration windows' scores; older runs
                    call it validation_scores), metrics (validation), history, model_shape,
                    trainer_version, git_commit (HEAD, "-dirty" when tracked files differ)
  calibration.npz   `windows` float32 [N, C_in, L] raw normal windows training never saw (calibration units),
                    `series` [N] str, `end_row` [N]
  evaluation.npz    `windows` [N, C_in, L] raw labelled test windows, `labels` [N], `series`, `end_time`,
                    `rul`
  validation.npz    the same for the whole validation series (score choice; lead time on run-to-failure units;
                    export's int8 guard)
  train_sample.npz  up to TRAIN_SAMPLE_WINDOWS raw fit windows, evenly spread (export's int8 calibration data)
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import trainer
from edge_agent.configtools import ConfigError
from trainer.calibration import MIN_SCORES, CalibrationError, calibrate, score_quantiles, scores_needed
from trainer.config import TrainerConfig, config_to_toml
from trainer.data.series import informative_channels
from trainer.data.windows import (
    RegimeScaler,
    StandardScaler,
    WindowSet,
    fit_scaler,
    make_windows,
    warn_extreme_values,
    warn_missed_labels,
)
from trainer.datasets import Splits, load_splits
from trainer.metrics import binary_metrics
from trainer.scoring import build_scorer, latent_statistics, per_asset_baseline, score_windows
from trainer.torch_model import SCORES, VAE
from trainer.train import fit_vae, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Raw windows of every split plus the fitted scaler and channel lists."""

    splits: Splits
    channels: list[str]
    input_channels: list[str]
    scaler: StandardScaler | RegimeScaler
    fit: WindowSet
    val: WindowSet
    calibration: WindowSet
    val_labelled: WindowSet
    test: WindowSet


def scale_windows(scaler: StandardScaler | RegimeScaler, windows: np.ndarray, n_model: int) -> np.ndarray:
    """Standardise raw windows `[N, C_in, L]` -> `[N, C, L]` (numpy twin of the graph's scaling)."""
    n, _, length = windows.shape
    values = np.swapaxes(windows[:, :n_model], 1, 2).reshape(-1, n_model)
    if isinstance(scaler, RegimeScaler):
        conditions = np.swapaxes(windows[:, n_model:], 1, 2).reshape(n * length, -1)
        scaled = scaler.transform(values, conditions)
    else:
        scaled = scaler.transform(values)
    return np.ascontiguousarray(np.swapaxes(scaled.reshape(n, length, n_model), 1, 2))


def prepare(config: TrainerConfig) -> PreparedData:
    """Load splits, choose informative channels (per regime), fit the scaler, and window every split."""
    splits = load_splits(config.data, config.windows.sample_period_s)
    regimes = splits.n_regimes
    all_channels = list(splits.fit[0].channels)
    full = fit_scaler(splits.fit, all_channels, regimes, config.training.seed)
    labels = (
        [full.assign(np.asarray(s.conditions)) for s in splits.fit]
        if isinstance(full, RegimeScaler)
        else None
    )
    channels = informative_channels(splits.fit, labels)
    warn_extreme_values(splits.fit, channels, splits.origin.row)
    keep = [all_channels.index(c) for c in channels]
    if isinstance(full, RegimeScaler):
        scaler: StandardScaler | RegimeScaler = RegimeScaler(
            full.centroids, full.condition_scale, full.mean[:, keep], full.std[:, keep]
        )
    else:
        scaler = StandardScaler(full.mean[keep], full.std[keep])
    use_conditions = isinstance(scaler, RegimeScaler)

    def window(group: list[Any], stride: int) -> WindowSet:
        selected = [s.select(channels) for s in group]
        return make_windows(selected, config.windows.length, stride, condition_channels=use_conditions)

    w = config.windows
    fit = window(splits.fit, w.train_stride)
    input_channels = fit.channels
    prepared = PreparedData(
        splits,
        channels,
        input_channels,
        scaler,
        fit,
        window(splits.val, w.stride),
        window(splits.calibration, w.stride),
        window(splits.val_labelled, w.stride),
        window(splits.test, w.stride),
    )
    parts = {"fit": splits.fit, "val": splits.val, "calibration": splits.calibration, "test": splits.test}
    for name, part in parts.items():
        if len(getattr(prepared, name)) == 0:
            longest = max((len(s) for s in part), default=0)
            raise ValueError(
                f"no {name} windows of length {w.length}: the {name} part ({len(part)} series: "
                f"{', '.join(s.name for s in part[:5])}{', ...' if len(part) > 5 else ''}) has at most "
                f"{longest} rows in one piece; give more or longer normal data, or change data -> split, "
                "val_fraction, calibration_fraction or windows -> length"
            )
    check_calibration_windows(prepared, config)
    warn_missed_labels(prepared.test, "test windows", splits.origin.file)
    warn_missed_labels(prepared.val_labelled, "validation windows", splits.origin.file)
    if splits.test is splits.calibration:  # no labelled data (`trainer.datasets`)
        labelled = "no labelled data: the test set is the calibration windows"
    else:
        labelled = f"val (labelled) {len(prepared.val_labelled)}, test {len(prepared.test)}"
    log.info("windows: fit %d, val %d, calibration %d, %s; channels: %s", len(fit), len(prepared.val),
             len(prepared.calibration), labelled, ", ".join(channels))
    return prepared


def check_calibration_windows(prepared: PreparedData, config: TrainerConfig) -> None:
    """Calibration needs at least `trainer.calibration.MIN_SCORES` scores, one per calibration window; the
    windows are counted before training, so too few is a `ConfigError` then, not after the epochs."""
    count = len(prepared.calibration)
    if count >= MIN_SCORES:
        return
    raise ConfigError(
        "windows -> stride",
        f"need at least {MIN_SCORES} scores to calibrate, got {count}: "
        f"{_calibration_windows(prepared, config)}; use a smaller windows -> stride, a larger data -> "
        "calibration_fraction, or more normal data (found before training)",
        config.windows.stride,
    )


def check_calibration_method(prepared: PreparedData, config: TrainerConfig) -> None:
    """The configured calibration method may need more scores than `MIN_SCORES` (`scores_needed`: 452 for
    the default 'pot', whose tail fit needs 10 scores above the 98 % quantile, 100 for 'percentile' at a
    1 % target): a `ConfigError` before training, not a calibration error after the epochs."""
    count, c = len(prepared.calibration), config.calibration
    try:
        needed = scores_needed(c.method, c.target_far, c.params)
    except CalibrationError as exc:
        raise ConfigError("calibration -> target_far", f"{exc} (found before training)",
                          c.target_far) from None
    if count >= needed:
        return
    other = ""
    if c.method not in ("mad", "sigma"):
        other = f"; or method = \"mad\" or \"sigma\", which need {MIN_SCORES}"
    raise ConfigError(
        "calibration -> method",
        f"method {c.method!r} needs at least {needed} calibration scores with these settings, got {count}: "
        f"{_calibration_windows(prepared, config)}; use a smaller windows -> stride, a larger data -> "
        f"calibration_fraction, or more normal data{other} (found before training)",
        c.method,
    )


def _calibration_windows(prepared: PreparedData, config: TrainerConfig) -> str:
    part = prepared.splits.calibration
    return (f"{len(prepared.calibration)} calibration window(s) of {config.windows.length} samples, one "
            f"every {config.windows.stride} rows, from {len(part)} series ({sum(len(s) for s in part)} rows)")


def adjusted_scores(score: np.ndarray, series: np.ndarray, baseline: dict[str, Any] | None) -> np.ndarray:
    """Scores after the run's `score_baseline` (identity when there is none)."""
    if not baseline:
        return score.astype(np.float64)
    return per_asset_baseline(score, series, int(baseline["windows"]))


TRAIN_SAMPLE_WINDOWS = 1024  # fit windows kept in RUN_DIR/train_sample.npz (int8 calibration at export)
BASELINE_MARGIN = 0.005  # a per-asset baseline must beat the plain score by this much validation ROC-AUC


def choose_score(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """Best validation ROC-AUC; a per-asset baseline (more state in the agent) only when it wins by a
    margin."""
    ranked = [c for c in candidates if c["val_roc_auc"] is not None]
    if not ranked:
        return candidates[0]
    best = max(ranked, key=lambda c: c["val_roc_auc"])
    if best["score_baseline"] is not None:
        plain = [c for c in ranked if c["score_baseline"] is None]
        best_plain = max(plain, key=lambda c: c["val_roc_auc"]) if plain else None
        if best_plain is not None and best["val_roc_auc"] - best_plain["val_roc_auc"] < BASELINE_MARGIN:
            return best_plain
    return best


def auc_or_none(labels: np.ndarray | None, score: np.ndarray) -> float | None:
    if labels is None or not 0 < labels.sum() < len(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, score))


def fit_run(
    config: TrainerConfig, out_dir: str | Path, progress: bool = True, prepared: PreparedData | None = None
) -> dict[str, Any]:
    """Train, choose the score on validation, calibrate, and write RUN_DIR; returns run.json's content."""
    out = Path(out_dir)
    try:  # data and config problems surface before any training, and before RUN_DIR is made
        data = prepared or prepare(config)
        units = _channel_units(config.data.units, data.input_channels, data.splits.fit[0].channels)
        check_calibration_method(data, config)
    except ConfigError as exc:
        if config.source_path and not exc.source:
            raise exc.with_source(config.source_path) from exc
        raise
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _fit_into(out, config, data, units, progress)
    except BaseException:
        if created:  # a failed fit (a calibration error after training, Ctrl-C) leaves no half run behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _fit_into(
    out: Path, config: TrainerConfig, data: PreparedData, units: Any, progress: bool
) -> dict[str, Any]:
    n_model = len(data.channels)
    vae, history = fit_vae(
        scale_windows(data.scaler, data.fit.data, n_model),
        scale_windows(data.scaler, data.val.data, n_model),
        config.model,
        config.training,
        progress,
    )
    scaler_dict = data.scaler.to_dict()
    plain = build_scorer(vae, scaler_dict, "reconstruction", None)
    latent_stats = latent_statistics(score_windows(plain, data.fit.data).latent_mean)
    # Root-cause references from healthy validation windows (channel_error only; scores do not use them).
    plain.fit_root_cause_reference(data.val.data)

    # Choose score kind and baseline on the labelled validation series (never the test set).
    kinds = SCORES if config.evaluation.score == "auto" else (config.evaluation.score,)
    baseline_config: dict[str, Any] = {
        "kind": "per_asset_initial",
        "windows": config.evaluation.baseline_windows,
        "statistic": "median",
    }
    options: dict[str, list[dict[str, Any] | None]] = {
        "none": [None],
        "per_asset_initial": [baseline_config],
        "auto": [None, baseline_config],
    }
    baselines = options[config.evaluation.score_baseline]
    candidates: list[dict[str, Any]] = []
    for kind in kinds:
        raw = score_windows(build_scorer(vae, scaler_dict, kind, latent_stats), data.val_labelled.data).score
        for baseline in baselines:
            adjusted = adjusted_scores(raw, data.val_labelled.series, baseline)
            candidates.append(
                {
                    "scoring": kind,
                    "score_baseline": baseline,
                    "val_roc_auc": auc_or_none(data.val_labelled.labels, adjusted),
                }
            )
    chosen = choose_score(candidates)
    if all(c["val_roc_auc"] is None for c in candidates):
        log.info(
            "score choice: the validation windows lack labels of both classes, so no ROC-AUC to choose by; "
            "using %s%s",
            chosen["scoring"],
            " with the per-asset baseline" if chosen["score_baseline"] else "",
        )
    else:
        log.info(
            "score choice on validation (ROC-AUC): %s",
            ", ".join(
                f"{c['scoring']}{'+baseline' if c['score_baseline'] else ''}="
                + ("n/a" if c["val_roc_auc"] is None else f"{c['val_roc_auc']:.4f}")
                for c in candidates
            ),
        )
    scorer = build_scorer(vae, scaler_dict, chosen["scoring"], latent_stats)

    cal_raw = score_windows(scorer, data.calibration.data).score
    cal_scores = adjusted_scores(cal_raw, data.calibration.series, chosen["score_baseline"])
    try:
        threshold = calibrate(
            cal_scores, config.calibration.method, config.calibration.target_far, **config.calibration.params
        )
    except ValueError as exc:  # after training: name the config section and how many windows it had
        raise ConfigError("calibration", f"{exc} ({len(cal_scores)} calibration windows from "
                          f"{len(set(data.calibration.series))} series)",
                          source=config.source_path) from exc
    val_scores = adjusted_scores(
        score_windows(scorer, data.val_labelled.data).score,
        data.val_labelled.series,
        chosen["score_baseline"],
    )
    metrics: dict[str, Any] = {"score_candidates": candidates}
    if data.val_labelled.labels is not None:
        metrics["validation"] = binary_metrics(data.val_labelled.labels, val_scores, threshold.value)
    run = {
        **run_header(config),
        "data_source": config.data.source,
        "channels": data.channels,
        "input_channels": data.input_channels,
        "units": units,
        "condition_channels": data.input_channels[n_model:],
        "window_length": config.windows.length,
        "stride": config.windows.stride,
        "sample_period_s": config.windows.sample_period_s,
        "scaler": scaler_dict,
        "detrend_channels": [],  # fit centres nothing; the SKAB benchmark's run directories do
        "scoring": chosen["scoring"],
        "latent_stats": latent_stats,
        "channel_error_reference": vae.channel_error_scale.tolist(),
        "score_baseline": chosen["score_baseline"],
        "threshold": threshold.to_dict(),
        "score_quantiles": score_quantiles(cal_scores),
        "calibration_scores": calibration_sample(cal_scores, config.training.seed),
        "metrics": metrics,
        "history": history.to_dict(),
        "model_shape": vae.shape.to_dict(),
        "healthy_min_rul": data.splits.healthy_min_rul,
        "splits": {
            name: sorted({s.name for s in getattr(data.splits, name)})
            for name in ("fit", "val", "calibration", "val_labelled", "test")
        },
    }
    write_run_files(out, vae, run, config, windows={
        "calibration": data.calibration, "train_sample": train_sample(data.fit), "evaluation": data.test,
        "validation": data.val_labelled})
    log.info(
        "run written to %s (score %s, baseline %s, threshold %.4g)",
        out,
        chosen["scoring"],
        chosen["score_baseline"],
        threshold.value,
    )
    return run


# run.json keys kept with the weights in checkpoint.pt
CHECKPOINT_KEYS = ("channels", "input_channels", "scaler", "detrend_channels", "scoring", "latent_stats",
                   "score_baseline", "threshold", "window_length", "stride")


def run_header(config: TrainerConfig) -> dict[str, Any]:
    """The run.json fields that say what made the run: trainer version, git commit, config file."""
    return {"trainer_version": trainer.__version__, "git_commit": git_commit(),
            "config_source": config.source_path}


def calibration_sample(scores: np.ndarray, seed: int, limit: int = 2000) -> list[float]:
    """Up to `limit` calibration scores drawn without replacement, sorted (run.json `calibration_scores`)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(scores, size=min(limit, len(scores)), replace=False).tolist())


def write_run_files(
    out: Path,
    vae: VAE,
    run: dict[str, Any],
    config: TrainerConfig,
    *,
    windows: Mapping[str, WindowSet],
    extra_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write RUN_DIR's files (module docstring): the checkpoint (weights, `CHECKPOINT_KEYS` of `run` and
    `extra_metadata`), run.json, config.toml and each of `windows` as NAME.npz."""
    out.mkdir(parents=True, exist_ok=True)
    metadata = {**{k: run[k] for k in CHECKPOINT_KEYS}, **(extra_metadata or {})}
    save_checkpoint(out / "checkpoint.pt", vae, metadata)
    (out / "run.json").write_text(json.dumps(run, indent=1), encoding="utf-8")
    (out / "config.toml").write_text(config_to_toml(config), encoding="utf-8")
    for name, subset in windows.items():
        save_windows(out / f"{name}.npz", subset)


def save_windows(path: Path, windows: WindowSet) -> None:
    """Raw windows and their bookkeeping as an .npz (strings as unicode arrays, no pickles)."""
    arrays: dict[str, np.ndarray] = {
        "windows": windows.data.astype(np.float32),
        "series": windows.series.astype(str),
        "end_row": windows.end_row,
        "end_time": windows.end_time,
    }
    if windows.labels is not None:
        arrays["labels"] = windows.labels
    if windows.rul is not None:
        arrays["rul"] = windows.rul
    if windows.labelled_rows:
        arrays["labelled_rows_series"] = np.asarray(list(windows.labelled_rows), dtype=str)
        arrays["labelled_rows"] = np.asarray(list(windows.labelled_rows.values()), dtype=np.int64)
    if windows.stride is not None:
        arrays["stride"] = np.asarray(windows.stride, dtype=np.int64)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def load_windows(path: Path, channels: list[str]) -> WindowSet:
    """Read `save_windows` output (no pickles); a damaged file is a ValueError naming it. Labelled series
    whose windows hold no label 1 are warned about (`warn_missed_labels`), as `fit` did."""
    try:
        windows = _read_windows(path, channels)
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the windows ({type(exc).__name__}: {exc}); the run directory "
                         "is damaged") from exc
    warn_missed_labels(windows, str(path))
    return windows


def _read_windows(path: Path, channels: list[str]) -> WindowSet:
    with np.load(path, allow_pickle=False) as blob:
        labelled = blob.get("labelled_rows_series")  # absent in runs of older trainers
        stride = blob.get("stride")
        return WindowSet(
            blob["windows"],
            list(channels),
            blob["series"].astype(object),
            blob["end_row"],
            blob["end_time"],
            blob.get("labels"),
            blob.get("rul"),
            {} if labelled is None else dict(zip(labelled.tolist(), blob["labelled_rows"].tolist(),
                                                  strict=True)),
            None if stride is None else int(stride),
        )


def train_sample(fit: WindowSet, limit: int = TRAIN_SAMPLE_WINDOWS) -> WindowSet:
    """Up to `limit` fit windows evenly spread over the set (deterministic): int8 calibration data."""
    if len(fit) <= limit:
        return fit
    return fit.subset(np.unique(np.linspace(0, len(fit) - 1, limit).round().astype(int)))


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD of the training code's checkout, with "-dirty" appended when tracked files differ from it (as
    `git describe --always --dirty` marks it); None outside a git checkout."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, cwd=where, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "HEAD")
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else ""
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is None or status.returncode != 0:
        return commit
    return f"{commit}-dirty" if status.stdout.strip() else commit


def _channel_units(units: dict[str, str], channels: list[str], read: list[str]) -> list[str | None]:
    """`[data.units]` in input-channel order (None where unknown). A unit for a channel the data has but the
    model does not use (constant in the training data) is dropped with a warning; one for a channel the data
    does not have is a config error (a typo)."""
    unused = sorted(set(units) - set(channels))
    for name in unused:
        if name not in read:
            raise ConfigError(f"data -> units -> {name}",
                              f"no such channel in the data (channels: {', '.join(read)})")
        log.warning("data -> units -> %s: channel %s is not a model input (constant in the training data); "
                    "its unit is left out", name, name)
    return [units.get(channel) for channel in channels]
