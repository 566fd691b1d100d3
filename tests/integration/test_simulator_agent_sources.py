"""The agent's own sources (MQTT, serial, replay), configured as a user would, read the simulator's output."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.configtools import Section
from edge_agent.simulator import (
    CHANNELS,
    MqttTarget,
    Pacer,
    Plant,
    Sample,
    publish_mqtt,
    write_csv,
    write_serial,
)
from edge_agent.simulator.outputs import rounded
from tests.support.broker import MosquittoBroker
from tests.support.serial_ports import SocatSerialDevice

sources = pytest.importorskip("edge_agent.sources")

pytestmark = pytest.mark.integration
START = 1_767_225_600.0
ASSETS = ["pump-1", "pump-2"]


def build(kind: str, settings: dict[str, Any], base_dir: Path) -> Any:
    config_class, _ = sources.SOURCES[kind]
    section = Section(settings, "sources -> sim")
    config = config_class.from_section(section, base_dir)
    section.finish()
    return sources.build_source("sim", kind, config)


async def collect(source: Any, count: int, timeout: float = 15.0) -> list[Any]:
    readings: list[Any] = []

    async def read() -> None:
        async for reading in source:
            readings.append(reading)
            if len(readings) >= count:
                return

    await asyncio.wait_for(read(), timeout)
    return readings


def expected(n: int) -> dict[tuple[str, float], dict[str, float]]:
    return {(s.asset, s.ts): rounded(s) for s in Plant(ASSETS, seed=8).samples(START, n)}


def until(stop: threading.Event | asyncio.Event, ticks: Iterator[list[Sample]]) -> Iterator[list[Sample]]:
    for tick in ticks:
        if stop.is_set():
            return
        yield tick


def test_agent_mqtt_source_reads_simulated_telemetry(mqtt_broker: MosquittoBroker, mqtt_topic: str,
                                                      tmp_path: Path) -> None:
    source = build("mqtt", {
        "host": mqtt_broker.host, "port": mqtt_broker.port, "payload": "json", "fields": list(CHANNELS),
        "timestamp_field": "ts", "topics": {f"{mqtt_topic}/{a}/telemetry": a for a in ASSETS},
    }, tmp_path)
    target = MqttTarget(mqtt_broker.host, mqtt_broker.port, f"{mqtt_topic}/{{asset}}/telemetry")

    async def scenario() -> list[Any]:
        stop = asyncio.Event()
        async with source:
            # Publish until the source has enough: its subscription may land after the first messages.
            ticks = until(stop, Plant(ASSETS, seed=8).ticks(START, 2000))
            publisher = asyncio.create_task(publish_mqtt(ticks, target, Pacer(1.0, 200.0), stop))
            try:
                return await collect(source, 20)
            finally:
                stop.set()
                await publisher

    readings = asyncio.run(scenario())
    truth = expected(2000)
    for reading in readings:
        asset = next(iter(reading.values)).split(".")[0]
        assert reading.values == {f"{asset}.{c}": v for c, v in truth[(asset, reading.ts)].items()}


def test_agent_serial_source_reads_simulated_lines(socat_serial: SocatSerialDevice, tmp_path: Path) -> None:
    source = build("serial", {"device": str(socat_serial.device), "baud": 115200, "format": "csv",
                              "timestamp_field": "ts", "fields": list(CHANNELS)}, tmp_path)
    stop = threading.Event()
    writer = threading.Thread(target=write_serial, args=(
        until(stop, Plant(ASSETS, seed=8).ticks(START, 2000)), str(socat_serial.peer), "pump-1"),
        kwargs={"fmt": "csv", "header_every": 5, "pacer": Pacer(1.0, 200.0)})

    async def scenario() -> list[Any]:
        async with source:
            writer.start()
            return await collect(source, 15)

    try:
        readings = asyncio.run(scenario())
    finally:
        stop.set()
        writer.join(10)
    truth = expected(2000)
    assert len(readings) == 15
    for reading in readings:
        assert reading.values == truth[("pump-1", reading.ts)]


def test_agent_replay_source_plays_the_simulated_csv(tmp_path: Path) -> None:
    paths = write_csv(Plant(ASSETS, seed=8).samples(START, 30), tmp_path / "csv", ASSETS)
    source = build("replay", {"path": str(paths["pump-2"]), "timestamp_field": "timestamp",
                              "fields": list(CHANNELS), "speed": 0.0, "rebase": False}, tmp_path)

    async def scenario() -> list[Any]:
        async with source:
            return await collect(source, 30)

    readings = asyncio.run(scenario())
    truth = expected(30)
    assert [r.ts for r in readings] == [START + i for i in range(30)]
    assert [r.values for r in readings] == [truth[("pump-2", r.ts)] for r in readings]
