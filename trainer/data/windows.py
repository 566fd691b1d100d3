"""Sliding windows with their bookkeeping, and scalers fitted on training data only.

Windows are float32 `[N, C, L]` (channels first, as the exported graph takes them) in physical units: scaling
happens inside the model (`trainer.torch_model.ExportableScorer`) so the agent feeds raw values. The scalers
here are fitted in numpy and serialised to plain dicts that go into checkpoints, `run.json` and the graph.

Splits are made by series (unit / file) before windowing, never by random window: overlapping windows of
one series on both sides of a split would leak.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from trainer.data.series import Series

log = logging.getLogger(__name__)

T = TypeVar("T")

STD_FLOOR = 1e-6


def quantization_std(values: np.ndarray) -> np.ndarray:
    """Per channel of rows `[T, C]`, the standard deviation of rounding to the channel's resolution (the
    smallest step between two of its distinct values): step / sqrt(12), or `STD_FLOOR` for a channel with
    one value. No healthy reading can be more precise than that, so it is the least spread a scaler may
    assume: a channel that never moved within one operating regime, though it does in others, would
    otherwise be scaled by `STD_FLOOR`, and a one-step tick of it would score ten thousand sigmas."""
    floors = np.full(values.shape[1], STD_FLOOR)
    for channel in range(values.shape[1]):
        steps = np.diff(np.unique(values[:, channel]))
        steps = steps[steps > 0]
        if len(steps):
            floors[channel] = max(STD_FLOOR, float(steps.min()) / math.sqrt(12.0))
    return floors


def sliding_windows(values: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Windows `[N, L, C]` of `values` `[T, C]` (a view where possible): window i covers rows
    `i*stride : i*stride + length`. A series shorter than `length` yields zero windows."""
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got length={length}, stride={stride}")
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected values [T, C], got shape {values.shape}")
    if len(values) < length:
        return np.empty((0, length, values.shape[1]), dtype=values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, length, axis=0)  # [T-L+1, C, L]
    return np.swapaxes(view[::stride], 1, 2)


def window_end_rows(n_rows: int, length: int, stride: int = 1) -> np.ndarray:
    """Row index of the last row of each window `sliding_windows` makes from `n_rows` rows."""
    if n_rows < length:
        return np.empty(0, dtype=np.int64)
    return np.arange(length - 1, n_rows, stride, dtype=np.int64)


@dataclass
class WindowSet:
    """Windows `[N, C, L]` (raw units) with, per window, the series it came from and its last row."""

    data: np.ndarray
    channels: list[str]
    series: np.ndarray  # [N] series names (str)
    end_row: np.ndarray  # [N] index of the window's last row in its series
    end_time: np.ndarray  # [N] timestamp (cycle) at the last row, or the row index
    labels: np.ndarray | None = None  # [N] 0/1 at the window's last row
    rul: np.ndarray | None = None  # [N] RUL at the window's last row
    # rows labelled 1 in each labelled series the windows were made from (whole series, not just window ends),
    # and the stride: what `missed_labels` compares the windows' labels with
    labelled_rows: dict[str, int] = field(default_factory=dict)
    stride: int | None = None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def subset(self, mask: np.ndarray) -> WindowSet:
        """The windows where `mask` (bool or index array) selects."""

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[mask]

        return WindowSet(
            self.data[mask],
            list(self.channels),
            self.series[mask],
            self.end_row[mask],
            self.end_time[mask],
            cut(self.labels),
            cut(self.rul),
            dict(self.labelled_rows),
            self.stride,
        )


