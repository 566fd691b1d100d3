"""Faults: the ground truth matches what the data shows; schedules parse strictly, generate reproducibly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from edge_agent.simulator import CHANNELS, FAULT_KINDS, Fault, FaultSchedule, Plant, read_ground_truth
from edge_agent.simulator.faults import DRIFT_SPAN, KIND_CHANNELS, ground_truth_rows, write_ground_truth
from edge_agent.simulator.plant import NOISE

START = 1_767_225_600.0
STEPS = 900


def twin_runs(fault: Fault, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(faulted values, healthy values, faulted labels) of one seed: same operating point and noise."""
    faulted = Plant([fault.asset], seed=seed, faults=FaultSchedule([fault])).arrays(START, STEPS)[fault.asset]
    healthy = Plant([fault.asset], seed=seed).arrays(START, STEPS)[fault.asset]
    return faulted[1], healthy[1], faulted[2]


FAULTS = [
    Fault("pump-1", "bearing_wear", 300.0, 700.0),
    Fault("pump-1", "cavitation", 300.0, 500.0),
    Fault("pump-1", "blocked_filter", 300.0, 700.0),
    Fault("pump-1", "stuck_sensor", 300.0, 600.0, channel="flow"),
    Fault("pump-1", "drifting_sensor", 300.0, 700.0, channel="discharge_pressure"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.kind for f in FAULTS])
