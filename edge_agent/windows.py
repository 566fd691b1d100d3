"""Per-asset time alignment and windowing: `Reading`s in, `Window`s out.

Each asset samples its model's channels on a regular grid (the manifest's `sample_period_s`), anchored at the
first reading it sees. The value of a channel at grid time `t` is its latest sample at or before `t`
(sample-and-hold); a channel whose sample is older than `staleness_s` (or that has none yet) is stale at `t`.
A window of `window_length` grid points is emitted every `stride` points; a window with any stale point is not
scored but counted (`stale_windows`).

The grid advances with the data's own timestamps, never with a wall clock: a reading at time `T` first updates
the held values, then emits every grid point `<= T` (or within a tenth of a period after `T`, so timestamps
rounded or jittered by the sender do not hold windows back). So a JSON payload carrying all channels
produces its window at once (no waiting for the next sample), and replays at any speed give the same
windows.

Timestamps are checked against the asset's own timeline, not a wall clock (replays and simulators send old
or accelerated times): a reading more than `max_jump_s` (default one day) after or before the newest
accepted one is dropped and counted (`readings_out_of_range`), so one garbage timestamp cannot push the grid
years ahead. So is a reading behind the grid: older than the last grid point already emitted by more than
`staleness_s`, it could only ever be stale (a device clock stepped back, or one reading ahead of the others
moved the grid forward). After `REANCHOR_AFTER` consecutive dropped readings that agree with each other (a
real clock jump), the asset starts a fresh grid at the new time (logged); an in-range reading in between
starts the count again, so a source lagging behind another one on the same asset does not move the grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.types import Reading, Window

_EPS = 1e-6  # fraction of a sample period within which a timestamp counts as "on" a grid point
# A reading up to this fraction of a period before a grid point completes that point: timestamps rounded to
# milliseconds or jittered by the sender would otherwise hold every window back by one sample.
_EARLY = 0.1
DEFAULT_MAX_JUMP_S = 86_400.0
REANCHOR_AFTER = 10  # consecutive out-of-range readings (within max_jump_s of each other) that re-anchor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssetWindowSpec:
    """What one asset's windows look like: channels in model order, each fed by `(source, field)`."""

    asset: str
    model: str
    inputs: tuple[tuple[str, str], ...]  # (source, field) per model channel, in the model's order
    window_length: int
    stride: int
    sample_period_s: float
    staleness_s: float
    max_jump_s: float = DEFAULT_MAX_JUMP_S

    def __post_init__(self) -> None:
        if (self.window_length < 1 or self.stride < 1 or self.sample_period_s <= 0 or self.staleness_s <= 0
                or self.max_jump_s <= 0):
            raise ValueError(f"asset {self.asset!r}: invalid window spec {self}")


@dataclass
class AlignerStats:
    ticks: int = 0
    windows: int = 0
    stale_windows: int = 0
    out_of_range: int = 0  # readings dropped for a timestamp too far from the asset's timeline
    reanchors: int = 0
    last_window_end: float | None = None