def make_windows(
    series: Sequence[Series], length: int, stride: int = 1, condition_channels: bool = False
) -> WindowSet:
    """Windows of every series, concatenated. With `condition_channels` the series' `conditions` are appended
    as extra input channels (named by `condition_names`), which is how regime scaling sees them in-graph."""
    if not series:
        raise ValueError("no series to window")
    repeated = sorted(name for name, n in Counter(s.name for s in series).items() if n > 1)
    if repeated:  # windows are told apart by series name (per-asset baselines, scores.csv, the report)
        raise ValueError(f"series names {repeated[:5]} occur more than once in one set of windows")
    channels = list(series[0].channels) + (list(series[0].condition_names) if condition_channels else [])
    parts: list[np.ndarray] = []
    names: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    times: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ruls: list[np.ndarray] = []
    labelled_rows: dict[str, int] = {}
    for item in series:
        if item.channels != series[0].channels:
            raise ValueError(
                f"series {item.name!r}: channels {item.channels} differ from {series[0].channels}"
            )
        values = item.values
        if condition_channels:
            if item.conditions is None:
                raise ValueError(f"series {item.name!r} has no conditions for regime scaling")
            values = np.concatenate([values, np.asarray(item.conditions, dtype=np.float32)], axis=1)
        if not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.all(np.isfinite(values), axis=1))[0])
            raise ValueError(f"series {item.name!r}: NaN or infinite value at row {row}")
        windows = sliding_windows(values, length, stride)
        end = window_end_rows(len(item), length, stride)
        parts.append(np.ascontiguousarray(np.swapaxes(windows, 1, 2), dtype=np.float32))
        names.append(np.full(len(end), item.name, dtype=object))
        ends.append(end)
        times.append(item.timestamps[end] if item.timestamps is not None else end.astype(np.float64))
        if item.labels is not None:
            labels.append(np.asarray(item.labels)[end].astype(np.int64))
            labelled_rows[item.name] = int(np.count_nonzero(item.labels))
        if item.rul is not None:
            ruls.append(np.asarray(item.rul)[end].astype(np.float64))
    short = [s.name for s in series if len(s) < length]
    if short:
        log.info(
            "%d series shorter than the window (%d rows) give no windows: %s",
            len(short),
            length,
            ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""),
        )
    return WindowSet(
        data=np.concatenate(parts) if parts else np.empty((0, len(channels), length), np.float32),
        channels=channels,
        series=np.concatenate(names),
        end_row=np.concatenate(ends),
        end_time=np.concatenate(times).astype(np.float64),
        labels=np.concatenate(labels) if len(labels) == len(series) else None,
        rul=np.concatenate(ruls) if len(ruls) == len(series) else None,
        labelled_rows=labelled_rows,
        stride=stride,
    )


def missed_labels(windows: WindowSet) -> list[tuple[str, int, int]]:
    """`(series, rows labelled 1, windows)` for each series with rows labelled 1 none of whose windows is
    labelled 1: a window's label is its last row's, so labels on a few rows (a change point) can fall between
    window ends, and the evaluation then has no anomalous window of that series."""
    if windows.labels is None:
        return []
    missed = []
    for name, rows in windows.labelled_rows.items():
        mine = windows.series == name
        if rows and not np.any(windows.labels[mine]):
            missed.append((name, rows, int(np.count_nonzero(mine))))
    return missed


def warn_missed_labels(windows: WindowSet, what: str,
                       file_of: Callable[[str], str | None] | None = None) -> None:
    """One warning per `missed_labels` series of `windows`; `what` says which windows, `file_of` gives the
    file a series was read from, where known."""
    stride = "?" if windows.stride is None else str(windows.stride)
    for name, rows, count in missed_labels(windows):
        path = file_of(name) if file_of is not None else None
        if count == 0:
            why = "it is shorter than one window, so it has no window at all"
        else:
            why = (f"a window's label is its last row's, and with stride {stride} no window ends on a "
                   "labelled row (nor can one before the first window's end). A sparse label such as a "
                   "change point marks too few rows: label every row of the anomalous stretch")
        log.warning(
            "%s: series %r%s has %d row(s) labelled 1 but none of its %d window(s) is labelled 1: %s. It "
            "adds no anomalous window (when no series does, ROC-AUC, recall and MAR are null)",
            what, name, f" ({path})" if path else "", rows, count, why,
        )


