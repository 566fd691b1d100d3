"""The supervisor in-process: hot swap to another window shape under load, watchdog pings during a
reload, closed engines, counters across a pipeline restart.

Real bundles (ONNX Runtime sessions), a real replay source reading a CSV file as fast as the pipeline
takes it (lossless: the window queue stays full), a real SQLite state database and a real datagram
socket standing in for systemd's `$NOTIFY_SOCKET`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent import supervisor as supervisor_module
from edge_agent.bundle import read_bundle
from edge_agent.config import AgentConfig
from edge_agent.supervisor import Supervisor
from edge_agent.systemd import Notifier
from tests.integration.agent_harness import CHANNELS, MEANS, PERIOD, STDS, make_bundle, write_config
from tests.support import poll_until
from tests.support.bundles import build_test_bundle

pytestmark = pytest.mark.integration


def replay_config(tmp_path: Path, **extra: Any) -> Path:
    bundle, keys = make_bundle(tmp_path)
    csv = tmp_path / "plant.csv"
    rows = ["ts,flow,pressure"] + [f"{i * PERIOD:.3f},{MEANS[0]},{MEANS[1]}" for i in range(400)]
    csv.write_text("\n".join(rows) + "\n")
    sources = {"plant": {"type": "replay", "path": str(csv), "timestamp_field": "ts", "speed": 0.0,
                         "rebase": False, "loop": True}}
    assets = {"pump-1": {"model": "pump", "source": "plant",
                         "channels": {"flow": "flow", "pressure": "pressure"}}}
    return write_config(tmp_path, tmp_path / "state", bundle, keys, sources, assets, extra=extra)


async def running(sup: Supervisor, body: Callable[[], Awaitable[None]]) -> int:
    task = asyncio.create_task(sup.run())
    try:
        await poll_until(lambda: sup.state.counters["windows_scored"] > 20 or task.done(), "windows scored")
        assert not task.done(), "the supervisor stopped early"
        await body()
    finally:
        sup.request_stop()
    return await asyncio.wait_for(task, 30)


def test_hot_swap_to_another_window_length_under_load(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = AgentConfig.load(replay_config(tmp_path))
    path = build_test_bundle(tmp_path / "bundles", channels=CHANNELS, window_length=16, stride=4,
                             sample_period_s=PERIOD, means=MEANS, stds=STDS, version="2.0.0")
    new_bundle = read_bundle(path, trusted_keys=config.bundle.trusted_keys, extract_to=tmp_path / "b2")
    sup = Supervisor(config)
    engines: list[Any] = []

    async def swap() -> None:
        engines.append(sup.engine)
        async with sup._swap_lock:  # hold the detector back until windows of the old shape are queued
            await poll_until(lambda: len(sup._windows) > 300, "queued windows")
            task = asyncio.create_task(sup.swap_bundle(new_bundle))
            await poll_until(lambda: len(sup._swap_lock._waiters or ()) == 2, "swap waiting")
            scored_before = sup.state.counters["windows_scored"]
            queued = len(sup._windows)
        await task
        # the queued old-shape windows were scored (by the old engine), not dropped
        assert sup.state.counters["windows_scored"] >= scored_before + queued
        store, recorder = sup.store, sup.recorder
        assert store is not None
        assert recorder is not None
        # scoring goes on with the new model (its windows reach the ring buffer)
        await poll_until(
            lambda: recorder.flush(0.5) and store.last_windows(1)[0]["bundle_version"] == "2.0.0",
            "windows of the new bundle")

    assert asyncio.run(running(sup, swap)) == 0
    assert "task detector failed" not in caplog.text
    assert "InferenceError" not in caplog.text
    assert engines[0]._executor._shutdown  # the old engine was closed once drained


def test_watchdog_pings_go_on_during_a_pipeline_restart(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = replay_config(tmp_path)
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "100000"})
    sup = Supervisor(AgentConfig.load(config_path), notifier)
    # the restarted pipeline's bundle load waits until the test has seen pings during the reload
    release = threading.Event()
    real_load = supervisor_module.load_bundle
    calls: list[int] = []

    def slow_load(config: AgentConfig, root: Path) -> Any:
        calls.append(1)
        if len(calls) == 3:  # 1: first start, 2: the reload check, 3: the restarted pipeline
            assert release.wait(20), "no watchdog pings during the reload"
        return real_load(config, root)

    monkeypatch.setattr(supervisor_module, "load_bundle", slow_load)
    messages: list[str] = []
    engines: list[Any] = []
    received: list[int] = []

    async def reload() -> None:
        loop = asyncio.get_running_loop()
        engines.append(sup.engine)
        received.append(sup.state.totals(sup)["readings_received"])
        config_path.write_text(config_path.read_text().replace("status_interval_s = 0.2",
                                                               "status_interval_s = 0.3"))
        sup.request_reload()
        async with asyncio.timeout(20):
            while "RELOADING=1" not in messages:
                messages.extend((await loop.sock_recv(sock, 4096)).decode().splitlines())
            while messages[messages.index("RELOADING=1"):].count("WATCHDOG=1") < 3:
                messages.extend((await loop.sock_recv(sock, 4096)).decode().splitlines())
            release.set()
            while messages.count("READY=1") < 2:
                messages.extend((await loop.sock_recv(sock, 4096)).decode().splitlines())
            # the rebuilt source counts from zero; the total in status.json does not dip
            received.append(sup.state.totals(sup)["readings_received"])

    try:
        assert asyncio.run(running(sup, reload)) == 0
    finally:
        release.set()
        sock.close()
    after = messages[messages.index("RELOADING=1"):]
    assert after.index("WATCHDOG=1") < after.index("READY=1")  # pinged before the pipeline was back
    assert any(m.startswith("MONOTONIC_USEC=") for m in messages)
    assert sup.config.status_interval_s == 0.3
    assert engines[0]._executor._shutdown  # the first pipeline's engine was closed at its restart
    assert received[0] > 0
    assert received[1] >= received[0]


def test_a_reload_that_moves_state_dir_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The instance lock and the pid file are on the running state directory: a reload onto another one would
    run there unlocked (a second agent could start on it) and leave the old pid file behind."""
    caplog.set_level(logging.INFO)
    config_path = replay_config(tmp_path)
    state, moved = tmp_path / "state", tmp_path / "state2"
    sup = Supervisor(AgentConfig.load(config_path))

    async def reload() -> None:
        config_path.write_text(config_path.read_text().replace(str(state), str(moved)))
        sup.request_reload()
        await poll_until(lambda: "state_dir changed" in caplog.text, "the reload refused")
        assert sup.config.state_dir == state
        assert (state / "agent.pid").is_file()
        assert not moved.exists()

    assert asyncio.run(running(sup, reload)) == 0
    assert "a new state directory needs a restart (systemctl restart edge-agent)" in caplog.text
    assert not (state / "agent.pid").exists()


