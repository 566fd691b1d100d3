"""The one record every reader returns: a multichannel series of one unit, file or run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Series:
    """One contiguous recording: an engine unit (C-MAPSS), an experiment file (SKAB), a CSV file.

    `values` is float32 `[T, C]` in physical units with columns named by `channels`. Optional per-row arrays:
    `timestamps` (Unix seconds or cycle numbers), `labels` (0/1 anomaly), `rul` (remaining useful life), and
    `conditions` (operating settings `[T, S]` used to find operating regimes; not model channels unless listed
    in `channels` too).
    """

    name: str
    values: np.ndarray
    channels: list[str]
    timestamps: np.ndarray | None = None
    labels: np.ndarray | None = None
    rul: np.ndarray | None = None
    conditions: np.ndarray | None = None
    condition_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.channels):
            raise ValueError(
                f"series {self.name!r}: values of shape {self.values.shape} do not match "
                f"{len(self.channels)} channels"
            )
        length = self.values.shape[0]
        for attr in ("timestamps", "labels", "rul", "conditions"):
            array = getattr(self, attr)
            if array is not None and len(array) != length:
                raise ValueError(f"series {self.name!r}: {attr} has {len(array)} rows, values have {length}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def select(self, channels: list[str]) -> Series:
        """The same series restricted to `channels` (in that order)."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise KeyError(f"series {self.name!r} has no channel(s) {missing}")
        index = [self.channels.index(c) for c in channels]
        return Series(self.name, self.values[:, index], list(channels), self.timestamps, self.labels,
                      self.rul, self.conditions, list(self.condition_names))

    def slice(self, start: int, stop: int | None = None) -> Series:
        """Rows `start:stop` of every per-row array."""
        rows = slice(start, stop)

        def cut(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[rows]

        return Series(self.name, self.values[rows], list(self.channels), cut(self.timestamps),
                      cut(self.labels), cut(self.rul), cut(self.conditions), list(self.condition_names))


def informative_channels(
    series: list[Series], regimes: list[np.ndarray] | None = None, max_dominant_share: float = 0.95
) -> list[str]:
    """Channels that vary in the training data, judged within each operating regime.

    A channel is constant (or near constant) in a regime when a single value accounts for at least
    `max_dominant_share` of that regime's rows (FD001's sensor_6 reads 21.61 in 98 % of rows, the odd 21.60 is
    quantisation noise). A relative-std rule would not do: sensor_8 (about 2388 +- 0.07) carries degradation.
    A channel constant within every regime carries no information once the regime is known and is dropped.
    `regimes` gives each series' per-row regime index (one regime when omitted).
    """
    if not series:
        raise ValueError("no training series to judge channels on")
    values = np.concatenate([s.values for s in series]).astype(np.float64)
    labels = np.concatenate(regimes) if regimes is not None else np.zeros(len(values), dtype=np.int64)
    keep = np.zeros(values.shape[1], dtype=bool)
    for regime in np.unique(labels):
        block = values[labels == regime]
        if len(block) < 2:
            continue
        for channel in range(values.shape[1]):
            _, counts = np.unique(block[:, channel], return_counts=True)
            keep[channel] |= counts.max() < max_dominant_share * len(block)
    channels = [c for c, k in zip(series[0].channels, keep, strict=True) if k]
    dropped = [c for c, k in zip(series[0].channels, keep, strict=True) if not k]
    log.info("channels constant in the training data%s, dropped: %s",
             " (within every operating regime)" if regimes is not None else "", ", ".join(dropped) or "none")
    if not channels:
        raise ValueError("every channel is constant in the training data: nothing to learn from")
    return channels
