"""Faults the simulator injects, their schedule, and the ground truth it writes.

A `Fault` is one fault on one asset over `[start_s, end_s)` seconds of simulated time (counted from the
plant's first sample). Its `effects` at a given elapsed time are a `FaultEffects`: changes to the physics
(extra vibration, extra bearing heat, a suction-side pressure drop, a head breakdown, a clogged filter) or
to one sensor (frozen value, drifting offset). The plant applies them; the ground truth names the channels
each kind moves first, which is what a root-cause ranking should point at.

A schedule is given in a TOML or JSON file (`[[fault]]` tables / `{"faults": [...]}`), or generated from a
seed by `FaultSchedule.generate`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.compat import tomllib
from edge_agent.configtools import ConfigError, Section, join

# The pump's channels live here (not in plant.py) because fault definitions name them; plant.py re-exports.
CHANNELS: tuple[str, ...] = (
    "speed", "flow", "suction_pressure", "discharge_pressure", "motor_current", "vibration_rms",
    "bearing_temp",
)
UNITS: dict[str, str] = {
    "speed": "rpm", "flow": "m3/h", "suction_pressure": "bar", "discharge_pressure": "bar",
    "motor_current": "A", "vibration_rms": "mm/s", "bearing_temp": "degC",
}
# Sensors a stuck or drifting fault can hit (the speed comes from the drive, not from a field sensor).
SENSOR_CHANNELS: tuple[str, ...] = CHANNELS[1:]
# Generated stuck faults avoid the bearing temperature: it moves so slowly that, frozen in a steady regime,
# it looks healthy for a long time (a real failure mode, but not a fair one to score a demo on).
GENERATED_STUCK_CHANNELS: tuple[str, ...] = tuple(c for c in SENSOR_CHANNELS if c != "bearing_temp")

# Channels each physical fault moves first (the ones a root-cause ranking should name).
KIND_CHANNELS: dict[str, tuple[str, ...]] = {
    "bearing_wear": ("vibration_rms", "bearing_temp"),
    "cavitation": ("suction_pressure", "vibration_rms", "flow"),
    "blocked_filter": ("suction_pressure", "flow", "motor_current"),
    "stuck_sensor": (),  # the configured channel
    "drifting_sensor": (),  # the configured channel
}
FAULT_KINDS: tuple[str, ...] = tuple(KIND_CHANNELS)
SENSOR_FAULTS = ("stuck_sensor", "drifting_sensor")

# Size of a drift at its end with magnitude 1, per channel (about 10 % of the nominal reading).
DRIFT_SPAN: dict[str, float] = {
    "flow": 10.0, "suction_pressure": 0.15, "discharge_pressure": 0.5, "motor_current": 3.0,
    "vibration_rms": 0.8, "bearing_temp": 6.0,
}


@dataclass(frozen=True)
class FaultEffects:
    """What the active faults do to one asset at one instant (neutral values when nothing is active)."""

    vibration_add: float = 0.0  # mm/s added to the RMS velocity
    heat_add: float = 0.0  # degC added to the bearing's steady-state temperature
    tank_drop: float = 0.0  # bar lost on the suction side before the filter (inlet starving)
    head_factor: float = 1.0  # multiplies the pump's shut-off head (cavitation: head breakdown)
    filter_factor: float = 1.0  # multiplies the suction line's loss coefficient (clogged strainer)
    stuck: frozenset[str] = frozenset()  # channels whose reading is frozen
    drift: Mapping[str, float] = field(default_factory=dict)  # channel -> offset added to the reading


@dataclass(frozen=True)
class Fault:
    """One injected fault. `channel` is set for sensor faults only; `magnitude` 1 is a clear, typical one."""

    asset: str
    kind: str
    start_s: float
    end_s: float
    magnitude: float = 1.0
    channel: str | None = None

    def __post_init__(self) -> None:
        where = f"fault {self.kind!r} on {self.asset!r}"
        if self.kind not in KIND_CHANNELS:
            raise ValueError(f"{where}: unknown kind, expected one of {', '.join(FAULT_KINDS)}")
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)) or self.start_s < 0:
            raise ValueError(f"{where}: start_s must be >= 0 and finite, got {self.start_s}")
        if self.end_s <= self.start_s:
            raise ValueError(f"{where}: end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if not (math.isfinite(self.magnitude) and self.magnitude > 0):
            raise ValueError(f"{where}: magnitude must be a positive number, got {self.magnitude}")
        if self.kind in SENSOR_FAULTS:
            if self.channel not in SENSOR_CHANNELS:
                raise ValueError(f"{where}: channel must be one of {', '.join(SENSOR_CHANNELS)}, "
                                 f"got {self.channel!r}")
        elif self.channel is not None:
            raise ValueError(f"{where}: channel applies to sensor faults only, got {self.channel!r}")

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels this fault moves first (ground truth for root cause)."""
        return (self.channel,) if self.channel else KIND_CHANNELS[self.kind]

    def active(self, elapsed_s: float) -> bool:
        return self.start_s <= elapsed_s < self.end_s

    def progress(self, elapsed_s: float) -> float:
        """0 at the start, 1 at the end of the fault."""
        return min(1.0, max(0.0, (elapsed_s - self.start_s) / (self.end_s - self.start_s)))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"asset": self.asset, "kind": self.kind, "start_s": self.start_s,
                                "end_s": self.end_s, "magnitude": self.magnitude}
        if self.channel is not None:
            data["channel"] = self.channel
        return data


