"""Records that cross module boundaries inside the agent.

sources -> `Reading` -> windows -> `Window` -> inference -> `ScoredWindow` -> decisions -> `AlertEvent`
-> storage (outbox) -> sinks. They are plain frozen dataclasses so each stage can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

EpisodeState = Literal["open", "update", "close"]


@dataclass(frozen=True)
class GatewayIdentity:
    """Where this gateway sits in the ISA-95 hierarchy."""

    site: str
    area: str
    line: str
    gateway_id: str


@dataclass(frozen=True)
class Reading:
    """One timestamped set of field values from a source (a CSV line, a JSON payload, one MQTT number).

    `ts` is Unix time in seconds (UTC); `values` maps the source's field names to numbers.
    """

    source: str
    ts: float
    values: dict[str, float]


@dataclass(frozen=True)
class Window:
    """A time-aligned window for one asset and model: float32 `[channels, length]` in physical units,
    channels in the order of the model's manifest input spec."""

    asset: str
    model: str
    start_ts: float
    end_ts: float
    data: np.ndarray
    timestamps: np.ndarray | None = None  # [length] sample times, for locating the peak inside the window


@dataclass(frozen=True)
class ScoredWindow:
    """A window with the model's outputs. `score` is what is compared with `threshold` (after the optional
    per-asset baseline); `raw_score` is the graph's own output."""

    window: Window
    score: float
    raw_score: float
    threshold: float
    channel_error: np.ndarray  # [channels]
    latent_mean: np.ndarray  # [latent]
    time_error: np.ndarray  # [length]
    bundle_name: str
    bundle_version: str
    # the manifest's `flatline` channels whose readings did not change at all in this window (stuck sensors)
    flat: tuple[str, ...] = ()

    @property
    def is_above(self) -> bool:
        return self.score > self.threshold


@dataclass(frozen=True)
class RootCauseEntry:
    channel: str
    share: float  # fraction of the window's reconstruction error carried by this channel (sums to 1)


@dataclass(frozen=True)
class AlertEvent:
    """One message of an alert episode, ready to be written to the outbox and published."""

    alert_id: str  # unique per message (receivers drop duplicates by it)
    episode_id: str
    state: EpisodeState
    ts: float  # when the event was decided
    episode_start_ts: float
    asset: str
    model: str
    bundle_name: str
    bundle_version: str
    score: float
    threshold: float
    severity: str
    window_start_ts: float
    window_end_ts: float
    peak_ts: float
    root_cause: tuple[RootCauseEntry, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    flat: tuple[str, ...] = ()  # the reported window's flat-lined channels (a stuck sensor), if any
