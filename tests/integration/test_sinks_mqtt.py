"""Upstream MQTT against a real mosquitto: outbox delivery at QoS 1, outages, TLS + password, status/LWT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge_agent.backoff import backoff_delays
from edge_agent.configtools import ConfigError, Section
from edge_agent.decisions import DecisionConfig, DecisionEngine
from edge_agent.pipeline import AlertWriter
from edge_agent.sinks.mqtt import MqttUpstream, MqttUpstreamConfig, TlsConfig
from edge_agent.sinks.payload import alert_payload
from edge_agent.storage import Store
from edge_agent.types import GatewayIdentity, ScoredWindow, Window
from tests.support import wait_until
from tests.support.broker import MosquittoBroker
from tests.support.pki import tls_broker

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "edge_agent" / "schemas"
ALERT_SCHEMA = json.loads((SCHEMAS / "alert.schema.json").read_text())
STATUS_SCHEMA = json.loads((SCHEMAS / "status.schema.json").read_text())
MANIFEST = {"name": "pumps", "version": "1.0.0", "models": [{
    "name": "pump", "input": {"channels": ["flow", "pressure"]}, "threshold": {"value": 1.0},
    "severity": [{"level": "warning", "min_score": 1.0}, {"level": "high", "min_score": 2.0},
                 {"level": "critical", "min_score": 4.0}],
    "debounce": {"k": 1, "n": 1, "clear_windows": 2}}]}


def fast_delays() -> Iterator[float]:
    return backoff_delays(base=0.05, cap=0.3)


class Subscriber:
    """A paho subscriber (optionally TLS, password, persistent session) recording what arrives."""

    def __init__(self, port: int, topics: list[str], *, client_id: str = "", clean: bool = True,
                 tls: tuple[Path, Path, Path] | None = None, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self.subscribed = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if tls:
            self.client.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]))
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        self.wait(lambda: self.subscribed >= 1, "subscription")

    def _on_subscribe(self, *_a: Any) -> None:
        with self._cond:
            self.subscribed += 1
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{what} not reached within {timeout} s; "
                                   f"got {len(self.messages)} messages")

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(m.payload) for m in self.messages if m.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Runner:
    """Runs an upstream on an event loop in its own thread so the test can block on subscribers."""

    def __init__(self, upstream: MqttUpstream) -> None:
        self.upstream = upstream
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.task = asyncio.run_coroutine_threadsafe(upstream.run(), self.loop)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        try:
            self.run(self.upstream.aclose())
            self.task.result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Episode:
    """Drives a real DecisionEngine and writes its alerts to the outbox, as the supervisor does."""

    def __init__(self, store: Store, upstream: MqttUpstream, runner: Runner,
                 identity: GatewayIdentity) -> None:
        self.store, self.upstream, self.runner = store, upstream, runner
        self.identity = identity
        self.engine = DecisionEngine(DecisionConfig(update_interval_s=3600), identity, store, MANIFEST)
        self.now = 1_800_000_000.0
        self.ids: list[str] = []

    def feed(self, *scores: float) -> None:
        for score in scores:
            self.now += 1.0
            window = Window("pump-1", "pump", self.now - 5, self.now, np.zeros((2, 6), np.float32))
            scored = ScoredWindow(window, score, score, 1.0, np.array([0.8, 0.2]), np.zeros(2),
                                  np.arange(6.0), "pumps", "1.0.0")
            events = self.engine.process(scored, self.now)
            self.store.add_alerts(events, self.upstream.alert_topic,
                                  lambda e: alert_payload(e, self.identity))
            self.ids += [e.alert_id for e in events]
        self.runner.call(self.upstream.wake)


def make(tmp_path: Path, port: int, **config: Any) -> tuple[Store, MqttUpstream, Runner, GatewayIdentity]:
    identity = GatewayIdentity("plant1", "press", "line2", "gw-7")
    store = Store.open(tmp_path / "state.db")
    config.setdefault("health_interval_s", 60.0)
    cfg = MqttUpstreamConfig(host="127.0.0.1", port=port, **config)
    health = {"uptime_s": 1.0, "counters": {"dropped": 0}}
    upstream = MqttUpstream(cfg, identity, store, health=lambda: health, delays=fast_delays)
    return store, upstream, Runner(upstream), identity


def test_alerts_are_delivered_at_qos1_schema_valid_with_retained_status(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    sub = Subscriber(mqtt_broker.port, ["plant1/press/line2/+/anomaly/alert",
                                        "plant1/press/line2/gw-7/status"])
    store, upstream, runner, identity = make(tmp_path, mqtt_broker.port, health_interval_s=1.0)
    try:
        episode = Episode(store, upstream, runner, identity)
        episode.feed(0.2, 1.5, 2.5, 0.1, 0.1)  # open, update (severity high), close
        sub.wait(lambda: len(sub.on("/anomaly/alert")) == 3, "3 alerts")
        alerts = sub.on("/anomaly/alert")
        for alert in alerts:
            jsonschema.validate(alert, ALERT_SCHEMA, format_checker=jsonschema.FormatChecker())
        assert [a["alert_id"] for a in alerts] == episode.ids
        assert [(a["state"], a["severity"]) for a in alerts] == [("open", "warning"), ("update", "high"),
                                                                ("close", "high")]
        assert {a["episode_id"] for a in alerts} == {alerts[0]["episode_id"]}
        assert alerts[0]["root_cause"]["channels"][0] == {"channel": "flow", "share": 0.8}
        alert_msgs = [m for m in sub.messages if m.topic.endswith("/anomaly/alert")]
        expected = ("plant1/press/line2/pump-1/anomaly/alert", 1, False)
        assert {(m.topic, m.qos, m.retain) for m in alert_msgs} == {expected}
        wait_until(lambda: store.backlog() == 0, what="outbox drained")
        sub.wait(lambda: len(sub.on("/status")) >= 2, "a periodic health status")
        for status in sub.on("/status"):
            jsonschema.validate(status, STATUS_SCHEMA)
            assert status["state"] == "online"
            assert status["health"]["outbox_backlog"] >= 0
    finally:
        runner.stop()
        sub.close()
    late = Subscriber(mqtt_broker.port, ["plant1/press/line2/gw-7/status"])
    try:
        late.wait(lambda: bool(late.messages), "retained status")
        assert late.messages[0].retain
        assert json.loads(late.messages[0].payload)["state"] == "offline"
    finally:
        late.close()


def test_broker_outage_during_an_episode_delivers_every_alert_once_in_order(tmp_path: Path) -> None:
    persist = tmp_path / "persist"
    persist.mkdir()
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=(
        f"user root\npersistence true\npersistence_location {persist}/\n"))
    broker.start()
    sub = Subscriber(broker.port, ["plant1/+/+/+/anomaly/alert"], client_id="scada-1", clean=False)
    store, upstream, runner, identity = make(tmp_path, broker.port, max_inflight=3)
    try:
        episode = Episode(store, upstream, runner, identity)
        episode.feed(1.5)
        sub.wait(lambda: len(sub.on("/alert")) == 1, "the open alert")
        broker.stop()
        wait_until(lambda: upstream.state != "connected", what="upstream noticed the outage")
        episode.feed(2.5, 5.0, 1.2, 0.1, 0.1, 3.0)  # high, critical, close, and a new episode opens
        assert store.backlog() == 4
        broker.start()
        sub.wait(lambda: len({a["alert_id"] for a in sub.on("/alert")}) == 5, "all 5 alerts", timeout=30)
        wait_until(lambda: store.backlog() == 0, what="outbox drained")
        first_seen = list(dict.fromkeys(a["alert_id"] for a in sub.on("/alert")))
        assert first_seen == episode.ids
        state_of = {a["alert_id"]: (a["state"], a["severity"]) for a in sub.on("/alert")}
        assert [state_of[i] for i in first_seen] == [("open", "warning"), ("update", "high"),
                                                      ("update", "critical"), ("close", "critical"),
                                                      ("open", "high")]
        assert len({a["episode_id"] for a in sub.on("/alert")}) == 2
        assert upstream.connects >= 2
    finally:
        runner.stop()
        sub.close()
        broker.stop()


class CuttableProxy:
    """A TCP proxy to the broker whose connections the test can cut (a network failure, no DISCONNECT)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        # a client reconnecting at once must not be cut with the connection it replaces: its pair is added
        # only after `cut` has taken the list (the reconnect cannot start before the old connection dies)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            pairs, self.pairs = self.pairs, []
            for a, b in pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_last_will_offline_when_the_connection_dies_then_online_again(
        mqtt_broker: MosquittoBroker, tmp_path: Path) -> None:
    proxy = CuttableProxy(mqtt_broker.port)
    sub = Subscriber(mqtt_broker.port, ["plant1/press/line2/gw-7/status"])
    store, upstream, runner, _identity = make(tmp_path, proxy.port, keepalive=5)
    try:
        sub.wait(lambda: [s["state"] for s in sub.on("/status")] == ["online"], "online")
        proxy.cut()
        sub.wait(lambda: [s["state"] for s in sub.on("/status")][:3] == ["online", "offline", "online"],
                 "offline (LWT) then online after the reconnect")
        will = sub.on("/status")[1]
        jsonschema.validate(will, STATUS_SCHEMA)
        assert "time" not in will
        assert will["gateway"]["id"] == "gw-7"
        assert upstream.connects == 2
    finally:
        runner.stop()
        sub.close()
        proxy.close()
        store.close()