def fault_effects(faults: Iterable[tuple[Fault, np.random.Generator]], elapsed_s: float) -> FaultEffects:
    """Combined effects of the active `faults` (each with its own random stream) at `elapsed_s`."""
    vibration = heat = tank_drop = 0.0
    head = filt = 1.0
    stuck: set[str] = set()
    drift: dict[str, float] = {}
    for fault, rng in faults:
        if not fault.active(elapsed_s):
            continue
        mag, p = fault.magnitude, fault.progress(elapsed_s)
        if fault.kind == "bearing_wear":
            # Wear grows slowly then faster (spalling): vibration rises with p^1.5, friction heat with p.
            vibration += 4.0 * mag * p**1.5
            heat += 15.0 * mag * p
        elif fault.kind == "cavitation":
            onset = min(1.0, (elapsed_s - fault.start_s) / 5.0)  # the inlet starves over a few seconds
            tank_drop += 0.8 * mag * onset
            head *= 1.0 - 0.12 * mag * onset
            # Collapsing vapour bubbles: broadband bursts on top of the running vibration.
            vibration += onset * mag * (0.8 + abs(float(rng.normal(0.0, 1.5))))
        elif fault.kind == "blocked_filter":
            filt *= 1.0 + 10.0 * mag * p  # flow -13 %, suction -1.4 bar at the end
        elif fault.kind == "stuck_sensor":
            assert fault.channel is not None
            stuck.add(fault.channel)
        else:  # drifting_sensor
            assert fault.channel is not None
            drift[fault.channel] = drift.get(fault.channel, 0.0) + mag * DRIFT_SPAN[fault.channel] * p
    return FaultEffects(vibration, heat, tank_drop, head, filt, frozenset(stuck), drift)


