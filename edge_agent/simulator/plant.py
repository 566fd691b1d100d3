"""A small plant of centrifugal pumps: physics-ish, coupled channels, seeded noise.

Each pump runs on a variable-speed drive. Its operating point moves over time: the speed setpoint steps
between levels (the drive ramps to them) and the downstream valve wanders slowly. The hydraulics follow the
pump affinity laws through the intersection of the pump curve and the system curve:

    pump head   H(Q) = H0 * s^2 - k_p * Q^2             (s = speed / rated speed)
    system      H(Q) = (k_valve + k_suction) * Q^2      (no static lift: flow ~ s, head ~ s^2, power ~ s^3)

so flow, suction and discharge pressure, shaft power (motor current), vibration and bearing temperature all
move together. The bearing temperature follows its steady state through a first-order thermal lag. Sensor
noise is Gaussian per channel. Faults (see `faults.py`) act on the physics or on one sensor.

Randomness is split into independent streams per asset (operating schedule, sensor noise) and per fault, all
derived from the seed: the same seed gives the same bytes, and a faulted run shares its operating point and
noise with the healthy run of the same seed, so the difference between the two is exactly the fault. A pump's
nameplate (sizes within about 10 % of the default design) depends on its name only, not on the seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from edge_agent.simulator.faults import CHANNELS, UNITS, Fault, FaultSchedule, fault_effects

__all__ = ["CHANNELS", "NOISE", "UNITS", "Plant", "PumpSpec", "Sample"]

# Standard deviation of each sensor's noise, in its unit.
NOISE: dict[str, float] = {
    "speed": 3.0, "flow": 0.6, "suction_pressure": 0.01, "discharge_pressure": 0.03,
    "motor_current": 0.12, "vibration_rms": 0.06, "bearing_temp": 0.08,
}
_SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class PumpSpec:
    """Nameplate and behaviour of one pump (defaults: a 100 m3/h, 6 bar shut-off, 2-pole 22 kW pump)."""

    name: str
    rated_speed_rpm: float = 2950.0
    bep_flow_m3h: float = 100.0  # best-efficiency flow at rated speed and nominal valve
    shutoff_head_bar: float = 6.0
    tank_pressure_bar: float = 2.5  # absolute pressure at the suction (flooded suction from a tank)
    suction_loss_bar: float = 0.2  # suction line + strainer loss at BEP flow
    bep_efficiency: float = 0.75
    voltage_v: float = 400.0
    power_factor: float = 0.85
    motor_efficiency: float = 0.92
    no_load_current_a: float = 6.0
    base_vibration_mm_s: float = 1.8  # at rated speed, on the BEP
    ambient_c: float = 25.0
    ambient_swing_c: float = 2.0  # daily swing of the ambient temperature (amplitude)
    bearing_rise_c: float = 30.0  # bearing temperature above ambient at rated speed and load
    thermal_tau_s: float = 240.0
    min_speed_ratio: float = 0.7
    max_speed_ratio: float = 1.0
    dwell_s: tuple[float, float] = (60.0, 600.0)  # how long the drive holds one setpoint
    ramp_per_s: float = 0.02  # drive ramp, fraction of rated speed per second
    valve_sigma: float = 0.01  # how fast the downstream valve wanders (0: fixed at its nominal opening)

    @classmethod
    def varied(cls, name: str, rng: np.random.Generator) -> PumpSpec:
        """A pump of the default design with the scatter of real installations (sizes within about 10 %)."""
        base = cls(name)

        def jitter(value: float, spread: float = 0.1) -> float:
            return float(value * rng.uniform(1.0 - spread, 1.0 + spread))

        return replace(base, bep_flow_m3h=jitter(base.bep_flow_m3h),
                       shutoff_head_bar=jitter(base.shutoff_head_bar),
                       tank_pressure_bar=jitter(base.tank_pressure_bar, 0.05),
                       base_vibration_mm_s=jitter(base.base_vibration_mm_s, 0.2),
                       ambient_c=jitter(base.ambient_c, 0.1), bearing_rise_c=jitter(base.bearing_rise_c))


@dataclass(frozen=True)
class Sample:
    """One reading of every channel of one asset. `faults` are the fault kinds active on it (ground truth)."""

    ts: float
    asset: str
    values: dict[str, float]
    faults: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        """1 while a fault is active on the asset, else 0 (the training CSV's label column)."""
        return 1 if self.faults else 0


class _Pump:
    """The state of one pump between samples."""

    def __init__(self, spec: PumpSpec, seed: int, faults: Sequence[Fault], noise_scale: float) -> None:
        key = zlib.crc32(spec.name.encode())
        self.spec = spec
        self.ops = np.random.default_rng(np.random.SeedSequence([seed, key, 1]))
        self.noise = np.random.default_rng(np.random.SeedSequence([seed, key, 2]))
        self.faults = [(f, np.random.default_rng(np.random.SeedSequence([seed, key, 3, i])))
                       for i, f in enumerate(faults)]
        self.noise_sigma = np.array([NOISE[c] * noise_scale for c in CHANNELS])
        self.ambient_phase = float(self.ops.uniform(0.0, 2.0 * math.pi))
        self.setpoint = float(self.ops.uniform(spec.min_speed_ratio, spec.max_speed_ratio))
        self.next_change_s = float(self.ops.uniform(*spec.dwell_s))
        self.speed = self.setpoint
        self.valve = 1.0
        qb, h0 = spec.bep_flow_m3h, spec.shutoff_head_bar
        self.k_pump = 0.2 * h0 / qb**2  # the pump curve droops 20 % from shut-off to the BEP
        self.k_suction = spec.suction_loss_bar / qb**2
        self.k_valve = (0.8 * h0 - spec.suction_loss_bar) / qb**2  # nominal valve puts the BEP on the curve
        self.rated_power_kw = qb * 0.8 * h0 / 36.0 / spec.bep_efficiency
        self.temperature: float | None = None
        self.last: dict[str, float] = {}
        self.frozen: dict[str, float] = {}

    def step(self, elapsed_s: float, dt: float) -> tuple[dict[str, float], tuple[str, ...]]:
        spec = self.spec
        active = [f for f, _ in self.faults if f.active(elapsed_s)]
        effects = fault_effects(self.faults, elapsed_s)
        # Operating point: the drive ramps to its setpoint, the valve wanders (Ornstein-Uhlenbeck).
        if elapsed_s >= self.next_change_s:
            self.setpoint = float(self.ops.uniform(spec.min_speed_ratio, spec.max_speed_ratio))
            self.next_change_s = elapsed_s + float(self.ops.uniform(*spec.dwell_s))
        limit = spec.ramp_per_s * dt
        self.speed += min(limit, max(-limit, self.setpoint - self.speed))
        wander = float(self.ops.normal())  # drawn even when valve_sigma is 0: the stream stays the same
        self.valve += 0.01 * (1.0 - self.valve) * dt + spec.valve_sigma * math.sqrt(dt) * wander
        self.valve = min(1.3, max(0.75, self.valve))

        s = self.speed
        h0 = spec.shutoff_head_bar * effects.head_factor
        k_suction = self.k_suction * effects.filter_factor
        flow = s * math.sqrt(h0 / (self.k_pump + self.k_valve * self.valve + k_suction))
        head = h0 * s**2 - self.k_pump * flow**2
        suction = spec.tank_pressure_bar - effects.tank_drop - k_suction * flow**2
        relative_flow = flow / (s * spec.bep_flow_m3h)  # 1 on the best-efficiency point at this speed
        efficiency = max(0.3, spec.bep_efficiency * (1.0 - 0.5 * (relative_flow - 1.0) ** 2))
        shaft_kw = flow * head / 36.0 / efficiency  # m3/h * bar / 36 = kW
        current = spec.no_load_current_a + shaft_kw * 1000.0 / (
            _SQRT3 * spec.voltage_v * spec.power_factor * spec.motor_efficiency)
        # Imbalance grows with speed squared; running off the BEP adds recirculation vibration.
        vibration = (spec.base_vibration_mm_s * (s**2 + 1.5 * (relative_flow - 1.0) ** 2)
                     + effects.vibration_add)
        day_angle = 2.0 * math.pi * elapsed_s / 86400.0 + self.ambient_phase
        ambient = spec.ambient_c + spec.ambient_swing_c * math.sin(day_angle)
        steady = (ambient + spec.bearing_rise_c * s**1.5 * (0.7 + 0.3 * shaft_kw / self.rated_power_kw)
                  + effects.heat_add)
        if self.temperature is None:
            self.temperature = steady  # start in thermal equilibrium
        self.temperature += (steady - self.temperature) * (1.0 - math.exp(-dt / spec.thermal_tau_s))

        true = (s * spec.rated_speed_rpm, flow, suction, suction + head, current, vibration, self.temperature)
        # Drawn every step whatever the faults, so faulted and healthy runs share their noise.
        noise = (self.noise.normal(size=len(CHANNELS)) * self.noise_sigma).tolist()
        reading = {c: v + n for c, v, n in zip(CHANNELS, true, noise, strict=True)}
        reading["vibration_rms"] = max(0.0, reading["vibration_rms"])
        for channel, offset in effects.drift.items():
            reading[channel] += offset
        for channel in list(self.frozen):
            if channel not in effects.stuck:
                del self.frozen[channel]
        for channel in effects.stuck:
            frozen = self.frozen.setdefault(channel, self.last.get(channel, reading[channel]))
            reading[channel] = frozen
        self.last = reading
        return reading, tuple(f.kind for f in active)


class Plant:
    """Several pumps sampled together every `sample_period_s` seconds.

    `assets` are names (each gets a pump of the default design, scattered by its name) or `PumpSpec`s.
    `faults` is the schedule, in seconds from the first sample. `noise_scale` multiplies every sensor's noise
    (0 gives the noise-free physics). Deterministic for a seed.
    """

    def __init__(self, assets: Sequence[str | PumpSpec], seed: int = 0, sample_period_s: float = 1.0,
                 faults: FaultSchedule | None = None, noise_scale: float = 1.0) -> None:
        if not assets:
            raise ValueError("a plant needs at least one asset")
        if not (math.isfinite(sample_period_s) and sample_period_s > 0):
            raise ValueError(f"sample_period_s must be a positive number, got {sample_period_s}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        specs = []
        for asset in assets:
            if isinstance(asset, PumpSpec):
                specs.append(asset)
            else:
                # The nameplate depends on the name only: "pump-1" is the same machine whatever the seed, so
                # a model trained on one seed's healthy run meets the same pumps in another seed's live run.
                rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(asset.encode()), 0]))
                specs.append(PumpSpec.varied(asset, rng))
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"asset names must be unique, got {names}")
        self.faults = faults or FaultSchedule()
        self.faults.check_assets(names)
        self.seed = seed
        self.sample_period_s = float(sample_period_s)
        self.specs = tuple(specs)
        self.assets = tuple(names)
        self.channels = CHANNELS
        self._pumps = [_Pump(spec, seed, self.faults.for_asset(spec.name), noise_scale) for spec in specs]
        self._step = 0
        self.origin_ts: float | None = None  # timestamp of the first sample, set by the first call
        self._next_ts: float | None = None

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since the first sample (the time base of the fault schedule)."""
        return self._step * self.sample_period_s

    def ticks(self, start_ts: float | None = None, n: int | None = None) -> Iterator[list[Sample]]:
        """One list of samples (one per asset, in asset order) per time step; `n=None` runs forever.

        `start_ts` is the timestamp of the first sample yielded; by default it continues from the last call.
        """
        if start_ts is None:
            if self._next_ts is None:
                raise ValueError("the first call needs start_ts")
            start_ts = self._next_ts
        if self.origin_ts is None:
            self.origin_ts = start_ts
        count = 0
        while n is None or count < n:
            ts = start_ts + count * self.sample_period_s
            elapsed = self.elapsed_s
            tick = []
            for pump in self._pumps:
                values, active = pump.step(elapsed, self.sample_period_s)
                tick.append(Sample(ts, pump.spec.name, values, active))
            self._step += 1
            count += 1
            self._next_ts = ts + self.sample_period_s
            yield tick

    def samples(self, start_ts: float | None = None, n: int | None = None) -> Iterator[Sample]:
        """The samples of `ticks(start_ts, n)`, flattened (asset by asset within each time step)."""
        for tick in self.ticks(start_ts, n):
            yield from tick

    def arrays(self, start_ts: float, n: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`n` steps as arrays per asset: `(timestamps [n], values [n, channels], labels [n])`."""
        ts = np.empty(n)
        values = {a: np.empty((n, len(CHANNELS))) for a in self.assets}
        labels = {a: np.zeros(n, dtype=np.int8) for a in self.assets}
        for i, tick in enumerate(self.ticks(start_ts, n)):
            ts[i] = tick[0].ts
            for sample in tick:
                values[sample.asset][i] = [sample.values[c] for c in CHANNELS]
                labels[sample.asset][i] = sample.label
        return {a: (ts.copy(), values[a], labels[a]) for a in self.assets}
