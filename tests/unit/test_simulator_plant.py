"""The pump plant: reproducible for a seed, coupled by the affinity laws, thermal lag, healthy = healthy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.simulator import CHANNELS, FaultSchedule, Plant, PumpSpec, write_csv

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def fixed_valve_pump(name: str = "p", **changes: object) -> PumpSpec:
    """A pump whose valve stays at its nominal opening, so only the speed moves the operating point."""
    settings: dict[str, object] = {"valve_sigma": 0.0, "ambient_swing_c": 0.0, "dwell_s": (20.0, 60.0)}
    settings.update(changes)
    return PumpSpec(name, **settings)  # type: ignore[arg-type]


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    def run(seed: int, out: Path) -> dict[str, bytes]:
        assets = ["pump-1", "pump-2"]
        plant = Plant(assets, seed=seed, sample_period_s=0.5,
                      faults=FaultSchedule.generate(assets, duration_s=300, seed=seed))
        paths = write_csv(plant.samples(START, 600), out, assets)
        return {asset: path.read_bytes() for asset, path in paths.items()}

    first, again, other = run(7, tmp_path / "a"), run(7, tmp_path / "b"), run(8, tmp_path / "c")
    assert first == again
    assert first["pump-1"] != other["pump-1"]
    assert first["pump-1"] != first["pump-2"]  # assets are not copies of each other


def test_chunked_calls_continue_the_same_series() -> None:
    whole = list(Plant(["a", "b"], seed=3).samples(START, 50))
    plant = Plant(["a", "b"], seed=3)
    parts = list(plant.samples(START, 20)) + list(plant.samples(None, 30))
    assert parts == whole
    assert [s.ts for s in whole[::2]] == [START + i for i in range(50)]
    assert plant.origin_ts == START


def test_affinity_laws_hold_at_a_fixed_valve() -> None:
    """flow ~ speed, pump head ~ speed^2, shaft power (current above no-load) ~ speed^3."""
    spec = fixed_valve_pump()
    plant = Plant([spec], seed=1, noise_scale=0.0)
    _, values, _ = plant.arrays(START, 2000)["p"]
    column = {c: values[:, i] for i, c in enumerate(CHANNELS)}
    s = column["speed"] / spec.rated_speed_rpm
    assert s.max() - s.min() > 0.15  # the operating point really moved
    head = column["discharge_pressure"] - column["suction_pressure"]
    for ratio in (column["flow"] / s, head / s**2, (column["motor_current"] - spec.no_load_current_a) / s**3):
        assert np.ptp(ratio) / np.mean(ratio) < 1e-9


def test_flow_rises_with_speed_under_noise_and_valve_wander() -> None:
    plant = Plant(["pump-1"], seed=5, noise_scale=1.0)
    _, values, _ = plant.arrays(START, 3000)["pump-1"]
    speed, flow = values[:, CHANNELS.index("speed")], values[:, CHANNELS.index("flow")]
    slope = np.polyfit(np.log(speed), np.log(flow), 1)[0]
    assert 0.7 < slope < 1.3  # affinity: exponent 1, blurred by the wandering valve


def test_bearing_temperature_lags_a_speed_step() -> None:
    spec = fixed_valve_pump(dwell_s=(1500.0, 1500.0), thermal_tau_s=200.0)
    plant = Plant([spec], seed=2, noise_scale=0.0)
    _, values, _ = plant.arrays(START, 3000)["p"]
    speed, temp = values[:, CHANNELS.index("speed")], values[:, CHANNELS.index("bearing_temp")]
    step = 1500  # the first setpoint change
    assert speed[step - 1] == speed[0]
    assert abs(speed[step + 60] - speed[step - 1]) > 50  # the drive moved to another setpoint
    total = temp[step + 1400] - temp[step - 1]  # 7 time constants later: settled
    assert abs(total) > 1.0
    assert abs(temp[step + 20] - temp[step - 1]) < 0.25 * abs(total)  # not there yet after 20 s
    assert abs(temp[step + 1000] - temp[step - 1]) > 0.95 * abs(total)


def test_healthy_plant_has_no_faults_and_labels_zero() -> None:
    plant = Plant(["a", "b", "c"], seed=11)
    samples = list(plant.samples(START, 500))
    assert len(samples) == 1500
    assert all(s.faults == () and s.label == 0 for s in samples)
    assert all(set(s.values) == set(CHANNELS) for s in samples)
    assert all(np.isfinite(list(s.values.values())).all() for s in samples)


def test_readings_are_in_physical_ranges() -> None:
    _, values, _ = Plant(["pump-1"], seed=4).arrays(START, 2000)["pump-1"]
    low = dict(zip(CHANNELS, values.min(axis=0), strict=True))
    high = dict(zip(CHANNELS, values.max(axis=0), strict=True))
    assert low["speed"] > 1800
    assert high["speed"] < 3100
    assert 0.5 < low["suction_pressure"] < high["discharge_pressure"] < 8.0
    assert low["vibration_rms"] > 0
    assert high["vibration_rms"] < 4.0
    assert low["bearing_temp"] > 20
    assert high["bearing_temp"] < 80


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"assets": []}, "at least one asset"),
    ({"assets": ["a", "a"]}, "unique"),
    ({"assets": ["a"], "sample_period_s": 0.0}, "sample_period_s"),
    ({"assets": ["a"], "noise_scale": -1.0}, "noise_scale"),
])
def test_bad_plant_arguments_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plant(**kwargs)  # type: ignore[arg-type]


def test_first_call_needs_a_start_time() -> None:
    with pytest.raises(ValueError, match="start_ts"):
        next(Plant(["a"]).samples(None, 1))


def test_a_pump_is_the_same_machine_under_every_seed() -> None:
    """Train on one seed's healthy run, run live on another: same nameplates, different operation."""
    one, two = Plant(["pump-1", "pump-2"], seed=1), Plant(["pump-1", "pump-2"], seed=2)
    assert one.specs == two.specs
    assert one.specs[0] != one.specs[1]
    assert next(one.samples(START, 1)).values != next(two.samples(START, 1)).values
