"""One SKAB file through the benchmark protocol: every model fitted on the file's training part and its
test rows scored (`run_file`, giving a `FileResult`; the VAE's early-stopping windows by `validation_mask`),
and the VAE's test rows rescored under another (row rule, margin) setting from the window scores kept in the
result, without retraining (`rescore_vae`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.baselines import IsolationForestBaseline, PcaT2Q
from trainer.benchmarks.skab_options import SkabOptions
from trainer.benchmarks.skab_scoring import (
    channel_indices,
    lag1_variance_ratio,
    model_windows,
    rows_over_threshold,
)
from trainer.config import TrainerConfig
from trainer.data.series import Series
from trainer.data.windows import StandardScaler


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


def run_file(
    series: Series,
    config: TrainerConfig,
    options: SkabOptions,
    models: tuple[str, ...],
    vae_setting: tuple[str, float] | None = None,
) -> FileResult:
    """Fit every model on the training part of one file and score its test part. The VAE uses
    `vae_setting` (row rule, margin) when given, else the options' `row_score` and `threshold_margin`; its
    window scores and model are kept in the result (`rescore_vae`, `skab_outputs.save_vae_models`)."""
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