class AssetAligner:
    """Sample-and-hold alignment and windowing for one asset (pure: no clock, no I/O)."""

    def __init__(self, spec: AssetWindowSpec) -> None:
        self.spec = spec
        self.stats = AlignerStats()
        self._jumps = 0  # consecutive out-of-range readings
        self._jump_ts = math.nan  # timestamp of the latest of them
        self._reset()

    def _reset(self) -> None:
        spec = self.spec
        channels = len(spec.inputs)
        self._held = np.full(channels, np.nan)
        self._held_ts = np.full(channels, -np.inf)
        self._prev = np.full(channels, np.nan)
        self._prev_ts = np.full(channels, -np.inf)
        # Circular buffers written twice (slot and slot + length), so a window is one contiguous slice.
        self._data = np.zeros((channels, 2 * spec.window_length), dtype=np.float32)
        self._times = np.zeros(2 * spec.window_length)
        self._stale = np.ones(spec.window_length, dtype=bool)
        self._stale_count = spec.window_length  # stale points among the last `window_length`
        self._pos = -1  # slot of the latest grid point in the circular buffers
        self._next_index = 0  # grid index of the next point to emit
        self._anchor: float | None = None
        self._latest_ts = -math.inf  # newest sample seen before the current reading
        self._latest_held = -math.inf  # newest sample held (max of held timestamps)
        self._oldest_held: float | None = -math.inf  # min of held timestamps; None: not known, recompute

    def accept(self, ts: float) -> bool:
        """Whether a reading at `ts` fits the asset's timeline (see the module docstring); counts drops."""
        latest = self._latest_ts
        limit = self.spec.max_jump_s
        if not math.isfinite(latest) or latest <= ts <= latest + limit:  # in order: the common case
            self._jumps = 0
            return True
        emitted = None  # set when the reading lies behind the grid rather than far from the timeline
        if latest - limit <= ts < latest:  # out of order, within max_jump_s: behind the grid?
            emitted = self._time_of(self._next_index - 1) if self._next_index else -math.inf
            if ts >= emitted - self.spec.staleness_s:
                self._jumps = 0
                return True
        self._jumps = self._jumps + 1 if self._jumps and abs(ts - self._jump_ts) <= limit else 1
        self._jump_ts = ts
        if self._jumps >= REANCHOR_AFTER:
            self.stats.reanchors += 1
            if self.stats.reanchors <= 10 or self.stats.reanchors % 100 == 0:
                log.warning("asset %s: %d readings in a row at %.3f, %s: starting a new window grid there "
                            "(re-anchored %d times)", self.spec.asset, self._jumps, ts,
                            self._off_timeline(ts, emitted), self.stats.reanchors)
            self._jumps = 0
            self._reset()
            return True
        self.stats.out_of_range += 1
        if self.stats.out_of_range == 1 or self.stats.out_of_range % 1000 == 0:
            log.warning("asset %s: reading at %.3f dropped, %s; %d dropped so far", self.spec.asset, ts,
                        self._off_timeline(ts, emitted), self.stats.out_of_range)
        return False

    def _off_timeline(self, ts: float, emitted: float | None) -> str:
        """How a dropped reading at `ts` misses the timeline (for the log only)."""
        if emitted is not None:
            return (f"{emitted - ts:.0f} s behind its window grid ({emitted:.3f}; staleness_s "
                    f"{self.spec.staleness_s:g})")
        latest = self._latest_ts
        return f"{ts - latest:.0f} s from its timeline ({latest:.3f}; max_jump_s {self.spec.max_jump_s:g})"

    def hold(self, channel: int, ts: float, value: float) -> None:
        """Record a sample; a late sample only replaces the previous one when it is newer than that."""
        if ts >= self._held_ts[channel]:
            self._prev[channel] = self._held[channel]
            self._prev_ts[channel] = self._held_ts[channel]
            self._held[channel] = value
            self._held_ts[channel] = ts
            self._latest_held = max(self._latest_held, ts)
            self._oldest_held = None
        elif ts > self._prev_ts[channel]:
            self._prev[channel] = value
            self._prev_ts[channel] = ts

    def hold_many(self, index: np.ndarray | None, ts: float, values: np.ndarray) -> None:
        """`hold` for several channels sampled at the same time (one reading), vectorised.

        `index=None` means every channel, in order (one payload carrying the whole asset)."""
        if index is None:
            if self._latest_held <= ts:  # no channel holds a newer sample: the held values become prev
                self._prev, self._held = self._held, self._prev
                self._prev_ts, self._held_ts = self._held_ts, self._prev_ts
                self._held[:] = values
                self._held_ts.fill(ts)
                self._latest_held = self._oldest_held = ts
                return
            index = np.arange(len(self._held))
        newer = self._held_ts[index] <= ts
        if newer.all():
            self._prev[index] = self._held[index]
            self._prev_ts[index] = self._held_ts[index]
            self._held[index] = values
            self._held_ts[index] = ts
            self._latest_held = max(self._latest_held, ts)
            self._oldest_held = None
            return
        for channel, value in zip(index.tolist(), values.tolist(), strict=True):
            self.hold(channel, ts, value)

    def advance(self, ts: float) -> list[Window]:
        """Emit the grid points up to `ts` and the windows that end on them."""
        spec = self.spec
        period = spec.sample_period_s
        if self._anchor is None:
            self._anchor = ts
        due = math.floor((ts - self._anchor) / period + _EARLY) - self._next_index + 1
        windows: list[Window] = []
        if due > 0:
            windows, due = self._skip_gap(due)
            for _ in range(due):
                window = self._tick()
                if window is not None:
                    windows.append(window)
        self._latest_ts = max(self._latest_ts, ts)
        return windows

    def _time_of(self, index: int) -> float:
        assert self._anchor is not None
        return self._anchor + index * self.spec.sample_period_s

    def _skip_gap(self, due: int) -> tuple[list[Window], int]:
        """After a long silence, account the grid points that can only be stale in bulk, without looping.

        Points later than the newest earlier sample plus `staleness_s` are stale for every channel (the new
        reading's samples lie in their future). When more than a window's worth of them come before the last
        `window_length` points, the windows ending there are counted as stale and the grid jumps.
        Returns the windows of the fresh points just after the last sample and how many points remain."""
        spec = self.spec
        length = spec.window_length
        if due <= 2 * length or not math.isfinite(self._latest_ts):
            return [], due
        start = self._next_index
        fresh_until = self._latest_ts + spec.staleness_s
        first_stale = max(start, math.floor((fresh_until - self._time_of(0)) / spec.sample_period_s) + 1)
        last_bulk = start + due - 1 - length  # the last `length` points are emitted one by one
        if last_bulk - first_stale + 1 < length:
            return [], due
        windows = [w for w in (self._tick() for _ in range(first_stale - start)) if w is not None]
        self.stats.stale_windows += self._windows_ending_between(first_stale, last_bulk)
        self.stats.ticks += last_bulk - first_stale + 1
        self._next_index = last_bulk + 1
        self._stale[:] = True
        self._stale_count = length
        return windows, length

    def _windows_ending_between(self, first: int, last: int) -> int:
        def ending_upto(index: int) -> int:
            offset = index - (self.spec.window_length - 1)
            return 0 if offset < 0 else offset // self.spec.stride + 1

        return ending_upto(last) - ending_upto(first - 1)

    def _tick(self) -> Window | None:
        spec = self.spec
        index = self._next_index
        t = self._time_of(index)
        self._next_index += 1
        self.stats.ticks += 1
        limit = t + _EPS * spec.sample_period_s
        held_ts = self._held_ts
        if self._latest_held <= limit:  # common case: every held sample is at or before t
            values, sample_ts = self._held, held_ts
            oldest = self._oldest_held
            if oldest is None:
                oldest = self._oldest_held = float(held_ts.min())
            stale = t - oldest > spec.staleness_s
        else:
            use_held = held_ts <= limit
            values = np.where(use_held, self._held, self._prev)
            sample_ts = np.where(use_held, held_ts, self._prev_ts)
            stale = bool(np.any((sample_ts > limit) | (t - sample_ts > spec.staleness_s)))
        length = spec.window_length
        pos = self._pos = (self._pos + 1) % length
        self._data[:, pos] = values
        self._data[:, pos + length] = values
        self._times[pos] = self._times[pos + length] = t
        self._stale_count += int(stale) - int(self._stale[pos])
        self._stale[pos] = stale
        end = index + 1 - length
        if end < 0 or end % spec.stride:
            return None
        if self._stale_count:
            self.stats.stale_windows += 1
            return None
        self.stats.windows += 1
        self.stats.last_window_end = t
        first = pos + 1
        return Window(asset=spec.asset, model=spec.model, start_ts=float(self._times[first]), end_ts=t,
                      data=self._data[:, first:first + length].copy(),
                      timestamps=self._times[first:first + length].copy())