class FaultSchedule:
    """An ordered list of faults, from a file, from code, or generated from a seed."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults: tuple[Fault, ...] = tuple(sorted(faults, key=lambda f: (f.start_s, f.asset, f.kind)))

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)

    def for_asset(self, asset: str) -> tuple[Fault, ...]:
        return tuple(f for f in self.faults if f.asset == asset)

    def check_assets(self, assets: Sequence[str]) -> None:
        """Every fault names a simulated asset (else a `ValueError` naming the fault and the assets)."""
        for fault in self.faults:
            if fault.asset not in assets:
                raise ValueError(f"fault {fault.kind!r} at {fault.start_s} s names asset {fault.asset!r}, "
                                 f"which is not simulated (assets: {', '.join(assets)})")

    @classmethod
    def load(cls, path: str | Path) -> FaultSchedule:
        """Read a schedule from TOML (`[[fault]]` tables) or JSON (`{"faults": [...]}` or a list)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("", f"cannot read fault schedule: {exc.strerror}", source=path) from exc
        try:
            if path.suffix.lower() == ".json":
                raw = json.loads(text)
                if isinstance(raw, list):
                    raw = {"faults": raw}
                key = "faults"
            else:
                raw = tomllib.loads(text)
                key = "fault"
        except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
            raise ConfigError("", f"not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}",
                              source=path) from exc
        try:
            return cls.from_dict(raw, key)
        except ConfigError as exc:
            raise exc.with_source(path) from exc

    @classmethod
    def from_dict(cls, raw: Any, key: str = "fault") -> FaultSchedule:
        """Parse `{key: [{asset, kind, start_s, end_s, magnitude?, channel?}, ...]}` strictly."""
        top = Section(raw)
        items = top.get(key, list, [])
        top.finish()
        faults = []
        for index, item in enumerate(items):
            section = Section(item, join(key, index))
            asset = section.get("asset", str)
            kind = section.choice("kind", FAULT_KINDS)
            start = section.number("start_s", minimum=0.0)
            end = section.number("end_s", minimum=0.0)
            magnitude = section.number("magnitude", 1.0, minimum=0.0, exclusive_minimum=True)
            channel = section.optional("channel", str)
            section.finish()
            try:
                faults.append(Fault(asset, kind, start, end, magnitude, channel))
            except ValueError as exc:
                raise ConfigError(section.path, str(exc), item) from exc
        return cls(faults)

    @classmethod
    def generate(cls, assets: Sequence[str], duration_s: float, seed: int, *, count: int | None = None,
                 kinds: Sequence[str] = FAULT_KINDS, healthy_lead_s: float | None = None) -> FaultSchedule:
        """A reproducible schedule: `count` faults (default one of each kind), none overlapping in time.

        The first `healthy_lead_s` (default 20 % of the run) stay healthy. The rest is cut into equal slots;
        each slot holds one fault on one asset (assets taken in turn), lasting 40-70 % of its slot, so every
        fault is followed by a healthy stretch and detections can be told apart.
        """
        if not assets:
            raise ValueError("cannot generate faults without assets")
        unknown = [k for k in kinds if k not in KIND_CHANNELS]
        if unknown or not kinds:
            raise ValueError(f"unknown fault kind(s) {unknown or kinds!r}, expected some of "
                             f"{', '.join(FAULT_KINDS)}")
        count = len(kinds) if count is None else count
        lead = 0.2 * duration_s if healthy_lead_s is None else healthy_lead_s
        if count < 0 or duration_s <= lead:
            raise ValueError(f"no room for faults: duration {duration_s} s, healthy lead {lead} s")
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA17]))
        order = [kinds[i % len(kinds)] for i in rng.permutation(max(count, len(kinds)))][:count]
        slot = (duration_s - lead) / max(count, 1)
        faults = []
        for index, kind in enumerate(order):
            length = slot * rng.uniform(0.4, 0.7)
            start = lead + index * slot + rng.uniform(0.0, slot - length) * 0.5
            channel = None
            if kind in SENSOR_FAULTS:
                choices = GENERATED_STUCK_CHANNELS if kind == "stuck_sensor" else SENSOR_CHANNELS
                channel = str(choices[int(rng.integers(len(choices)))])
            faults.append(Fault(assets[index % len(assets)], kind, round(start, 3), round(start + length, 3),
                                1.0, channel))
        return cls(faults)

    def to_dict(self) -> dict[str, Any]:
        return {"faults": [f.to_dict() for f in self.faults]}


def ground_truth_rows(schedule: FaultSchedule, origin_ts: float) -> list[dict[str, Any]]:
    """One row per fault with absolute Unix times (`origin_ts` = timestamp of the plant's first sample)."""
    rows = []
    for fault in schedule:
        start, end = origin_ts + fault.start_s, origin_ts + fault.end_s
        rows.append({"asset": fault.asset, "kind": fault.kind, "channels": list(fault.channels),
                     "start_ts": round(start, 3), "end_ts": round(end, 3),
                     "start": _rfc3339(start), "end": _rfc3339(end), "magnitude": fault.magnitude})
    return rows


def write_ground_truth(path: str | Path, schedule: FaultSchedule, origin_ts: float) -> Path:
    """Write the ground truth: JSON lines, or CSV when `path` ends in `.csv` (channels joined by `;`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ground_truth_rows(schedule, origin_ts)
    with path.open("w", encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["asset", "kind", "channels", "start_ts", "end_ts", "start", "end", "magnitude"])
            for row in rows:
                writer.writerow([row["asset"], row["kind"], ";".join(row["channels"]), row["start_ts"],
                                 row["end_ts"], row["start"], row["end"], row["magnitude"]])
        else:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def read_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    """Read back a JSON-lines ground truth file (for the demo's summary and tests)."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}: line {number}: not valid JSON") from exc
    return rows


def _rfc3339(ts: float) -> str:
    text = datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
