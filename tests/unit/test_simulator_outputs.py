"""Output formats: the agent's line parser reads every simulated line back to the same values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.simulator import (
    CHANNELS,
    Fault,
    FaultSchedule,
    MqttTarget,
    Pacer,
    Plant,
    format_line,
    outputs,
    write_csv,
)
from edge_agent.simulator.outputs import DECIMALS, MqttSink, SerialSink, csv_header, rounded

lineformats = pytest.importorskip("edge_agent.sources.lineformats")

START = 1_767_225_600.0


def samples(n: int = 5, assets: tuple[str, ...] = ("pump-1",)) -> list:
    return list(Plant(list(assets), seed=1).samples(START, n))


@pytest.mark.parametrize("fmt", ["csv", "kv", "json"])
def test_agent_line_parser_reads_simulated_lines(fmt: str) -> None:
    parser = lineformats.LineParser(lineformats.LineFormat(
        kind=fmt, fields={c: c for c in CHANNELS}, timestamp_field="ts"))
    if fmt == "csv":
        assert parser.parse(csv_header()) is None  # the header sets the column order
    for sample in samples():
        ts, values = parser.parse(format_line(sample, fmt))
        assert ts == pytest.approx(sample.ts)
        assert values == pytest.approx(rounded(sample), abs=1e-9)
        assert values == pytest.approx(sample.values, abs=10.0 ** -min(DECIMALS.values()))


def test_unknown_line_format_is_named() -> None:
    with pytest.raises(ValueError, match="unknown line format 'xml'"):
        format_line(samples(1)[0], "xml")


def test_csv_files_per_asset_with_label(tmp_path: Path) -> None:
    fault = Fault("pump-2", "cavitation", 3.0, 6.0)
    plant = Plant(["pump-1", "pump-2"], seed=2, faults=FaultSchedule([fault]))
    paths = write_csv(plant.samples(START, 10), tmp_path)
    assert set(paths) == {"pump-1", "pump-2"}
    with paths["pump-2"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["timestamp", *CHANNELS, "label"]
    assert [int(r["label"]) for r in rows] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert [float(r["timestamp"]) for r in rows] == [START + i for i in range(10)]
    with paths["pump-1"].open(newline="") as handle:
        assert {r["label"] for r in csv.DictReader(handle)} == {"0"}


def test_serial_csv_repeats_its_header(capsys: pytest.CaptureFixture[str]) -> None:
    plant = Plant(["pump-1", "pump-2"], seed=1)
    lines = outputs.write_serial(plant.ticks(START, 7), "-", "pump-2", fmt="csv", header_every=3)
    out = capsys.readouterr().out.splitlines()
    assert lines == 7
    assert [i for i, line in enumerate(out) if line == csv_header()] == [0, 4, 8]
    assert len(out) == 10


def test_serial_sink_refuses_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown serial line format 'xml'"):
        SerialSink("-", "pump-1", fmt="xml")


def test_serial_sink_names_a_missing_device(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=f"cannot open serial port {tmp_path}/ttyNONE"):
        SerialSink(str(tmp_path / "ttyNONE"), "pump-1")


def test_mqtt_topics_and_payload_checks() -> None:
    assert MqttTarget().topic("pump-1") == "plant/pump-1/telemetry"
    assert MqttTarget().topic("pump-1", "flow") == "plant/pump-1/flow"
    assert MqttTarget(topic_template="site/{asset}/{channel}").topic("p", "flow") == "site/p/flow"
    with pytest.raises(ValueError, match="needs \\{channel\\}"):
        MqttSink(MqttTarget(topic_template="x/{asset}", payload="number"))
    with pytest.raises(ValueError, match="unknown MQTT payload"):
        MqttSink(MqttTarget(payload="xml"))


def test_json_payload_is_stable_bytes() -> None:
    sample = samples(1)[0]
    payload = format_line(sample, "json")
    assert json.loads(payload) == {"ts": START, **rounded(sample)}
    assert payload == format_line(sample, "json")


def test_pacer_deadlines_do_not_accumulate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(outputs.time, "monotonic", lambda: clock[0])
    pacer = Pacer(period_s=1.0, speed=4.0)
    assert pacer.delay(0) == 0.0
    clock[0] = 100.1  # emitting step 0 took 0.1 s
    assert pacer.delay(1) == pytest.approx(0.15)
    clock[0] = 101.0  # running late: no waiting, and no drift for later steps
    assert pacer.delay(2) == 0.0
    assert pacer.delay(8) == pytest.approx(1.0)
    assert Pacer(1.0, 0.0).delay(1000) == 0.0
    with pytest.raises(ValueError, match="speed"):
        Pacer(1.0, -1.0)


def test_trainer_csv_reader_reads_the_simulated_files(tmp_path: Path) -> None:
    csv_reader = pytest.importorskip("trainer.data.csv_reader")
    fault = Fault("pump-1", "bearing_wear", 20.0, 40.0)
    plant = Plant(["pump-1"], seed=3, faults=FaultSchedule([fault]))
    data = list(plant.samples(START, 60))
    paths = write_csv(data, tmp_path)
    options = csv_reader.CsvOptions(timestamp_column="timestamp", channels=CHANNELS, label_column="label")
    (series,) = csv_reader.read_csv_file(paths["pump-1"], options)
    assert list(series.channels) == list(CHANNELS)
    assert series.timestamps.tolist() == [s.ts for s in data]
    assert series.labels.tolist() == [s.label for s in data]
    assert series.labels.sum() == 20
    expected = [[rounded(s)[c] for c in CHANNELS] for s in data]
    np.testing.assert_allclose(series.values, expected, rtol=1e-6)
