"""The simulator live: over a real mosquitto and a real pty, in lines the agent's parser accepts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.simulator import CHANNELS, MqttTarget, Pacer, Plant, Sample, publish_mqtt, write_serial
from edge_agent.simulator.outputs import MqttSink, rounded, run_sinks
from tests.support import wait_until
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_client import MqttCollector
from tests.support.serial_ports import PtyPair

lineformats = pytest.importorskip("edge_agent.sources.lineformats")

pytestmark = pytest.mark.integration
START = 1_767_225_600.0
REPO = Path(__file__).resolve().parents[2]


def parser_for(kind: str) -> object:
    return lineformats.LineParser(lineformats.LineFormat(kind=kind, fields={c: c for c in CHANNELS},
                                                         timestamp_field="ts"))


def test_json_telemetry_over_mqtt_matches_the_plant(mqtt_broker: MosquittoBroker, mqtt_topic: str) -> None:
    assets = ["pump-1", "pump-2"]
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [f"{mqtt_topic}/#"])
    try:
        target = MqttTarget(mqtt_broker.host, mqtt_broker.port, f"{mqtt_topic}/{{asset}}/telemetry", qos=1)
        sent = asyncio.run(publish_mqtt(Plant(assets, seed=4).ticks(START, 30), target, Pacer(1.0, 0.0)))
        assert sent == 60
        received = collector.wait_for(60)
    finally:
        collector.close()
    expected = {(s.asset, s.ts): rounded(s) for s in Plant(assets, seed=4).samples(START, 30)}
    parser = parser_for("json")
    got = {}
    for message in received:
        asset = message.topic.split("/")[-2]
        ts, values = parser.parse(message.payload.decode())
        got[(asset, ts)] = values
    assert got == expected


def test_one_number_per_topic(mqtt_broker: MosquittoBroker, mqtt_topic: str) -> None:
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [f"{mqtt_topic}/#"])
    try:
        target = MqttTarget(mqtt_broker.host, mqtt_broker.port, f"{mqtt_topic}/{{asset}}/{{channel}}",
                            payload="number", qos=1)
        asyncio.run(publish_mqtt(Plant(["p"], seed=1).ticks(START, 3), target))
        received = collector.wait_for(3 * len(CHANNELS))
    finally:
        collector.close()
    first = next(Plant(["p"], seed=1).samples(START, 1))
    by_topic = {m.topic: float(m.payload) for m in received[: len(CHANNELS)]}
    assert by_topic == {f"{mqtt_topic}/p/{c}": v for c, v in rounded(first).items()}


@pytest.mark.parametrize("fmt", ["csv", "kv", "json"])
def test_serial_lines_on_a_pty_parse_in_the_agent_format(pty_pair: PtyPair, fmt: str) -> None:
    plant = Plant(["pump-1", "pump-2"], seed=6)
    writer = threading.Thread(target=write_serial, args=(plant.ticks(START, 40), pty_pair.device, "pump-2"),
                              kwargs={"fmt": fmt, "header_every": 16})
    writer.start()
    parser = parser_for(fmt)
    rows = []
    while len(rows) < 40:
        parsed = parser.parse(pty_pair.read_line())
        if parsed is not None:  # CSV headers
            rows.append(parsed)
    writer.join(10)
    assert not writer.is_alive()
    expected = [(s.ts, rounded(s)) for s in Plant(["pump-1", "pump-2"], seed=6).samples(START, 40)
                if s.asset == "pump-2"]
    assert rows == expected


def test_command_streams_to_mqtt_and_serial_until_sigterm(mqtt_broker: MosquittoBroker, mqtt_topic: str,
                                                          pty_pair: PtyPair, tmp_path: Path) -> None:
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [f"{mqtt_topic}/#"])
    lines: list[str] = []
    done = threading.Event()

    def drain() -> None:  # keep reading the pty so the simulator never blocks on a full buffer
        while not done.is_set():
            try:
                lines.append(pty_pair.read_line(timeout=0.2))
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.simulator.cli", "--assets", "pump-1,pump-2", "--speed", "50",
         "--mqtt", f"{mqtt_broker.host}:{mqtt_broker.port}",
         "--mqtt-topic", f"{mqtt_topic}/{{asset}}/telemetry",
         "--serial", pty_pair.device, "--serial-asset", "pump-2", "--serial-format", "kv",
         "--ground-truth", str(tmp_path / "truth.jsonl")],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        received = collector.wait_for(20, timeout=20)
        wait_until(lambda: len(lines) >= 10, timeout=20, what="10 serial lines")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        done.set()
        collector.close()
    assert proc.returncode == 0, err
    assert "MQTT messages" in err
    assert f"lines to {pty_pair.device}" in err
    assert {m.topic for m in received} == {f"{mqtt_topic}/pump-1/telemetry", f"{mqtt_topic}/pump-2/telemetry"}
    assert set(json.loads(received[0].payload)) == {"ts", *CHANNELS}
    parser = parser_for("kv")
    parsed = [parser.parse(line) for line in lines[:10]]
    assert all(p is not None and set(p[1]) == set(CHANNELS) for p in parsed)
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(truth) == 5  # generated over the default hour even though the run is endless


def test_mqtt_publishing_survives_a_broker_outage(mqtt_broker: MosquittoBroker, mqtt_topic: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Samples made while the broker is down are dropped and counted; publishing resumes after it returns.
    The outage is logged as a lost broker; the closing disconnect is not."""
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [f"{mqtt_topic}/#"])
    sink = MqttSink(MqttTarget(mqtt_broker.host, mqtt_broker.port, f"{mqtt_topic}/{{asset}}/telemetry"))
    stop = threading.Event()

    def ticks() -> Iterator[list[Sample]]:
        for tick in Plant(["p"], seed=2).ticks(START):
            if stop.is_set():
                return
            yield tick

    publisher = threading.Thread(target=asyncio.run, args=(run_sinks(ticks(), [sink], Pacer(1.0, 200.0)),))
    publisher.start()
    try:
        collector.wait_for(10)
        with mqtt_broker.outage():
            wait_until(lambda: not sink.connected, what="the simulator noticing the outage")
            wait_until(lambda: sink.dropped > 0, what="a sample dropped while the broker is down")
        collector.wait_subscribed(2, timeout=20)
        wait_until(lambda: sink.connected, timeout=20, what="the simulator reconnecting")
        before = len(collector.messages)
        collector.wait_for(before + 10, timeout=20)
    finally:
        stop.set()
        publisher.join(10)
        sink.close()
        collector.close()
    assert not publisher.is_alive()
    assert sink.published >= len(collector.messages)
    lost = [r for r in caplog.records if "simulator lost the MQTT broker" in r.getMessage()]
    assert len(lost) == 1  # the outage, not the close
