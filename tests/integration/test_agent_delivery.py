"""Alerts survive broker outages and agent crashes; systemd notify; SIGHUP bundle swap; SIGTERM drains."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tests.integration.agent_harness import (
    IDENTITY,
    AgentProcess,
    line,
    make_bundle,
    serial_asset,
    serial_source,
    write_config,
)
from tests.support import wait_until
from tests.support.broker import MosquittoBroker
from tests.support.mqtt_client import MqttCollector
from tests.support.serial_ports import PtyPair

pytestmark = pytest.mark.integration

ALERT_TOPIC = f"{IDENTITY['site']}/{IDENTITY['area']}/{IDENTITY['line']}/+/anomaly/alert"


class Feeder:
    """Writes a continuous 10 Hz series to the pty: normal or with flow 8 std high."""

    def __init__(self, pty: PtyPair) -> None:
        self.pty = pty
        self.t0 = time.time()
        self.i = 0

    def feed(self, count: int, anomalous: bool = False) -> None:
        for _ in range(count):
            self.pty.write_line(line(self.t0 + self.i * 0.1, anomalous))
            self.i += 1


def serial_agent(tmp_path: Path, state_dir: Path, pty_pair: PtyPair, broker: MosquittoBroker | None = None,
                 ) -> tuple[Path, Path, AgentProcess, Feeder]:
    """A config reading pump-3 from the pty (upstream: `broker`, else the console), its bundle, agent and
    feeder."""
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()},
                          mqtt=None if broker is None else {"host": broker.host, "port": broker.port})
    return config, bundle, AgentProcess(config, state_dir), Feeder(pty_pair)


def wait_serial_open(agent: AgentProcess) -> None:
    agent.wait_ready()
    agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")


def outbox(state_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{state_dir / 'agent.db'}?mode=ro", uri=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT alert_id, state FROM outbox ORDER BY seq")]


def test_broker_outage_during_episode_every_alert_once_in_order(
        tmp_path: Path, mqtt_broker: MosquittoBroker, pty_pair: PtyPair, state_dir: Path) -> None:
    _config, _bundle, agent, feeder = serial_agent(tmp_path, state_dir, pty_pair, mqtt_broker)
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [ALERT_TOPIC])
    try:
        wait_serial_open(agent)
        feeder.feed(16)
        feeder.feed(12, anomalous=True)
        collector.wait_for(1, timeout=15)  # the episode is open and delivered
        mqtt_broker.stop()
        agent.wait(lambda: agent.status().get("sink", {}).get("state") != "connected", 15, "outage noticed")
        feeder.feed(16)  # the episode closes while the broker is down
        feeder.feed(12, anomalous=True)  # a second episode opens ...
        feeder.feed(16)  # ... and closes
        agent.wait(lambda: [s for _, s in outbox(state_dir)].count("close") == 2, 15, "alerts in outbox")
        expected = [alert_id for alert_id, _ in outbox(state_dir)]
        # Pause the agent until the subscriber is back, so it cannot publish before anyone listens
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            mqtt_broker.start()
            collector.wait_subscribed(2, timeout=15)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        received = collector.wait_for(len(expected), timeout=20)
        ids = [json.loads(m.payload)["alert_id"] for m in received]
        assert ids == expected  # every alert once, in outbox order
        assert [json.loads(m.payload)["state"] for m in received][-1] == "close"
        agent.wait(lambda: agent.backlog() == 0, 10, "outbox drained")
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        collector.close()


def test_undelivered_alerts_survive_sigkill(tmp_path: Path, mqtt_broker: MosquittoBroker,
                                            pty_pair: PtyPair, state_dir: Path) -> None:
    mqtt_broker.stop()  # upstream down from the start: the agent still starts and keeps alerts
    config, _bundle, agent, feeder = serial_agent(tmp_path, state_dir, pty_pair, mqtt_broker)
    try:
        wait_serial_open(agent)
        feeder.feed(16)
        feeder.feed(12, anomalous=True)
        agent.wait(lambda: agent.backlog() >= 1, 15, "alert in the outbox")
        expected = [alert_id for alert_id, _ in outbox(state_dir)]
    finally:
        agent.kill()  # SIGKILL: no drain, no goodbye
    mqtt_broker.start()
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [ALERT_TOPIC])
    restarted = AgentProcess(config, state_dir)
    try:
        restarted.wait_ready()
        received = collector.wait_for(len(expected), timeout=20)
        assert [json.loads(m.payload)["alert_id"] for m in received][:len(expected)] == expected
        restarted.wait(lambda: restarted.backlog() == 0, 10, "outbox drained")
        assert restarted.stop() == 0
    finally:
        if restarted.proc.poll() is None:
            restarted.kill()
        collector.close()


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path, pty_pair: PtyPair, state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()})
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(20)
    agent = AgentProcess(config, state_dir,
                         env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"})
    try:
        messages: list[str] = []
        while messages.count("WATCHDOG=1") < 2:
            messages.extend(sock.recv(4096).decode().splitlines())
        assert messages.index("READY=1") < messages.index("WATCHDOG=1")  # pings only once ready
        assert any(m.startswith("STATUS=scoring 1 assets") for m in messages)
        assert agent.stop() == 0
        while "STOPPING=1" not in messages:
            messages.extend(sock.recv(4096).decode().splitlines())
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        sock.close()


def activate(state_dir: Path, bundle: Path, version: str) -> None:
    """What `edge-agent bundle install` leaves behind: bundles/<version>/bundle.tar, `active` -> <version>."""
    version_dir = state_dir / "bundles" / version
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "bundle.tar").write_bytes(bundle.read_bytes())
    link = state_dir / "bundles" / "active.new"
    link.symlink_to(version)
    link.replace(state_dir / "bundles" / "active")


def test_sighup_swaps_to_newly_activated_bundle(tmp_path: Path, pty_pair: PtyPair, state_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.cli import main

    config, bundle, agent, feeder = serial_agent(tmp_path, state_dir, pty_pair)
    try:
        wait_serial_open(agent)
        feeder.feed(8)
        agent.wait(lambda: agent.counters().get("windows_scored") == 1, 10, "scoring on 1.0.0")
        # a broken config on SIGHUP is refused and the agent keeps running; its status says so
        good = config.read_text()
        config.write_text(good.replace('[gateway]', '[gateway]\ncolour = "red"'))
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: "reload ignored" in agent.log(), 10, "bad config refused")
        agent.wait(lambda: "gateway -> colour" in str(agent.status().get("reload_rejected")), 10,
                   "the refused reload in the status")
        # `status` with the broken file still shows the running agent (read from the file's state_dir)
        capsys.readouterr()
        assert main(["status", "--config", str(config)]) == 1
        printed = capsys.readouterr()
        assert "invalid config" in printed.err
        assert "the status below is read from" in printed.err
        assert "agent: running" in printed.out
        assert "RELOAD REJECTED at " in printed.out
        assert "gateway -> colour: unknown key" in printed.out
        config.write_text(good)
        # what `edge-agent bundle install` does: bundles/<version>/bundle.tar and an `active` link to it
        activate(state_dir, make_bundle(tmp_path / "v2", version="2.0.0")[0], "2.0.0")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: agent.status().get("bundle_version") == "2.0.0", 15, "bundle swapped")
        assert agent.proc.pid == agent.status()["pid"]  # no restart
        agent.wait(lambda: agent.status().get("reload_rejected") is None, 10, "a reload went through")
        feeder.feed(8)
        agent.wait(lambda: agent.counters().get("windows_scored") == 3, 10, "scoring on 2.0.0")
        # a bundle whose model the assets do not use is refused; the running one stays
        activate(state_dir, make_bundle(tmp_path / "v3", version="3.0.0", model_name="fan")[0], "3.0.0")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: "not loaded, keeping test-bundle 2.0.0" in agent.log(), 15, "bad bundle refused")
        agent.wait(lambda: "new bundle not loaded" in str(agent.status().get("reload_rejected")), 10,
                   "the refused bundle in the status")
        # rollback: `active` points at 1.0.0 again
        activate(state_dir, bundle, "1.0.0")
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait(lambda: agent.status().get("bundle_version") == "1.0.0", 15, "rolled back")
        agent.wait(lambda: agent.status().get("reload_rejected") is None, 10, "the swap clears the refusal")
        assert agent.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_task_failing_past_restart_budget_exits_nonzero(tmp_path: Path, state_dir: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    missing = tmp_path / "gone.csv"  # fields are given, so the file is first read when the source runs
    source = {"type": "replay", "path": str(missing), "fields": ["flow", "pressure"], "speed": 0.0}
    config = write_config(tmp_path, state_dir, bundle, keys, {"rec": source}, {"pump-3": serial_asset("rec")})
    agent = AgentProcess(config, state_dir)
    try:
        assert agent.proc.wait(30) == 1
        log = agent.log()
        assert log.count("task source[replay:gone.csv] failed; restarting") == 5
        assert "failed more than 5 times in 60 s" in log
        assert "cannot read replay file" in log
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_sighup_with_changed_config_restarts_pipeline_in_process(tmp_path: Path, pty_pair: PtyPair,
                                                                 state_dir: Path,
                                                                 mqtt_broker: MosquittoBroker) -> None:
    config, _bundle, agent, feeder = serial_agent(tmp_path, state_dir, pty_pair, mqtt_broker)
    status_topic = "{site}/{area}/{line}/{id}/status".format(**IDENTITY)
    collector = MqttCollector(mqtt_broker.host, mqtt_broker.port, [status_topic])

    def states() -> list[str]:
        return [json.loads(m.payload)["state"] for m in collector.messages]

    try:
        wait_serial_open(agent)
        agent.wait(lambda: states()[-1:] == ["online"], 10, "online on the status topic")
        # a second asset on the same fields: a real change, valid against the bundle
        config.write_text(config.read_text() + '\n[assets.pump-4]\nmodel = "pump"\nsource = "line1"\n\n'
                          '[assets.pump-4.channels]\nflow = "flow"\npressure = "pressure"\n')
        agent.proc.send_signal(signal.SIGHUP)
        # the restarted pipeline opens the port again (pyserial flushes its input on open)
        agent.wait(lambda: agent.log().count("source line1: opened") == 2, 15, "serial port reopened")
        feeder.feed(8)

        def both_scored() -> bool:
            assets = agent.status().get("assets") or {}
            return all(assets.get(name, {}).get("windows") == 1 for name in ("pump-3", "pump-4"))

        agent.wait(both_scored, 10, "both assets scored")
        assert agent.status()["pid"] == agent.proc.pid
        assert "config changed: restarting the pipeline" in agent.log()
        # same upstream: the reload never told SCADA the gateway was offline
        agent.wait(lambda: states().count("online") >= 2, 10, "online again after the restart")
        assert "offline" not in states()
        assert agent.stop() == 0
        wait_until(lambda: states()[-1] == "offline", 10, "offline after SIGTERM")  # a real shutdown says so
    finally:
        if agent.proc.poll() is None:
            agent.kill()
        collector.close()