def test_a_bundle_file_overwritten_in_place_is_loaded_on_reload(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """`[bundle] path` names the same file, but it now holds another version: a reload swaps to it (it used to
    say "config and bundle unchanged", comparing paths only)."""
    caplog.set_level(logging.INFO)
    config = AgentConfig.load(replay_config(tmp_path))
    newer, _keys = make_bundle(tmp_path / "v2", version="2.0.0")
    sup = Supervisor(config)

    async def overwrite_and_reload() -> None:
        assert sup.bundle is not None
        assert sup.bundle.manifest.version == "1.0.0"
        path = config.bundle_path()
        path.write_bytes(newer.read_bytes())
        sup.request_reload()
        await poll_until(lambda: sup.bundle is not None and sup.bundle.manifest.version == "2.0.0",
                         "the overwritten bundle loaded")

    assert asyncio.run(running(sup, overwrite_and_reload)) == 0
    assert "config and bundle unchanged" not in caplog.text


def test_an_asset_whose_windows_stop_is_reported_silent(tmp_path: Path) -> None:
    """A replay of 3 s at real speed ending in a fault: while it plays the asset is not silent; once it has
    finished, no window is scored, and after `silent_after_s` the health summary and the status file say so,
    and the episode still open gets its `reason: no_data` update."""
    bundle, keys = make_bundle(tmp_path)
    csv = tmp_path / "plant.csv"
    rows = ["ts,flow,pressure"] + [
        f"{i * PERIOD:.3f},{MEANS[0] + (40 * STDS[0] if i >= 20 else 0.0)},{MEANS[1]}" for i in range(30)]
    csv.write_text("\n".join(rows) + "\n")
    sources = {"plant": {"type": "replay", "path": str(csv), "timestamp_field": "ts", "speed": 1.0}}
    assets = {"pump-1": {"model": "pump", "source": "plant",
                         "channels": {"flow": "flow", "pressure": "pressure"}}}
    config = AgentConfig.load(write_config(tmp_path, tmp_path / "state", bundle, keys, sources, assets))
    sup = Supervisor(config)

    def outbox() -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(config.db_path)) as conn:
            return [json.loads(p) for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY seq")]

    async def scenario() -> tuple[list[str], list[str], dict[str, Any]]:
        task = asyncio.create_task(sup.run())
        try:
            await poll_until(lambda: sup.state.counters["windows_scored"] >= 2 or task.done(), "windows")
            playing = sup.state.health(sup)["silent_assets"]
            await poll_until(lambda: bool(sup.state.health(sup)["silent_assets"]) or task.done(),
                             "the asset reported silent", timeout=15)
            entry = sup.state.snapshot(sup)["assets"]["pump-1"]
            silent = sup.state.health(sup)["silent_assets"]
            await poll_until(lambda: len(outbox()) == 2 or task.done(), "the no_data update", timeout=15)
            return playing, silent, entry
        finally:
            sup.request_stop()
            await asyncio.wait_for(task, 30)

    playing, silent, entry = asyncio.run(scenario())
    assert playing == []
    assert silent == ["pump-1"]
    assert entry["silent"] is True
    assert entry["last_window_age_s"] >= 1.2  # silent_after_s: 3 strides of 4 periods of 0.1 s
    sent = outbox()
    assert [(a["state"], a["reason"]) for a in sent] == [("open", "debounce"), ("update", "no_data")]
    assert sent[1]["episode_id"] == sent[0]["episode_id"]


def test_a_bundle_that_does_not_fit_the_config_leaves_no_extracted_copy(tmp_path: Path) -> None:
    """`load_bundle` extracts, then checks the manifest against the config's assets: a bundle that fails the
    check (every reload with it) leaves nothing in the extraction directory (RAM under systemd)."""
    from edge_agent.config import AgentConfig
    from edge_agent.configtools import ConfigError
    from edge_agent.pipeline import load_bundle
    from tests.integration.agent_harness import make_bundle, write_config

    bundle, keys = make_bundle(tmp_path, model_name="fan")  # the config's asset asks for model "pump"
    sources = {"plant": {"type": "replay", "path": str(tmp_path / "plant.csv"), "timestamp_field": "ts",
                         "fields": ["flow", "pressure"]}}
    assets = {"pump-1": {"model": "pump", "source": "plant",
                         "channels": {"flow": "flow", "pressure": "pressure"}}}
    config = AgentConfig.load(write_config(tmp_path, tmp_path / "state", bundle, keys, sources, assets))
    run_dir = tmp_path / "run"
    for _ in range(3):
        with pytest.raises(ConfigError, match="pump"):
            load_bundle(config, run_dir)
    assert list(run_dir.iterdir()) == []
