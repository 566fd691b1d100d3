"""Pure helpers of the SKAB benchmark: model inputs, row scores from window scores, thresholds, and
slow-channel checks.

Inputs (`model_windows`): the file's rows are standardised with the scaler fitted on the training part and cut
into stride-1 windows `[N, C, L]`; the channels named in ``detrend_channels`` then have each window's own mean
removed, so the model sees their shape within the window but not their level. SKAB's Temperature and
Thermocouple drift slowly through a whole experiment (minutes-long thermal time constants) and do not return
to their first-400-row level, and a scaler fitted on 400 rows has a tiny standard deviation for them, so their
level dominates the reconstruction error of normal rows long after training. The accelerometer RMS levels
wander on normal data too (anomaly-free run), so the benchmark centres them as well (docs/benchmarks-skab.md).

Row scores (`row_scores`): ``end`` gives a row the score of the window that ends at it (causal: what the
gateway agent sees when that row arrives); ``min`` the smallest score of all windows covering it (a row is
anomalous only when every window covering it is: the rule of SKAB's own Conv-AE / LSTM-AE notebooks; it looks
up to L-1 rows ahead); ``mean`` the mean score of the windows covering it (also looks ahead).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibration import ThresholdSpec, calibrate
from trainer.config import TrainerConfig
from trainer.data.windows import StandardScaler, sliding_windows

ROW_SCORES = ("end", "min", "mean")
LEADERBOARD_HEADING = "### Outlier detection problem"


def channel_indices(names: Sequence[str], channels: Sequence[str], key: str) -> list[int]:
    """Indices of `names` in `channels`; an unknown name is a `ValueError` naming `key` and the channels."""
    unknown = [name for name in names if name not in channels]
    if unknown:
        raise ValueError(f"{key}: unknown channel(s) {unknown}; the channels are {list(channels)}")
    return [list(channels).index(name) for name in names]


def model_windows(
    values: np.ndarray, scaler: StandardScaler, length: int, detrend: Sequence[int]
) -> np.ndarray:
    """Standardised stride-1 windows `[N, C, L]` of rows `[T, C]` (window i covers rows `i : i + L`), with
    the channels at indices `detrend` centred on each window's own mean."""
    scaled = scaler.transform(values)
    windows = np.swapaxes(sliding_windows(scaled, length, 1), 1, 2).astype(np.float32)  # a copy
    if len(detrend):
        index = list(detrend)
        windows[:, index, :] -= windows[:, index, :].mean(axis=2, keepdims=True)
    return np.ascontiguousarray(windows)


def row_scores(window_scores: np.ndarray, n_rows: int, length: int, how: str) -> np.ndarray:
    """Per-row scores from stride-1 window scores (see the module docstring); rows before the first
    complete window get NaN under ``end``."""
    if len(window_scores) != n_rows - length + 1:
        raise ValueError(f"{len(window_scores)} window scores for {n_rows} rows and length {length}")
    scores = np.asarray(window_scores, dtype=np.float64)
    if how == "end":
        return np.concatenate([np.full(length - 1, np.nan), scores])
    if how == "min":
        padded = np.concatenate([np.full(length - 1, np.inf), scores, np.full(length - 1, np.inf)])
        # row r is covered by windows r-L+1 .. r (clipped): a sliding minimum of width L over padded scores
        return np.lib.stride_tricks.sliding_window_view(padded, length).min(axis=1)
    if how == "mean":
        sums = np.concatenate([[0.0], np.cumsum(scores)])
        rows = np.arange(n_rows)
        first = np.clip(rows - length + 1, 0, len(scores))
        last = np.clip(rows + 1, 0, len(scores))  # windows first .. last-1 cover the row
        return (sums[last] - sums[first]) / (last - first)
    raise ValueError(f"unknown row score {how!r}; expected one of {ROW_SCORES}")


def training_row_scores(train_window_scores: np.ndarray, length: int, how: str) -> np.ndarray:
    """Row scores of the training part computed from its own windows only, with the same rule as the test
    rows, so the threshold is calibrated on the statistic it is applied to (NaN rows of ``end`` dropped)."""
    n_rows = len(train_window_scores) + length - 1
    rows = row_scores(train_window_scores, n_rows, length, how)
    return rows[np.isfinite(rows)]


def threshold_spec(
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


def rows_over_threshold(
    fit_scores: np.ndarray,
    n_rows: int,
    n_fit: int,
    *,
    per_row: bool,
    rule: str,
    margin: float,
    residual: bool,
    config: TrainerConfig,
    calibrate_on: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Every row's score divided by the threshold (rows by `rule` unless the scores are per row already),
    and the threshold spec: `margin` x the calibrated value of the first `n_fit` scores (training part), as
    rows by the same rule with ``calibrate_on = "rows"``."""
    calibration_scores = fit_scores[:n_fit]
    if not per_row and calibrate_on == "rows":
        calibration_scores = training_row_scores(calibration_scores, n_rows - len(fit_scores) + 1, rule)
    value, spec = threshold_spec(calibration_scores, config, margin, residual)
    if value <= 0:
        raise ValueError(f"threshold {value:g} is not positive")
    length = n_rows - len(fit_scores) + 1
    rows = fit_scores if per_row else row_scores(fit_scores, n_rows, length, rule)
    return rows / value, {**spec, **({} if per_row else {"row_score": rule})}


def lag1_variance_ratio(values: np.ndarray) -> np.ndarray:
    """Per channel `var(diff(x)) / (2 var(x))` of rows `[T, C]`: about 1 for white noise, near 0 for a
    channel that moves slowly compared with its spread (drift); a constant channel gives 1."""
    values = np.asarray(values, dtype=np.float64)
    spread = 2 * values.var(axis=0)
    steps = np.diff(values, axis=0).var(axis=0)
    return np.where(spread > 0, steps / np.where(spread > 0, spread, 1.0), 1.0)


def read_leaderboard(data_dir: Path) -> list[dict[str, Any]]:
    """The outlier-detection rows of SKAB's LEADERBOARD.md (empty when the file is absent)."""
    for candidate in (data_dir / "LEADERBOARD.md", data_dir.parent / "LEADERBOARD.md"):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            break
    else:
        return []
    rows: list[dict[str, Any]] = []
    lines = text.split(LEADERBOARD_HEADING, 1)[-1].splitlines()
    for line in lines:
        if line.startswith("###") and rows:
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("Algorithm", "---"):
            continue
        try:
            rows.append(
                {
                    "algorithm": cells[0],
                    "f1": float(cells[1]),
                    "far_pct": float(cells[2]),
                    "mar_pct": float(cells[3]),
                }
            )
        except ValueError:
            continue
    return rows
