"""Install and roll back a bundle while the agent runs under load with an open episode.

Real mosquitto, the real agent as a subprocess (`python -m edge_agent.cli run`), real signed bundles installed
with the real pipeline. The switch must happen without a restart (same pid), no alert may be lost (every alert
in the agent's outbox reaches the subscriber, each episode opens and closes once), and scoring must continue
with the new model (alerts and windows carry the new bundle version); rollback the same way.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle.install import install, running_version, settings_from_config
from edge_agent.cli import main
from edge_agent.config import AgentConfig
from tests.support import wait_until
from tests.support.broker import MosquittoBroker
from tests.support.bundles import build_test_bundle, channel_stats, make_keypair, normal_windows
from tests.support.mqtt_client import MqttCollector, connect_publisher

pytestmark = pytest.mark.integration

CHANNELS = ["pressure", "flow", "vibration"]
REPO = Path(__file__).resolve().parents[2]
WINDOW, STRIDE = 16, 8
PUBLISH_INTERVAL_S = 0.002  # ~500 samples/s: load shaping for the agent, not synchronisation


class Plant:
    """Publishes one JSON sample per message on a background thread, normal or with a pressure fault."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.topic = topic
        self.client = connect_publisher(broker.host, broker.port, client_id="plant")
        self.faulty = threading.Event()
        self._stop = threading.Event()
        self.sent = 0
        _mean, std = channel_stats(len(CHANNELS))
        self._noise = normal_windows(1, len(CHANNELS), 4096, seed=7)[0]  # [C, 4096] normal samples
        self._offset = 6.0 * float(std[0])
        self._thread = threading.Thread(target=self._run, name="plant", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        ts = 1_700_000_000.0
        while not self._stop.is_set():
            column = self._noise[:, self.sent % self._noise.shape[1]]
            sample = {name: float(value) for name, value in zip(CHANNELS, column, strict=True)}
            if self.faulty.is_set():
                sample["pressure"] += self._offset
            sample["ts"] = ts
            self.client.publish(self.topic, json.dumps(sample), qos=1)
            self.sent += 1
            ts += 1.0
            self._stop.wait(PUBLISH_INTERVAL_S)

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


def _config(root: Path, broker: MosquittoBroker, topic: str) -> Path:
    path = root / "agent.toml"
    path.write_text(f"""
state_dir = "state"
device_profile = "x86-64-ipc"
status_interval_s = 0.2
[gateway]
site = "s1"
area = "a1"
line = "l1"
id = "gw1"
[bundle]
trusted_keys = "keys"
[sources.plant]
type = "mqtt"
host = "{broker.host}"
port = {broker.port}
topics = ["{topic}"]
payload = "json"
fields = {json.dumps(CHANNELS)}
timestamp_field = "ts"
qos = 1
queue_size = 100000
[assets.pump-1]
model = "pump"
source = "plant"
[assets.pump-1.channels]
pressure = "pressure"
flow = "flow"
vibration = "vibration"
[mqtt]
host = "{broker.host}"
port = {broker.port}
client_id = "gw1"
[decisions]
update_interval_s = 0.3
""")
    return path


@pytest.fixture
def agent_env(tmp_path: Path, mqtt_broker: MosquittoBroker, mqtt_topic: str) -> Iterator[dict[str, Any]]:
    root = tmp_path / "gw"
    root.mkdir()
    keys = make_keypair(tmp_path / "signer")
    (root / "keys").mkdir()
    (root / "keys" / "signer.pub").write_bytes(keys.public_path.read_bytes())
    config = _config(root, mqtt_broker, f"{mqtt_topic}/sensors")
    settings = settings_from_config(AgentConfig.load(config))
    bundles = {version: build_test_bundle(tmp_path / "out", channels=CHANNELS, window_length=WINDOW,
                                          stride=STRIDE, sign_key=keys.private_key, name="pumps",
                                          version=version, debounce={"k": 1, "n": 1, "clear_windows": 2})
               for version in ("1.0.0", "2.0.0")}
    install(bundles["1.0.0"], settings)
    alerts = MqttCollector(mqtt_broker.host, mqtt_broker.port, ["s1/a1/l1/+/anomaly/alert"])
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    plant = Plant(mqtt_broker, f"{mqtt_topic}/sensors")
    try:
        yield {"config": config, "settings": settings, "bundles": bundles, "alerts": alerts, "agent": agent,
               "plant": plant, "log": tmp_path / "agent.log", "db": settings.state_dir / "agent.db"}
    finally:
        plant.stop()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
        alerts.close()
        log.close()


def _docs(alerts: MqttCollector) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(alerts.messages)]


def _wait_alert(env: dict[str, Any], state: str, episode: str | None = None, version: str | None = None,
                after: int = 0) -> dict[str, Any]:
    """The first alert (from message number `after` on) in `state`, of `episode` / from bundle `version`."""
    def found() -> dict[str, Any] | None:
        return next((d for d in _docs(env["alerts"])[after:] if d["state"] == state
                     and episode in (None, d["episode_id"]) and version in (None, d["bundle"]["version"])),
                    None)
    wait_until(lambda: env["agent"].poll() is None and found() is not None, timeout=30,
               what=f"a {state!r} alert (episode {episode}, bundle {version})")
    result = found()
    assert result is not None
    return result