# (aligner, its channels (None: all, in order), positions in the reading (None: all its values, in order))
_Plan = list[tuple[AssetAligner, np.ndarray | None, np.ndarray | None]]


class Windower:
    """Routes readings to the assets whose channels they feed and collects the windows that complete."""

    def __init__(self, specs: Iterable[AssetWindowSpec]) -> None:
        self.aligners: dict[str, AssetAligner] = {}
        self._routes: dict[tuple[str, str], list[tuple[AssetAligner, int]]] = {}
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}
        for spec in specs:
            aligner = AssetAligner(spec)
            self.aligners[spec.asset] = aligner
            for channel, key in enumerate(spec.inputs):
                self._routes.setdefault(key, []).append((aligner, channel))

    def push(self, reading: Reading) -> list[Window]:
        """Hold the reading's values for the assets they feed, then advance those assets to its time."""
        key = (reading.source, tuple(reading.values))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(*key)
        if not plan:
            return []
        values = np.fromiter(reading.values.values(), dtype=np.float64, count=len(reading.values))
        windows: list[Window] = []
        for aligner, channels, positions in plan:
            if not aligner.accept(reading.ts):
                continue
            aligner.hold_many(channels, reading.ts, values if positions is None else values[positions])
            windows.extend(aligner.advance(reading.ts))
        return windows

    def _plan(self, source: str, fields: tuple[str, ...]) -> _Plan:
        """Which aligner channels the fields of a reading of this shape feed (cached per shape)."""
        grouped: dict[AssetAligner, tuple[list[int], list[int]]] = {}
        for position, field in enumerate(fields):
            for aligner, channel in self._routes.get((source, field), ()):
                channels, positions = grouped.setdefault(aligner, ([], []))
                channels.append(channel)
                positions.append(position)
        plan: _Plan = []
        for aligner, (channels, positions) in grouped.items():
            every = channels == list(range(len(aligner.spec.inputs)))
            plan.append((aligner, None if every else np.asarray(channels),
                         None if every and positions == list(range(len(fields))) else np.asarray(positions)))
        if len(self._plans) < 4096:  # readings of a few shapes per source; never unbounded
            self._plans[(source, fields)] = plan
        return plan

    def counters(self) -> dict[str, int]:
        return {"windows": sum(a.stats.windows for a in self.aligners.values()),
                "stale_windows": sum(a.stats.stale_windows for a in self.aligners.values())}

    def out_of_range(self) -> int:
        """Readings dropped for a timestamp too far from their asset's timeline (all assets)."""
        return sum(a.stats.out_of_range for a in self.aligners.values())

    def asset_stats(self) -> Mapping[str, AlignerStats]:
        return {name: aligner.stats for name, aligner in self.aligners.items()}


def specs_for(assets: Sequence[tuple[str, str, Sequence[tuple[str, str]], float | None]],
              input_specs: Mapping[str, object],
              max_jump_s: Mapping[str, float] | None = None) -> list[AssetWindowSpec]:
    """Window specs from `(asset, model, inputs, staleness_s)` and the manifest's input spec per model
    (staleness defaults to three sample periods); `max_jump_s` per asset (default one day)."""
    specs = []
    for asset, model, inputs, staleness in assets:
        spec = input_specs[model]
        period = float(spec.sample_period_s)  # type: ignore[attr-defined]
        specs.append(AssetWindowSpec(
            asset=asset, model=model, inputs=tuple(inputs),
            window_length=int(spec.window_length),  # type: ignore[attr-defined]
            stride=int(spec.stride),  # type: ignore[attr-defined]
            sample_period_s=period, staleness_s=staleness if staleness is not None else 3 * period,
            max_jump_s=(max_jump_s or {}).get(asset, DEFAULT_MAX_JUMP_S)))
    return specs
