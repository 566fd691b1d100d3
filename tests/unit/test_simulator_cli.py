"""`edge-agent simulate` to files: reproducible bytes, healthy mode, ground truth, clear errors."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

from edge_agent.simulator import read_ground_truth
from edge_agent.simulator.cli import main, parse_host_port, parse_start, register


def run(tmp_path: Path, name: str, *extra: str) -> tuple[dict[str, bytes], list[dict]]:
    out = tmp_path / name
    code = main(["--duration", "600", "--sample-rate", "2", "--assets", "a,b", "--seed", "5",
                 "--csv", str(out / "csv"), "--ground-truth", str(out / "truth.jsonl"), *extra])
    assert code == 0
    files = {p.name: p.read_bytes() for p in sorted((out / "csv").iterdir())}
    return files, read_ground_truth(out / "truth.jsonl")


def labelled_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(data.decode().splitlines()))


def test_same_command_gives_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, truth = run(tmp_path, "one")
    again, truth_again = run(tmp_path, "two")
    assert first == again
    assert truth == truth_again
    assert set(first) == {"a.csv", "b.csv"}
    assert len(labelled_rows(first["a.csv"])) == 1200  # 600 s at 2 Hz
    assert len(truth) == 5  # one fault of each kind by default
    assert "simulated 1200 time steps x 2 assets, 5 faults" in capsys.readouterr().err


def test_labels_match_the_ground_truth(tmp_path: Path) -> None:
    files, truth = run(tmp_path, "gt")
    for asset in ("a", "b"):
        intervals = [(t["start_ts"], t["end_ts"]) for t in truth if t["asset"] == asset]
        for row in labelled_rows(files[f"{asset}.csv"]):
            ts = float(row["timestamp"])
            assert int(row["label"]) == int(any(start <= ts < end for start, end in intervals))


def test_healthy_mode_writes_no_faults(tmp_path: Path) -> None:
    files, truth = run(tmp_path, "healthy", "--healthy")
    assert truth == []
    assert all(row["label"] == "0" for data in files.values() for row in labelled_rows(data))


def test_schedule_file_is_used(tmp_path: Path) -> None:
    schedule = tmp_path / "faults.toml"
    schedule.write_text('[[fault]]\nasset = "b"\nkind = "stuck_sensor"\nchannel = "flow"\nstart_s = 100\n'
                        'end_s = 200\n')
    files, truth = run(tmp_path, "file", "--faults", str(schedule), "--start", "2026-03-01T00:00:00Z")
    assert [(t["asset"], t["kind"], t["channels"], t["start"]) for t in truth] == [
        ("b", "stuck_sensor", ["flow"], "2026-03-01T00:01:40.000Z")]
    rows = labelled_rows(files["b.csv"])
    stuck = [r["flow"] for r in rows if r["label"] == "1"]
    assert len(stuck) == 200
    assert len(set(stuck)) == 1


@pytest.mark.parametrize(("args", "message"), [
    ([], "nothing to do"),
    (["--csv", "x", "--assets", "a/b"], "--assets 'a/b'"),
    (["--csv", "x", "--faults", "missing.toml"], "missing.toml: <top level>: cannot read fault schedule"),
    (["--csv", "x", "--sample-rate", "0"], "--sample-rate must be a positive number"),
    (["--csv", "x", "--fault-kinds", "rust"], "unknown fault kind"),
    (["--csv", "x", "--start", "yesterday"], "--start 'yesterday'"),
    (["--serial", "-", "--serial-asset", "pump-9", "--duration", "1"],
     "--serial-asset 'pump-9' is not simulated"),
])
def test_errors_exit_1_with_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str], args: list[str],
                                      message: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_start_and_broker_parsing() -> None:
    assert parse_start("2026-01-01T00:00:00Z", live=False) == 1_767_225_600.0
    assert parse_start("2026-01-01T00:00:00", live=False) == 1_767_225_600.0
    assert parse_start("1767225600.5", live=True) == 1_767_225_600.5
    assert parse_start(None, live=False) == 1_767_225_600.0
    assert parse_host_port("broker.local") == ("broker.local", 1883)
    assert parse_host_port("10.0.0.2:8883") == ("10.0.0.2", 8883)
    with pytest.raises(ValueError, match="port"):
        parse_host_port("host:99999")


def test_registers_as_a_subcommand() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--healthy", "--csv", "d", "--speed", "10"])
    assert args.command == "simulate"
    assert args.healthy
    assert args.speed == 10.0
    assert callable(args.func)