def test_tls_with_client_certificate_and_password_file(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pki = tls_broker(tmp_path)
    broker = pki.broker
    (tmp_path / "password").write_text(f"{pki.password}\n")
    tls = TlsConfig(pki.ca, pki.cert, pki.key)
    sub = Subscriber(broker.port, ["plant1/#"], tls=(pki.ca, pki.cert, pki.key),
                     auth=(pki.username, pki.password))
    store, upstream, runner, identity = make(tmp_path, broker.port, tls=tls, username=pki.username,
                                             password_file=tmp_path / "password", protocol="5")
    try:
        Episode(store, upstream, runner, identity).feed(1.5)
        sub.wait(lambda: len(sub.on("/anomaly/alert")) == 1, "the alert over TLS")
        jsonschema.validate(sub.on("/anomaly/alert")[0], ALERT_SCHEMA)
    finally:
        runner.stop()
        sub.close()
    # a wrong password is refused: the upstream keeps retrying and never reports connected
    (tmp_path / "password").write_text("wrong\n")
    _store2, upstream2, runner2, _ = make(tmp_path / "b", broker.port, tls=tls, username=pki.username,
                                         password_file=tmp_path / "password")
    try:
        wait_until(lambda: upstream2.state == "disconnected", what="refused connect reported")
        assert upstream2.connects == 0
        wait_until(lambda: "refused the connection" in str(upstream2.last_error), what="why, for the status")
    finally:
        runner2.stop()
        broker.stop()
    assert pki.password not in caplog.text
    assert "refused the connection" in caplog.text  # the refused connect was logged, without the password


def test_config_parsing_resolves_files_and_rejects_bad_templates(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ca.pem").write_text("x")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("pw")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = MqttUpstreamConfig.from_section(Section({
        "host": "broker", "port": 8883, "username": "gw",
        "password_file": "${CREDENTIALS_DIRECTORY}/mqtt-password",
        "tls": {"ca": "ca.pem"}, "protocol": "5"}, "mqtt"), tmp_path)
    assert cfg.tls == TlsConfig(ca=tmp_path / "ca.pem")
    assert cfg.password_file == creds / "mqtt-password"
    assert "pw" not in repr(cfg)
    for template, shown in (("{plant}/x", "{plant}"), ("{site.foo}/{asset}", "{site.foo}"),
                            ("{site[0]}/x", "{site[0]}"), ("{site:>300}/x", "{site:>300}"),
                            ("{site!r}/x", "{site!r}")):
        with pytest.raises(ConfigError, match=rf"mqtt -> alert_topic_template: bad placeholder "
                                              rf"{re.escape(shown)} \(allowed: {{site}}, "):
            MqttUpstreamConfig.from_section(Section({"host": "b", "alert_topic_template": template}, "mqtt"),
                                            tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt -> alert_topic_template: Single '}' encountered"):
        MqttUpstreamConfig.from_section(Section({"host": "b", "alert_topic_template": "a}/b"}, "mqtt"),
                                        tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt -> tls -> cert: file not found"):
        MqttUpstreamConfig.from_section(Section({"host": "b", "tls": {"cert": "nope.pem"}}, "mqtt"), tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt -> protocol: must be one of"):
        MqttUpstreamConfig.from_section(Section({"host": "b", "protocol": "4"}, "mqtt"), tmp_path)
    with pytest.raises(ConfigError, match=r"mqtt -> qos: unknown key"):
        MqttUpstreamConfig.from_section(Section({"host": "b", "qos": 2}, "mqtt"), tmp_path)


def test_an_alert_the_broker_refuses_by_acl_is_parked_as_rejected_not_delivered(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite plant1/press/line2/gw-7/status\ntopic read #\n")  # alerts: no write
    broker = MosquittoBroker(tmp_path / "mosquitto", extra_config=f"user root\nacl_file {acl}\n")
    broker.start()
    sub = Subscriber(broker.port, ["plant1/#"])
    store, upstream, runner, identity = make(tmp_path, broker.port, protocol="5", health_interval_s=1.0)
    try:
        Episode(store, upstream, runner, identity).feed(1.5)  # one alert, PUBACK 0x87 not authorized
        wait_until(lambda: store.rejected() == 1, what="the refused alert parked as rejected")
        assert store.backlog() == 0
        assert store.pending() == []
        assert store.counters().get("alerts_rejected") == 1
        rows = list(store._query("SELECT delivered_ts, rejected FROM outbox"))
        assert [(r[0], r[1].split()[0]) for r in rows] == [(None, "0x87")]  # not delivered
        assert upstream.state == "connected"
        assert upstream.delivered == 0
        sub.wait(lambda: any(s.get("health", {}).get("outbox_rejected") == 1 for s in sub.on("/status")),
                 "health summary showing the rejected alert")
        assert sub.on("/anomaly/alert") == []
    finally:
        runner.stop()
        sub.close()
        broker.stop()


def test_two_gateways_with_one_client_id_back_off_instead_of_spinning(
        mqtt_broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The broker drops one of two clients with the same client id each time the other connects. Each
    connection is accepted, then lost at once: that counts as a failed try, so the two back off. Without it
    they took each other's connection hundreds of times a second, flapping the retained status."""
    identity = GatewayIdentity("plant1", "press", "line2", "gw-7")
    runners, upstreams, stores = [], [], []
    caplog.set_level(logging.WARNING, logger="edge_agent.sinks.mqtt")
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            store = Store.open(tmp_path / name / "state.db")
            config = MqttUpstreamConfig(host="127.0.0.1", port=mqtt_broker.port)
            upstream = MqttUpstream(config, identity, store, health=dict,
                                    delays=lambda: backoff_delays(base=0.2, cap=0.5))
            stores.append(store)
            upstreams.append(upstream)
            runners.append(Runner(upstream))
        threading.Event().wait(3.0)
        connects = sum(u.connects for u in upstreams)
    finally:
        for runner in runners:
            runner.stop()
        for store in stores:
            store.close()
    # backing off (delays drawn from [0, 0.2 .. 0.5] s) allows a few dozen connections in 3 s at most
    assert 2 <= connects <= 60, connects
    assert "right after connecting (another client with the same client_id?" in caplog.text


def test_alerts_the_outbox_cannot_take_are_sent_from_memory(mqtt_broker: MosquittoBroker,
                                                            tmp_path: Path) -> None:
    """A database another process holds (as a full disk would) refuses the outbox write: the alert stays in
    the AlertWriter's memory and the sink sends it from there; the outbox takes the next ones again."""
    sub = Subscriber(mqtt_broker.port, ["plant1/press/line2/+/anomaly/alert"])
    store, upstream, runner, identity = make(tmp_path, mqtt_broker.port)
    alerts = AlertWriter(store, identity, upstream.alert_topic, lambda: runner.call(upstream.wake))
    upstream.memory = alerts
    engine = DecisionEngine(DecisionConfig(update_interval_s=3600), identity, store, MANIFEST)
    now = 1_800_000_000.0

    async def decide(score: float) -> list[str]:  # on the sink's loop, as in the agent
        nonlocal now
        now += 1.0
        window = Window("pump-1", "pump", now - 5, now, np.zeros((2, 6), np.float32))
        events = engine.process(ScoredWindow(window, score, score, 1.0, np.array([0.8, 0.2]), np.zeros(2),
                                             np.arange(6.0), "pumps", "1.0.0"), now)
        alerts.write(events)  # wakes the sink, written or not
        return [e.alert_id for e in events]

    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        opened = runner.run(decide(2.5))
        assert len(opened) == 1
        assert alerts.failures == 1  # the outbox write was refused
        sub.wait(lambda: len(sub.on("/anomaly/alert")) == 1, "the open alert, sent from memory")
        wait_until(lambda: alerts.answered == {opened[0]: None}, what="the broker's answer noted in memory")
        assert alerts.sent_unstored == 1
        assert alerts.pending() == []  # answered: not sent again
        other.execute("ROLLBACK")
        closed = runner.run(decide(0.1)) + runner.run(decide(0.1))
        sub.wait(lambda: len(sub.on("/anomaly/alert")) == 2, "the close alert, from the outbox")
        wait_until(lambda: store.backlog() == 0, what="outbox drained")
        received = sub.on("/anomaly/alert")
        assert [a["alert_id"] for a in received] == opened + closed
        assert [a["state"] for a in received] == ["open", "close"]
        assert alerts.unstored == []
        with sqlite3.connect(tmp_path / "state.db") as conn:  # the open written delivered, with its episode
            rows = conn.execute("SELECT alert_id, delivered_ts IS NOT NULL FROM outbox ORDER BY seq")
            assert rows.fetchall() == [(opened[0], 1), (closed[0], 1)]
            assert conn.execute("SELECT status FROM episodes").fetchall() == [("closed",)]
    finally:
        other.close()
        runner.stop()
        sub.close()