class StandardScaler:
    """Per-channel mean/std over all training rows."""

    kind = "standard"

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR)

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        """Fit on rows `[T, C]` of training data."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) < 2:
            raise ValueError("need at least 2 training rows to fit a scaler")
        return cls(values.mean(axis=0), values.std(axis=0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}


class RegimeScaler:
    """Per-regime mean/std: a row's regime is the nearest centroid of its condition vector.

    Distances are measured on conditions divided by `condition_scale` (their training std), so settings of
    different magnitude weigh alike. With one regime this is a `StandardScaler`.
    """

    kind = "regime"

    def __init__(
        self, centroids: np.ndarray, condition_scale: np.ndarray, mean: np.ndarray, std: np.ndarray
    ) -> None:
        self.centroids = np.asarray(centroids, dtype=np.float64)  # [K, S] raw units
        self.condition_scale = np.maximum(np.asarray(condition_scale, dtype=np.float64), STD_FLOOR)  # [S]
        self.mean = np.asarray(mean, dtype=np.float64)  # [K, C]
        self.std = np.maximum(np.asarray(std, dtype=np.float64), STD_FLOOR)  # [K, C]

    @property
    def n_regimes(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(cls, values: np.ndarray, conditions: np.ndarray, n_regimes: int, seed: int = 0,
            channels: Sequence[str] | None = None) -> RegimeScaler:
        """Cluster `conditions` `[T, S]` into `n_regimes` (KMeans) and fit mean/std of `values` per regime,
        each std at least the channel's `quantization_std` (`channels` name them in the log)."""
        from sklearn.cluster import KMeans

        values = np.asarray(values, dtype=np.float64)
        conditions = np.asarray(conditions, dtype=np.float64)
        scale = np.maximum(conditions.std(axis=0), STD_FLOOR)
        if n_regimes == 1:
            centroids = conditions.mean(axis=0, keepdims=True)
        else:
            km = KMeans(n_clusters=n_regimes, n_init=10, random_state=seed).fit(conditions / scale)
            centroids = km.cluster_centers_ * scale
        scaler = cls(
            centroids, scale, np.zeros((n_regimes, values.shape[1])), np.ones((n_regimes, values.shape[1]))
        )
        regimes = scaler.assign(conditions)
        floor = quantization_std(values)
        for k in range(n_regimes):
            block = values[regimes == k]
            if len(block) < 2:
                raise ValueError(f"operating regime {k} has {len(block)} training rows; use fewer regimes")
            scaler.mean[k] = block.mean(axis=0)
            std = block.std(axis=0)
            floored = np.flatnonzero((std < floor) & (floor > STD_FLOOR))  # one-valued channels are dropped
            if len(floored):
                names = [channels[c] if channels is not None else str(c) for c in floored]
                log.info("operating regime %d: %s spread less than their resolution in the training data "
                         "(never changed, or hardly); scaled by the resolution's rounding spread (step / "
                         "sqrt(12)) instead", k, ", ".join(names))
            scaler.std[k] = np.maximum(std, floor)
        return scaler

    def assign(self, conditions: np.ndarray) -> np.ndarray:
        """Regime index (nearest centroid) of each condition row `[T, S]`."""
        scaled = np.asarray(conditions, dtype=np.float64) / self.condition_scale
        centres = self.centroids / self.condition_scale
        distance = ((scaled[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return distance.argmin(axis=1)

    def transform(self, values: np.ndarray, conditions: np.ndarray) -> np.ndarray:
        regimes = self.assign(conditions)
        return ((values - self.mean[regimes]) / self.std[regimes]).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centroids": self.centroids.tolist(),
            "condition_scale": self.condition_scale.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }


def scaler_from_dict(data: dict[str, Any]) -> StandardScaler | RegimeScaler:
    """Rebuild a scaler from `to_dict()` output (checkpoints, run.json)."""
    kind = data.get("kind")
    if kind == StandardScaler.kind:
        return StandardScaler(np.asarray(data["mean"]), np.asarray(data["std"]))
    if kind == RegimeScaler.kind:
        return RegimeScaler(
            np.asarray(data["centroids"]),
            np.asarray(data["condition_scale"]),
            np.asarray(data["mean"]),
            np.asarray(data["std"]),
        )
    raise ValueError(f"unknown scaler kind {kind!r}")


def fit_scaler(
    series: Sequence[Series], channels: list[str], n_regimes: int = 1, seed: int = 0
) -> StandardScaler | RegimeScaler:
    """Fit on all rows of the training `series` (restricted to `channels`): standard, or per regime."""
    values = np.concatenate([s.select(channels).values for s in series])
    if n_regimes <= 1:
        return StandardScaler.fit(values)
    missing = [s.name for s in series if s.conditions is None]
    if missing:
        raise ValueError(f"regime scaling needs conditions; series without: {missing[:3]}")
    conditions = np.concatenate([np.asarray(s.conditions) for s in series])
    return RegimeScaler.fit(values, conditions, n_regimes, seed, channels)


# Extreme values in the data a scaler is fitted on (`extreme_values`): outside the central 99 % of a
# channel's rows by more than EXTREME_FACTOR times that range's width. Not median/MAD: a machine that runs
# loaded 40 % of the time has its loaded readings dozens of MADs from the median; a quantile range holds every
# operating state that fills at least 0.5 % of the rows at either end. For Gaussian noise the limit is ~18
# sigma.
EXTREME_QUANTILES = (0.005, 0.995)
EXTREME_FACTOR = 3.0


@dataclass(frozen=True)
class ExtremeValues:
    """The extreme rows of one channel: `(series index, row)` and value of each, the channel's central range
    (`low`, `high`), and its standard deviation over all rows and over the others."""

    channel: str
    rows: list[tuple[int, int]]
    values: list[float]
    low: float
    high: float
    std: float
    std_without: float


def extreme_values(series: Sequence[Series], channels: Sequence[str],
                   factor: float = EXTREME_FACTOR) -> list[ExtremeValues]:
    """Values of `channels` in `series` further than `factor` central-99 % widths outside that range (see
    EXTREME_QUANTILES). A channel whose central range has no width (constant, or nearly) has none."""
    if not series:
        return []
    values = np.concatenate([s.select(list(channels)).values for s in series]).astype(np.float64)
    owner = np.concatenate([np.full(len(s), i) for i, s in enumerate(series)])
    row = np.concatenate([np.arange(len(s)) for s in series])
    found = []
    for c, channel in enumerate(channels):
        column = values[:, c]
        low, high = (float(q) for q in np.quantile(column, EXTREME_QUANTILES))
        width = high - low
        if not width > 0:
            continue
        extreme = (column < low - factor * width) | (column > high + factor * width)
        if not extreme.any():
            continue
        index = np.flatnonzero(extreme)
        found.append(ExtremeValues(
            channel,
            [(int(owner[i]), int(row[i])) for i in index],
            column[index].tolist(),
            low,
            high,
            float(column.std()),
            float(column[~extreme].std()),
        ))
    return found


def warn_extreme_values(series: Sequence[Series], channels: Sequence[str],
                        row_origin: Callable[[Series, int], str], shown: int = 3) -> list[ExtremeValues]:
    """Log one warning per channel of the fit `series` with `extreme_values`, naming where the first `shown`
    are (`row_origin(series, row)`: file and line for CSV data). The data is used as it is: a sentinel value
    such as -9999 is read as a reading, so the warning says what it does to the channel's spread."""
    found = extreme_values(series, channels)
    for item in found:
        places = [f"{row_origin(series[s], r)}, column {item.channel!r}: {v:g}"
                  for (s, r), v in zip(item.rows[:shown], item.values[:shown], strict=True)]
        more = len(item.rows) - len(places)
        log.warning(
            "extreme value(s) in the data the scaler is fitted on: %s%s: more than %g x the width of the "
            "central 99 %% of the column's fit rows (%.6g .. %.6g) outside it; with them the column's std is "
            "%.4g, without them %.4g. A glitch or a sentinel value (-9999)? Mark missing samples empty or "
            "NaN. A rare real state (an inrush, a heavy tail) is fine as it is",
            "; ".join(places), f" (and {more} more)" if more > 0 else "", EXTREME_FACTOR, item.low, item.high,
            item.std, item.std_without,
        )
    return found


def split_series(series: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Split whole series (units/files, or groups of them) into two groups, `fraction` of them in the
    second, seeded."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
    order = np.random.default_rng(seed).permutation(len(series))
    n_second = max(1, round(len(series) * fraction))
    if n_second >= len(series):
        raise ValueError(
            f"cannot split {len(series)} series with fraction {fraction}: one side would be empty"
        )
    second = set(order[:n_second].tolist())
    return (
        [s for i, s in enumerate(series) if i not in second],
        [s for i, s in enumerate(series) if i in second],
    )
