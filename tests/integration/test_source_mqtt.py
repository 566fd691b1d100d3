"""The MQTT source on a real mosquitto: reconnects after the broker went away and when it is down at start,
wildcard topics with prefixes, bad payloads counted while the good ones go on, bursts in order, TLS with a
client certificate and a password."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_agent.configtools import Section
from edge_agent.sources.mqtt import MqttSource, MqttSourceConfig
from edge_agent.types import Reading
from tests.support import poll_until
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_client import connect_publisher
from tests.support.pki import tls_broker

pytestmark = pytest.mark.integration


def source_for(broker: MosquittoBroker, topic: str, tmp_path: Path, qos: int = 0) -> MqttSource:
    config = MqttSourceConfig.from_section(Section({
        "host": broker.host, "port": broker.port, "payload": "json", "fields": ["a"], "qos": qos,
        "timestamp_field": "ts", "keepalive": 5, "topics": {f"{topic}/+/telemetry": "plant"}}), tmp_path)
    return MqttSource("plant", config)


async def read_when_connected(source: MqttSource, received: list[Reading]) -> asyncio.Task[None]:
    """Start appending the source's readings to `received`; return once it is connected."""

    async def read() -> None:
        async for reading in source:
            received.append(reading)

    reader = asyncio.create_task(read())
    await poll_until(lambda: source.stats.state == "connected", "connected")
    return reader


def test_mqtt_source_reconnects_after_a_broker_restart(
        mqtt_broker: MosquittoBroker, mqtt_topic: str, tmp_path: Path) -> None:
    source = source_for(mqtt_broker, mqtt_topic, tmp_path)
    received: list[Reading] = []

    def publish(ts: float, payload: bytes | None = None) -> None:
        publisher = connect_publisher(mqtt_broker.host, mqtt_broker.port)
        body = payload if payload is not None else json.dumps({"ts": ts, "a": ts * 2}).encode()
        publisher.publish(f"{mqtt_topic}/m1/telemetry", body, qos=1).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()

    async def scenario() -> None:
        async with source:
            reader = await read_when_connected(source, received)
            await asyncio.to_thread(publish, 1.0)
            await asyncio.to_thread(publish, 2.0, b"not json")
            await asyncio.to_thread(publish, 3.0)
            await poll_until(lambda: len(received) == 2, "two readings")
            await asyncio.to_thread(mqtt_broker.stop)
            await poll_until(lambda: source.stats.state == "disconnected", "the loss noticed")
            await asyncio.to_thread(mqtt_broker.start)
            await poll_until(lambda: source.stats.state == "connected", "reconnected", timeout=40)
            await asyncio.to_thread(publish, 4.0)
            await poll_until(lambda: len(received) == 3, "a reading after the restart")
            reader.cancel()

    asyncio.run(scenario())
    assert [(r.ts, r.values) for r in received] == [(1.0, {"plant.a": 2.0}), (3.0, {"plant.a": 6.0}),
                                                   (4.0, {"plant.a": 8.0})]
    assert source.stats.invalid == 1
    assert source.stats.reconnects == 1