def test_faulted_channels_deviate_during_the_fault_and_not_before(fault: Fault) -> None:
    faulted, healthy, labels = twin_runs(fault)
    start, end = int(fault.start_s), int(fault.end_s)
    assert np.array_equal(faulted[:start], healthy[:start])  # nothing leaks before the start
    assert labels[:start].sum() == 0
    assert labels[start:end].all()
    assert labels[end:].sum() == 0
    late = slice(start + (end - start) // 2, end)  # slow faults have grown by the second half
    for channel in fault.channels:
        i = CHANNELS.index(channel)
        if fault.kind == "stuck_sensor":
            assert np.ptp(faulted[start:end, i]) == 0.0  # frozen ...
            assert np.ptp(healthy[start:end, i]) > 4 * NOISE[channel]  # ... where the healthy sensor moves
            assert faulted[end, i] == healthy[end, i]  # and live again after the repair
        else:
            shift = np.abs(np.mean(faulted[late, i] - healthy[late, i]))
            assert shift > 5 * NOISE[channel], f"{fault.kind}: {channel} moved only {shift:.4g}"


def test_drift_reaches_its_span_and_sensor_faults_touch_one_channel() -> None:
    fault = FAULTS[4]
    faulted, healthy, _ = twin_runs(fault)
    i = CHANNELS.index("discharge_pressure")
    diff = faulted[:, i] - healthy[:, i]
    assert diff[699] == pytest.approx(DRIFT_SPAN["discharge_pressure"] * 399 / 400)
    assert np.all(np.diff(diff[300:700]) > 0)  # a ramp, not a step
    others = [j for j in range(len(CHANNELS)) if j != i]
    assert np.array_equal(faulted[:, others], healthy[:, others])


def test_cavitation_makes_vibration_burst() -> None:
    faulted, healthy, _ = twin_runs(FAULTS[1])
    i = CHANNELS.index("vibration_rms")
    assert np.std(faulted[320:500, i]) > 5 * np.std(healthy[320:500, i])


def test_generated_schedule_is_reproducible_and_non_overlapping() -> None:
    assets = ["a", "b", "c"]
    first = FaultSchedule.generate(assets, 3600, seed=9)
    assert first.to_dict() == FaultSchedule.generate(assets, 3600, seed=9).to_dict()
    assert first.to_dict() != FaultSchedule.generate(assets, 3600, seed=10).to_dict()
    assert sorted(f.kind for f in first) == sorted(FAULT_KINDS)
    faults = list(first)
    assert faults[0].start_s >= 0.2 * 3600
    assert faults[-1].end_s <= 3600
    assert all(a.end_s < b.start_s for a, b in itertools.pairwise(faults))
    assert {f.asset for f in faults} == set(assets)
    many = FaultSchedule.generate(assets, 7200, seed=1, count=12, kinds=["cavitation", "stuck_sensor"],
                                  healthy_lead_s=600)
    assert len(many) == 12
    assert {f.kind for f in many} == {"cavitation", "stuck_sensor"}
    assert min(f.start_s for f in many) >= 600


def test_generated_faults_show_in_the_data_they_name() -> None:
    """Every generated fault moves its ground-truth channels, compared with a twin run without that fault."""
    assets = ["pump-1", "pump-2"]
    schedule = FaultSchedule.generate(assets, 2400, seed=4)
    period = 2.0
    faulted = Plant(assets, seed=4, sample_period_s=period, faults=schedule).arrays(START, 1200)
    for fault in schedule:
        others = FaultSchedule(f for f in schedule if f is not fault)
        without = Plant(assets, seed=4, sample_period_s=period, faults=others).arrays(START, 1200)
        start, end = int(np.ceil(fault.start_s / period)), int(np.ceil(fault.end_s / period))
        data, base = faulted[fault.asset][1], without[fault.asset][1]
        assert np.array_equal(data[:start], base[:start])
        for channel in fault.channels:
            i = CHANNELS.index(channel)
            moved = np.max(np.abs(data[start:end, i] - base[start:end, i])) > 5 * NOISE[channel]
            frozen = np.ptp(data[start:end, i]) == 0.0
            assert moved or frozen, f"{fault.kind} on {fault.asset}: {channel} shows nothing"


def test_ground_truth_file_round_trips(tmp_path: Path) -> None:
    schedule = FaultSchedule([*FAULTS[:2], Fault("pump-2", "stuck_sensor", 10.0, 20.5, 1.0, "flow")])
    path = write_ground_truth(tmp_path / "truth.jsonl", schedule, START)
    rows = read_ground_truth(path)
    assert rows == ground_truth_rows(schedule, START)
    by_kind = {row["kind"]: row for row in rows}
    assert by_kind["stuck_sensor"]["channels"] == ["flow"]
    assert by_kind["stuck_sensor"]["start_ts"] == START + 10.0
    assert by_kind["stuck_sensor"]["end"] == "2026-01-01T00:00:20.500Z"
    assert by_kind["cavitation"]["channels"] == list(KIND_CHANNELS["cavitation"])
    csv_path = write_ground_truth(tmp_path / "truth.csv", schedule, START)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("asset,kind,channels,start_ts,end_ts")
    assert len(lines) == 4
    assert "suction_pressure;vibration_rms;flow" in csv_path.read_text()


def test_schedule_loads_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "faults.toml"
    toml.write_text('[[fault]]\nasset = "pump-1"\nkind = "drifting_sensor"\nstart_s = 60\nend_s = 120\n'
                    'channel = "flow"\nmagnitude = 2\n\n[[fault]]\nasset = "pump-2"\nkind = "cavitation"\n'
                    'start_s = 10\nend_s = 30.5\n')
    loaded = FaultSchedule.load(toml)
    assert [f.kind for f in loaded] == ["cavitation", "drifting_sensor"]  # ordered by start
    assert loaded.faults[1] == Fault("pump-1", "drifting_sensor", 60.0, 120.0, 2.0, "flow")
    js = tmp_path / "faults.json"
    js.write_text(json.dumps(loaded.to_dict()))
    assert FaultSchedule.load(js).faults == loaded.faults
    js.write_text(json.dumps([f.to_dict() for f in loaded]))
    assert FaultSchedule.load(js).faults == loaded.faults


@pytest.mark.parametrize(("text", "message"), [
    ('[[fault]]\nasset = "p"\nkind = "rust"\nstart_s = 1\nend_s = 2\n',
     r"fault -> 0 -> kind: must be one of"),
    ('[[fault]]\nasset = "p"\nkind = "cavitation"\nstart_s = 1\nend_s = 2\nchanel = "x"\n',
     r"fault -> 0 -> chanel: unknown key"),
    ('[[fault]]\nasset = "p"\nkind = "cavitation"\nstart_s = 5\nend_s = 2\n', r"fault -> 0: .*end_s"),
    ('[[fault]]\nasset = "p"\nkind = "stuck_sensor"\nstart_s = 1\nend_s = 2\n',
     r"fault -> 0: .*channel must be"),
    ('[[fault]]\nasset = "p"\nkind = "cavitation"\nstart_s = 1\nend_s = 2\nchannel = "flow"\n',
     r"sensor faults only"),
    ('[[fault]]\nasset = "p"\nkind = "cavitation"\nstart_s = "soon"\nend_s = 2\n',
     r"start_s: expected a number"),
    ('[[fault]]\nasset = "p"\nkind = "cavitation"\nend_s = 2\n', r"start_s: is required"),
    ("[[fault]\n", r"not valid TOML"),
])
def test_bad_schedules_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        FaultSchedule.load(path)
    assert str(path) in str(info.value)


def test_missing_schedule_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read fault schedule"):
        FaultSchedule.load(tmp_path / "nope.toml")


def test_fault_on_an_asset_that_is_not_simulated_is_refused() -> None:
    with pytest.raises(ValueError, match=r"names asset 'pump-9', which is not simulated \(assets: pump-1\)"):
        Plant(["pump-1"], faults=FaultSchedule([Fault("pump-9", "cavitation", 1.0, 2.0)]))


def test_generate_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultSchedule.generate(["a"], 100, seed=0, kinds=["rust"])
    with pytest.raises(ValueError, match="no room"):
        FaultSchedule.generate(["a"], 100, seed=0, healthy_lead_s=100)
    with pytest.raises(ValueError, match="without assets"):
        FaultSchedule.generate([], 100, seed=0)