def _windows_above(env: dict[str, Any], version: str) -> int:
    """Windows above threshold that bundle `version` scored (read from the agent's live database)."""
    with sqlite3.connect(f"file:{env['db']}?mode=ro", uri=True) as db:
        row = db.execute("SELECT count(*) FROM windows WHERE bundle_version = ? AND above = 1",
                         (version,)).fetchone()
    return int(row[0])


def _wait_running(env: dict[str, Any], version: str) -> None:
    status_path = env["settings"].status_path
    wait_until(lambda: env["agent"].poll() is None and running_version(status_path) == version, timeout=30,
               what=f"the agent reporting bundle {version}")


def test_install_and_rollback_while_the_agent_runs_with_an_open_episode(
        agent_env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    env = agent_env
    agent, plant, settings = env["agent"], env["plant"], env["settings"]
    try:
        _wait_running(env, "1.0.0")
        pid = agent.pid
        plant.start()
        plant.faulty.set()
        first = _wait_alert(env, "open", version="1.0.0")
        episode = first["episode_id"]

        outcome = install(env["bundles"]["2.0.0"], settings)  # SIGHUPs the agent, like the CLI does
        assert outcome.agent == f"agent pid {pid} notified (SIGHUP)"
        _wait_running(env, "2.0.0")
        seen = len(env["alerts"].messages)
        # scoring goes on with the new model, which still sees the fault; the open episode carries on
        wait_until(lambda: _windows_above(env, "2.0.0") >= 3, timeout=30, what="windows scored by 2.0.0")
        _wait_alert(env, "update", episode=episode, version="2.0.0", after=seen)
        plant.faulty.clear()
        _wait_alert(env, "close", episode=episode, version="2.0.0")

        # roll back through the command line, which waits for the agent to report the switch
        assert main(["bundle", "rollback", "--config", str(env["config"]), "--wait", "30"]) == 0
        out = capsys.readouterr().out
        assert f"agent pid {pid} notified (SIGHUP)" in out
        assert "the running agent now scores with 1.0.0" in out
        _wait_running(env, "1.0.0")
        seen = len(env["alerts"].messages)
        plant.faulty.set()
        reopened = _wait_alert(env, "open", version="1.0.0", after=seen)
        assert reopened["episode_id"] != episode
        plant.faulty.clear()
        _wait_alert(env, "close", episode=reopened["episode_id"])
        plant.stop()

        assert agent.poll() is None
        assert agent.pid == pid
        assert int(settings.pid_path.read_text()) == pid  # never restarted
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    except BaseException:
        sys.stderr.write(env["log"].read_text()[-4000:])
        raise

    with sqlite3.connect(env["db"]) as db:
        outbox = db.execute("SELECT alert_id, episode_id, state, delivered_ts FROM outbox ORDER BY seq"
                            ).fetchall()
        versions = [row[0] for row in db.execute("SELECT bundle_version FROM windows ORDER BY id")]
    unique: dict[str, dict[str, Any]] = {}
    for doc in _docs(env["alerts"]):  # QoS 1: a redelivery carries the same alert id
        unique.setdefault(doc["alert_id"], doc)
    assert {row[0] for row in outbox} == set(unique), "stored and received alerts differ"
    assert all(row[3] is not None for row in outbox), "an alert was never acknowledged by the broker"
    by_episode: dict[str, list[str]] = {}
    for doc in unique.values():
        by_episode.setdefault(doc["episode_id"], []).append(doc["state"])
    assert len(by_episode) == 2
    for episode, states in by_episode.items():
        assert states[0] == "open", (episode, states)
        assert states[-1] == "close", (episode, states)
        assert states.count("open") == states.count("close") == 1, (episode, states)
    # scoring went on across both switches: windows from 1.0.0, then 2.0.0, then 1.0.0 again
    runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
    assert runs == ["1.0.0", "2.0.0", "1.0.0"]


def test_an_agent_that_does_not_take_up_the_new_bundle_gets_the_previous_one_back(
        agent_env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 6: any failure leaves the active bundle and the running agent untouched. The agent here is
    real but hung (SIGSTOP), so it never reports 2.0.0: the install must restore 1.0.0 and fail."""
    from edge_agent.bundle.store import BundleStore

    env = agent_env
    agent, settings = env["agent"], env["settings"]
    _wait_running(env, "1.0.0")
    store = BundleStore(settings.state_dir)
    agent.send_signal(signal.SIGSTOP)
    try:
        code = main(["bundle", "install", str(env["bundles"]["2.0.0"]), "--config", str(env["config"]),
                     "--wait", "1"])
    finally:
        agent.send_signal(signal.SIGCONT)
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED check 'agent switch' failed: the running agent did not report 2.0.0" in captured.err
    assert "restored the previously active bundle: 1.0.0" in captured.err
    assert store.active_version() == "1.0.0"
    last = store.history()[-1]
    assert (last["action"], last["version"], last["previous"]) == ("revert", "1.0.0", "2.0.0")
    assert {b.version for b in store.versions()} == {"1.0.0", "2.0.0"}  # 2.0.0 stays installed, inactive
    # the resumed agent handles the (coalesced) SIGHUPs with 1.0.0 active: it keeps its bundle, same process
    wait_until(lambda: "reload: config and bundle unchanged" in env["log"].read_text(), timeout=30,
               what="the agent handling the reload")
    assert agent.poll() is None
    assert running_version(settings.status_path) == "1.0.0"
