"""The agent end to end: real bundle (ONNX Runtime), real pty serial port / MQTT source, real mosquitto,
the agent as a subprocess (`python -m edge_agent.cli run --config ...`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.integration.agent_harness import (
    IDENTITY,
    MEANS,
    PERIOD,
    STDS,
    AgentProcess,
    line,
    make_bundle,
    serial_asset,
    serial_source,
    write_config,
)
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_client import MqttCollector, connect_publisher
from tests.support.serial_ports import PtyPair, SocatSerialDevice

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "edge_agent" / "schemas" /
                     "alert.schema.json").read_text())
ALERT_TOPIC = f"{IDENTITY['site']}/{IDENTITY['area']}/{IDENTITY['line']}/pump-3/anomaly/alert"


def test_serial_readings_to_alert_on_expected_topic(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                    pty_pair: PtyPair, state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()},
                          mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port})
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [ALERT_TOPIC])
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
        agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")
        t0 = time.time()
        for i in range(16):
            pty_pair.write_line(line(t0 + i * 0.1))
        for i in range(16, 28):
            pty_pair.write_line(line(t0 + i * 0.1, anomalous=True))
        (message,) = collector.wait_for(1, timeout=15)
        alert = json.loads(message.payload)
        jsonschema.validate(alert, SCHEMA)
        assert message.topic == ALERT_TOPIC
        assert message.retain is False
        assert alert["state"] == "open"
        assert alert["asset"] == "pump-3"
        assert alert["gateway"]["id"] == IDENTITY["id"]
        assert alert["root_cause"]["channels"][0]["channel"] == "flow"  # the channel we pushed up
        assert alert["score"] > alert["threshold"]
        agent.wait(lambda: agent.counters().get("windows_scored", 0) >= 3, 10, "status shows scored windows")
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        collector.close()


def test_a_stuck_sensor_raises_a_flatline_alert(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                pty_pair: PtyPair, state_dir: Path) -> None:
    """Noisy readings, then flow frozen at a plausible value (its mean): the model scores the frozen
    windows below the threshold, and the flat line opens an episode (`reason: flatline`, `root_cause.flat`
    naming flow) that closes once flow moves again."""
    bundle, keys = make_bundle(tmp_path, flatline={"channels": ["flow", "pressure"], "healthy_windows": 512})
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()},
                          mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port})
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [ALERT_TOPIC])
    agent = AgentProcess(config, state_dir)
    rng = np.random.default_rng(4)
    try:
        agent.wait_ready()
        agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")
        t0 = time.time()
        for i in range(48):  # 0-15 noisy, 16-31 flow frozen, 32-47 noisy again
            flow = MEANS[0] if 16 <= i < 32 else MEANS[0] + 0.3 * STDS[0] * rng.standard_normal()
            pressure = MEANS[1] + 0.3 * STDS[1] * rng.standard_normal()
            pty_pair.write_line(f"{t0 + i * PERIOD:.3f},{flow:.4f},{pressure:.4f}")
        opened, closed = (json.loads(m.payload) for m in collector.wait_for(2, timeout=15))
        for alert in (opened, closed):
            jsonschema.validate(alert, SCHEMA)
        assert (opened["state"], opened["reason"]) == ("open", "flatline")
        assert opened["root_cause"]["flat"] == ["flow"]
        assert opened["score"] < opened["threshold"]  # the model alone would not have alerted
        assert (closed["state"], closed["reason"], closed["episode_id"]) == ("close", "cleared",
                                                                            opened["episode_id"])
        assert "flat line on flow" in agent.log_path.read_text()
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        collector.close()


def test_mqtt_readings_to_alert_and_bad_payloads_counted(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                                         mqtt_topic: str, state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    source = {"type": "mqtt", "host": mqtt_broker.host, "port": mqtt_broker.port, "payload": "json",
              "fields": ["flow", "pressure"], "timestamp_field": "ts", "qos": 1,
              "topics": {f"{mqtt_topic}/+/telemetry": "p3"}}
    asset = {"model": "pump", "channels": {"flow": "plant.p3.flow", "pressure": "plant.p3.pressure"}}
    config = write_config(tmp_path, state_dir, bundle, keys, {"plant": source}, {"pump-3": asset},
                          mqtt={"host": mqtt_broker.host, "port": mqtt_broker.port})
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [ALERT_TOPIC])
    publisher = connect_publisher(mqtt_broker.host, mqtt_broker.port)
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
        agent.wait(lambda: agent.source_state("plant") == "connected", 10, "MQTT source connected")
        topic = f"{mqtt_topic}/pump-3/telemetry"
        t0 = time.time()
        for i in range(28):
            flow = MEANS[0] + (8 * STDS[0] if i >= 16 else 0.0)
            if i in (5, 9):  # garbage between good samples: counted, scoring goes on
                publisher.publish(topic, b"{not json", qos=1).wait_for_publish(5)
                publisher.publish(topic, json.dumps({"ts": t0, "flow": "high"}), qos=1).wait_for_publish(5)
            payload = json.dumps({"ts": t0 + i * PERIOD, "flow": flow, "pressure": MEANS[1]})
            publisher.publish(topic, payload, qos=1).wait_for_publish(5)
        (message,) = collector.wait_for(1, timeout=15)
        alert = json.loads(message.payload)
        jsonschema.validate(alert, SCHEMA)
        assert (message.topic, alert["state"], alert["asset"]) == (ALERT_TOPIC, "open", "pump-3")
        agent.wait(lambda: agent.counters().get("readings_invalid") == 4, 10, "4 invalid payloads counted")
        assert agent.counters()["windows_scored"] >= 4
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        publisher.loop_stop()
        publisher.disconnect()
        collector.close()


def test_malformed_serial_lines_counted_while_scoring_continues(tmp_path: Path, pty_pair: PtyPair,
                                                                state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()})  # no [mqtt]: alerts go to stdout as JSON lines
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
        agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")
        t0 = time.time()
        bad = [b"1,2\n", b"\xff\xfe\x00garbage\n", b"abc,def,ghi\n", b"x" * 5000 + b"\n"]
        for i in range(24):
            if i < len(bad):
                pty_pair.write(bad[i])
            pty_pair.write(line(t0 + i * PERIOD).encode()[:5])  # a partial line, completed below
            pty_pair.write(line(t0 + i * PERIOD).encode()[5:] + b"\n")
        # 24 good samples, window 8 stride 4: windows end at samples 8, 12, 16, 20, 24
        agent.wait(lambda: agent.counters().get("windows_scored") == 5, 10, "5 windows scored")
        counters = agent.counters()
        assert counters["readings_invalid"] == 4
        assert counters["readings_received"] == 24
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_serial_device_unplugged_and_replugged_resumes(tmp_path: Path, socat_serial: SocatSerialDevice,
                                                       state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys,
                          {"line1": serial_source(str(socat_serial.device))}, {"pump-3": serial_asset()})
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
        agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")
        t0 = time.time()
        for i in range(8):
            socat_serial.write_line(line(t0 + i * PERIOD))
        agent.wait(lambda: agent.counters().get("windows_scored") == 1, 10, "first window")
        socat_serial.unplug()
        agent.wait(lambda: agent.source_state("line1") == "disconnected", 10, "unplug noticed")
        socat_serial.plug()
        agent.wait(lambda: agent.source_state("line1") == "connected", 20, "device reopened")
        for i in range(8, 16):
            socat_serial.write_line(line(t0 + i * PERIOD))
        agent.wait(lambda: agent.counters().get("windows_scored") == 3, 10, "scoring resumed")
        assert agent.status()["sources"]["line1"]["reconnects"] >= 1
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
