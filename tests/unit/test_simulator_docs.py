"""docs/simulator.md stays true: its schedule example loads, its agent and trainer snippets parse."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge_agent.compat import tomllib
from edge_agent.configtools import Section
from edge_agent.simulator import CHANNELS, FaultSchedule, Plant

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def toml_block(marker: str | None = None, containing: str | None = None) -> dict[str, Any]:
    text = DOC.read_text()
    blocks = re.findall(r"(<!-- ([\w-]+)[^>]*-->\n)?```toml\n(.*?)```", text, flags=re.S)
    for _, name, body in blocks:
        if (marker is not None and name == marker) or (containing is not None and containing in body):
            return tomllib.loads(body)
    raise AssertionError(f"no toml block {marker or containing!r} in {DOC}")


def test_schedule_example_loads_and_runs() -> None:
    schedule = FaultSchedule.from_dict(toml_block("schedule-example"))
    assert [(f.asset, f.kind) for f in schedule] == [("pump-2", "bearing_wear"), ("pump-1", "stuck_sensor")]
    plant = Plant(["pump-1", "pump-2", "pump-3"], seed=0, faults=schedule)
    labels = {s.asset: 0 for s in plant.samples(0.0, 1)}
    for sample in plant.samples(None, 1500):
        labels[sample.asset] += sample.label
    assert labels == {"pump-1": 1100 - 900, "pump-2": 1500 - 600, "pump-3": 0}  # samples at 1..1500 s


def test_agent_source_examples_parse_with_the_agent_configs(tmp_path: Path) -> None:
    sources = pytest.importorskip("edge_agent.sources")
    block = toml_block("agent-sources-example")["sources"]
    assert set(block) == {"sim-mqtt", "sim-serial", "sim-replay"}
    replay_file = tmp_path / "data" / "live" / "pump-2.csv"
    replay_file.parent.mkdir(parents=True)
    replay_file.write_text("timestamp," + ",".join(CHANNELS) + ",label\n")
    for name, settings in block.items():
        section = Section(settings, f"sources -> {name}")
        config_class, _ = sources.SOURCES[section.choice("type", sources.SOURCES)]
        config = config_class.from_section(section, tmp_path)
        section.finish()
        fields = set(config.field_names())
        assert fields in ({*CHANNELS}, {f"{a}.{c}" for a in ("pump-1", "pump-2", "pump-3") for c in CHANNELS})


def test_trainer_csv_example_parses() -> None:
    csv_reader = pytest.importorskip("trainer.data.csv_reader")
    options = csv_reader.CsvOptions.from_options(toml_block(containing='source = "csv"')["data"]["csv"])
    assert options.channels == CHANNELS
    assert options.timestamp_column == "timestamp"