def test_mqtt_source_keeps_retrying_while_the_broker_is_down_at_start(
        mqtt_broker: MosquittoBroker, mqtt_topic: str, tmp_path: Path) -> None:
    mqtt_broker.stop()
    source = source_for(mqtt_broker, mqtt_topic, tmp_path)

    async def scenario() -> None:
        async with source:
            await asyncio.sleep(1.5)  # refused connects, retried with backoff
            assert source.stats.state == "disconnected"
            await asyncio.to_thread(mqtt_broker.start)
            await poll_until(lambda: source.stats.state == "connected", "connected once the broker is up", 40)

    asyncio.run(scenario())


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_source_reads_a_burst_in_order_without_a_network_thread(
        mqtt_broker: MosquittoBroker, mqtt_topic: str, tmp_path: Path, qos: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """600 messages sent back to back arrive in order, and paho runs no thread of its own (the event loop
    drives the client). Every one is taken from the read buffer without paho's per-message handling; at QoS 1
    each is acknowledged (mosquitto stops sending after 20 unacknowledged ones)."""
    by_paho: list[str] = []
    paho_path = MqttSource._on_message
    monkeypatch.setattr(MqttSource, "_on_message",
                        lambda self, c, u, msg: (by_paho.append(msg.topic), paho_path(self, c, u, msg)))
    source = source_for(mqtt_broker, mqtt_topic, tmp_path, qos=qos)
    count = 600
    received: list[Reading] = []

    def publish_burst() -> None:
        publisher = connect_publisher(mqtt_broker.host, mqtt_broker.port)
        infos = [publisher.publish(f"{mqtt_topic}/m{i % 7}/telemetry",
                                   json.dumps({"ts": float(i), "a": i * 0.5}).encode(), qos=1)
                 for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()

    async def scenario() -> None:
        async with source:
            reader = await read_when_connected(source, received)
            assert not [t.name for t in threading.enumerate() if t.name.startswith("paho")]
            await asyncio.to_thread(publish_burst)
            await poll_until(lambda: len(received) == count, f"{count} readings", timeout=20)
            reader.cancel()

    asyncio.run(scenario())
    assert [r.ts for r in received] == [float(i) for i in range(count)]
    assert [next(iter(r.values)) for r in received[:7]] == ["plant.a"] * 7
    assert source.stats.received == count
    assert source.stats.dropped == 0
    assert by_paho == []


def test_mqtt_source_over_tls_with_client_certificate_and_password(
        tmp_path: Path, mqtt_topic: str, caplog: pytest.LogCaptureFixture) -> None:
    """TLS records carry many messages each: a burst read through the TLS socket arrives whole and in order.
    A wrong password is refused, retried, and never logged."""
    caplog.set_level(logging.DEBUG)
    pki = tls_broker(tmp_path)
    (tmp_path / "password").write_text(f"{pki.password}\n")

    def tls_source(password_file: str) -> MqttSource:
        return MqttSource("plant", MqttSourceConfig.from_section(Section({
            "host": "localhost", "port": pki.broker.port, "payload": "json", "fields": ["a"],
            "timestamp_field": "ts", "topics": {f"{mqtt_topic}/+/telemetry": "plant"},
            "username": pki.username, "password_file": password_file,
            "tls": {"ca": str(pki.ca), "cert": str(pki.cert), "key": str(pki.key)}}), tmp_path))

    count = 300
    received: list[Reading] = []

    def publish_burst() -> None:
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        publisher.tls_set(ca_certs=str(pki.ca), certfile=str(pki.cert), keyfile=str(pki.key))
        publisher.username_pw_set(pki.username, pki.password)
        publisher.connect("localhost", pki.broker.port)
        publisher.loop_start()
        topic = f"{mqtt_topic}/m1/telemetry"
        infos = [publisher.publish(topic, json.dumps({"ts": float(i), "a": 1.0}), qos=1)
                 for i in range(count)]
        for info in infos:
            info.wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()

    async def scenario(source: MqttSource) -> None:
        async with source:
            reader = await read_when_connected(source, received)
            await asyncio.to_thread(publish_burst)
            await poll_until(lambda: len(received) == count, f"{count} readings over TLS", timeout=20)
            reader.cancel()

    async def refused(source: MqttSource) -> None:
        async with source:
            await asyncio.sleep(2.0)  # refused CONNACKs, retried with backoff
            assert source.stats.state == "disconnected"
            # the broker answered and refused the login: said so, in the status too (not "not reachable")
            assert "refused the connection" in str(source.describe()["last_error"])
            assert "check the username and password" in str(source.describe()["last_error"])

    try:
        asyncio.run(scenario(tls_source("password")))
        assert [r.ts for r in received] == [float(i) for i in range(count)]
        (tmp_path / "wrong").write_text("wrong\n")
        asyncio.run(refused(tls_source("wrong")))
    finally:
        pki.broker.stop()
    assert "refused the connection" in caplog.text
    assert pki.password not in caplog.text
