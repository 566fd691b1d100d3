"""Faults of the state database, on real SQLite files: clock steps against retention, damaged files at start,
a full disk and a corrupt file under the ring buffer and the retention pass."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.decisions import new_id
from edge_agent.sinks.payload import alert_payload
from edge_agent.storage import RetentionConfig, Store, WindowRecorder
from edge_agent.types import AlertEvent, GatewayIdentity, RootCauseEntry, ScoredWindow, Window
from tests.support import FakeClock

pytestmark = pytest.mark.integration

IDENTITY = GatewayIdentity("s1", "a1", "l1", "gw1")
NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
DAY = 86_400.0
YEAR_2000 = 946_684_800.0


def scored(ts: float, asset: str = "pump-1") -> ScoredWindow:
    window = Window(asset, "pump", ts - 10, ts, np.zeros((2, 4), np.float32))
    return ScoredWindow(window, 0.5, 0.6, 1.0, np.array([0.25, 0.75], np.float32),
                        np.array([0.5, -0.5], np.float32), np.zeros(4, np.float32), "b", "1.0")


def event(state: str, episode: str, ts: float) -> AlertEvent:
    return AlertEvent(new_id(ts), episode, state, ts, ts, "pump-1", "pump", "b", "1.0", 2.0, 1.0, "warning",
                      ts - 10, ts, ts - 3, (RootCauseEntry("flow", 1.0),), {"reason": state})


def add(store: Store, events: list[AlertEvent]) -> None:
    store.add_alerts(events, lambda e: f"t/{e.asset}", lambda e: alert_payload(e, IDENTITY))


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(sql).fetchone()[0])


# retention against clock faults ---------------------------------------------------------------------------
def test_a_device_clock_years_behind_keeps_its_windows(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    store = Store.open(tmp_path / "state.db", RetentionConfig(max_age_s=100.0), clock=clock)
    store.record_windows([scored(YEAR_2000 + i, asset="rtc-reset") for i in range(5)])
    store.record_windows([scored(NOW - 500 + i) for i in range(3)] + [scored(NOW - 10)])
    assert store.prune() == 3  # the right-clock asset's old windows only
    kept = [(w["asset"], w["end_ts"]) for w in store.last_windows(10)]
    assert kept == [("pump-1", NOW - 10)] + [("rtc-reset", YEAR_2000 + i) for i in range(4, -1, -1)]
    store.close()


def test_a_gateway_clock_step_forward_deletes_nothing_recent(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    path = tmp_path / "state.db"
    store = Store.open(path, RetentionConfig(max_age_s=30 * DAY), clock=clock)
    store.record_windows([scored(NOW - 600 + i * 10) for i in range(60)])
    episode = new_id(NOW)
    opened, closed = event("open", episode, NOW - 300), event("close", episode, NOW - 100)
    add(store, [opened, closed])
    store.mark_delivered([opened.alert_id, closed.alert_id])
    clock.now += 40 * DAY  # bad RTC, or an NTP correction
    assert store.prune() == 0
    assert store.window_count() == 60
    assert count(path, "SELECT count(*) FROM outbox") == 2
    assert count(path, "SELECT count(*) FROM episodes WHERE status = 'closed'") == 1
    store.close()


def test_old_undelivered_alerts_and_open_episodes_are_never_pruned(tmp_path: Path) -> None:
    clock = FakeClock(NOW - 365 * DAY)
    path = tmp_path / "state.db"
    store = Store.open(path, RetentionConfig(max_age_s=30 * DAY), clock=clock)
    old_closed, still_open = new_id(clock.now), new_id(clock.now)
    delivered = [event("open", old_closed, clock.now - 20), event("close", old_closed, clock.now - 10)]
    waiting = event("open", still_open, clock.now)
    add(store, [*delivered, waiting])
    store.mark_delivered([e.alert_id for e in delivered])
    clock.now = NOW  # a year on: a newer delivered alert and a newer closed episode make the old ones old
    recent = new_id(NOW)
    newer = [event("open", recent, NOW - 20), event("close", recent, NOW - 10)]
    add(store, newer)
    store.mark_delivered([e.alert_id for e in newer])
    store.prune()
    outbox = {row[0] for row in sqlite3.connect(path).execute("SELECT alert_id FROM outbox")}
    assert outbox == {waiting.alert_id, *(e.alert_id for e in newer)}
    assert [e["episode_id"] for e in store.open_episodes()] == [still_open]
    assert count(path, "SELECT count(*) FROM episodes") == 2  # the old closed one is gone
    store.close()


# damaged files at start -------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_one_started(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    garbage = b"not sqlite " * 1000
    path.write_bytes(garbage)
    (tmp_path / "state.db-wal").write_bytes(b"wal " * 100)
    with caplog.at_level(logging.ERROR, logger="edge_agent.storage"):
        store = Store.open(path, clock=FakeClock(NOW))
    moved = tmp_path / "state.db.corrupt-20270115T080000Z"
    assert store.recovered_from == moved
    assert moved.read_bytes() == garbage  # kept, never deleted
    assert (tmp_path / "state.db.corrupt-20270115T080000Z-wal").read_bytes() == b"wal " * 100
    (record,) = caplog.records
    assert str(moved) in record.getMessage()
    assert "undelivered alerts in it were not sent" in record.getMessage()
    add(store, [event("open", new_id(NOW), NOW)])  # the fresh database works
    assert store.backlog() == 1
    store.close()
    assert Store.open(path).recovered_from is None  # a sound file is opened as it is


def _damage_pages(path: Path, first_page: int) -> None:
    """Overwrite every page from `first_page` (1-based) on with noise, as a failing SD card might."""
    page_size = count(path, "PRAGMA page_size")
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek((first_page - 1) * page_size)
        f.write(np.random.default_rng(3).integers(0, 256, size - f.tell(), dtype=np.uint8).tobytes())


def test_a_malformed_database_is_moved_aside_at_start(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    store.record_windows([scored(NOW + i) for i in range(3000)])
    add(store, [event("open", new_id(NOW), NOW)])
    store.close()
    _damage_pages(path, first_page=5)
    with caplog.at_level(logging.ERROR, logger="edge_agent.storage"):
        again = Store.open(path, clock=FakeClock(NOW))
    assert again.recovered_from is not None
    assert again.recovered_from.exists()
    assert again.recovered_from.name.startswith("state.db.corrupt-")
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert again.window_count() == 0
    assert again.backlog() == 0
    again.close()


# disk faults while running ----------------------------------------------------------------------------------
def test_a_full_database_gives_up_its_oldest_windows_for_the_new_batch(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.record_windows([scored(NOW + i) for i in range(2000)])
    with store._lock:  # SQLite's own size limit: inserts beyond it fail with SQLITE_FULL, for real
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.record_windows([scored(NOW + 5000 + i) for i in range(100)])
    recorder = WindowRecorder(store)
    recorder.submit([scored(NOW + 5000 + i) for i in range(100)])
    assert recorder.flush(timeout=10)
    recorder.submit([])  # no error for the detector
    assert recorder.failed_windows == 0
    assert recorder.written == 100
    newest = store.last_windows(1)[0]["end_ts"]
    assert newest == NOW + 5099
    assert store.window_count() == 1800 + 100  # the oldest 10 % made room
    recorder.close()
    store.close()


def test_a_batch_larger_than_what_freeing_gives_is_dropped_and_freeing_stops(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.open(tmp_path / "state.db")
    store.record_windows([scored(NOW + i) for i in range(2000)])
    with store._lock:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
    recorder = WindowRecorder(store)
    with caplog.at_level(logging.ERROR, logger="edge_agent.storage"):
        for batch in range(3):
            recorder.submit([scored(NOW + 10_000 * (batch + 1) + i) for i in range(1000)])
            assert recorder.flush(timeout=10)
    recorder.submit([])  # the detector goes on
    assert recorder.failed_windows == 3000
    assert recorder.written == 0
    assert store.window_count() == 1800  # freed once; not again while freeing does not help
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once a minute, with the count
    assert "1000 windows lost so far" in caplog.records[0].getMessage()
    assert recorder.last_fault is not None
    assert "full" in recorder.last_fault
    recorder.close()
    store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), so the disk itself fills up."""
    mount_dir = tmp_path / "disk"
    mount_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_dir)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_dir
    finally:
        subprocess.run(["umount", "-l", str(mount_dir)], check=True)


def _fill(path: Path) -> None:
    """Write zeros to `path` until the filesystem is full."""
    with pytest.raises(OSError, match="No space left") as full:
        path.write_bytes(bytes(4 << 20))  # twice the filesystem: what fits stays in the file
    assert full.value.errno == errno.ENOSPC


def test_a_full_disk_drops_windows_and_detection_goes_on(small_disk: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    store = Store.open(small_disk / "state.db", RetentionConfig(max_rows=10), checkpoint_interval_s=3600.0)
    add(store, [event("open", new_id(NOW), NOW)])
    recorder = WindowRecorder(store)
    filler = small_disk / "filler"
    _fill(filler)
    with caplog.at_level(logging.ERROR, logger="edge_agent.storage"):
        for batch in range(20):
            recorder.submit([scored(NOW + batch * 100 + i) for i in range(50)])
            assert recorder.flush(timeout=10)
        recorder.submit([])  # never raises: the detector keeps scoring
        store.prune()  # neither does retention
    assert recorder.failed_windows > 0
    assert recorder.written + recorder.failed_windows == 1000
    assert "database or disk is full" in (recorder.last_fault or "")
    recorder_errors = [r for r in caplog.records if "scored windows not recorded" in r.getMessage()]
    assert len(recorder_errors) == 1  # at most once a minute
    assert store.backlog() == 1  # the alert is still there to be sent
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_agent.storage"):
        for _try in range(3):  # the WAL cannot be copied into a file that cannot grow
            assert store._keeper.checkpoint_now(timeout=10)
    assert store._keeper.failures >= 3
    assert len([r for r in caplog.records if "WAL checkpoint failed" in r.getMessage()]) == 1
    filler.unlink()  # space again: windows are recorded again
    written = recorder.written
    recorder.submit([scored(NOW + 9000 + i) for i in range(50)])
    assert recorder.flush(timeout=10)
    assert recorder.written == written + 50
    assert store.last_windows(1)[0]["end_ts"] == NOW + 9049
    recorder.close()
    store.close()


def test_a_database_corrupted_while_running_does_not_stop_recording_or_retention(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    store.record_windows([scored(NOW + i) for i in range(3000)])
    store.close()
    _damage_pages(path, first_page=5)
    # the running agent's connection, opened before the damage (`Store.open` now would move the file aside)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    running = Store(conn, path, RetentionConfig(max_rows=10))
    with caplog.at_level(logging.ERROR, logger="edge_agent.storage"):
        assert running.prune() == 0
        assert asyncio.run(running.prune_async()) == 0
        recorder = WindowRecorder(running)
        recorder.submit([scored(NOW + 5000 + i) for i in range(10)])
        assert recorder.flush(timeout=10)
        recorder.submit([])
    assert running.prune_failures == 2
    assert "malformed" in (running.last_fault or "")
    assert recorder.failed_windows == 10
    assert any("retention pass failed" in r.getMessage() for r in caplog.records)
    recorder.close()
    running.close()


@pytest.mark.parametrize(("message", "code"), [
    ("database or disk is full", 13), ("disk I/O error", 10), ("attempt to write a readonly database", 8),
    ("database disk image is malformed", 11), ("file is not a database", 26), ("database is locked", None)])
def test_disk_faults_are_told_by_their_message_where_python_gives_no_code(message: str,
                                                                          code: int | None) -> None:
    """Python 3.10's sqlite3 errors have no `sqlite_errorcode` (3.11 added it): the message tells."""
    from edge_agent.storage import _primary_code

    error = sqlite3.OperationalError(message)
    assert getattr(error, "sqlite_errorcode", None) is None
    assert _primary_code(error) == code


@pytest.mark.parametrize("fault", ["full", "read-only", "read-only, used before"])
def test_an_agent_started_on_a_full_or_read_only_disk_runs_on_a_database_in_memory(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fault: str) -> None:
    """The state directory's disk is full or read-only before the start (a fresh one, or one an agent used
    before: its lock file and database are there): the agent (in-process, a real replay source ending in a
    fault) still starts, scores and alerts, on a database in RAM, with the bundle extracted to the runtime
    directory (systemd's `RuntimeDirectory=`); its status says so."""
    from edge_agent.config import AgentConfig
    from edge_agent.supervisor import Supervisor
    from tests.integration.agent_harness import MEANS, PERIOD, STDS, make_bundle, write_config
    from tests.support import poll_until

    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "runtime"))
    bundle, keys = make_bundle(tmp_path)
    csv = tmp_path / "plant.csv"
    csv.write_text("ts,flow,pressure\n" + "".join(
        f"{i * PERIOD:.3f},{MEANS[0] + (40 * STDS[0] if i >= 60 else 0.0)},{MEANS[1]}\n" for i in range(100)))
    sources = {"plant": {"type": "replay", "path": str(csv), "timestamp_field": "ts", "speed": 0.0}}
    assets = {"pump-1": {"model": "pump", "source": "plant",
                         "channels": {"flow": "flow", "pressure": "pressure"}}}
    state = small_disk / "state"
    state.mkdir()
    config = AgentConfig.load(write_config(tmp_path, state, bundle, keys, sources, assets))
    if fault == "full":
        _fill(small_disk / "filler")
    else:
        if fault == "read-only, used before":
            config.lock_path.touch()
            Store.open(config.db_path, RetentionConfig()).close()
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    sup = Supervisor(config)

    def alert_states() -> list[str]:
        store = sup.store
        return [] if store is None else [row[0] for row in store._query("SELECT state FROM outbox")]

    async def scenario() -> dict[str, Any]:
        task = asyncio.create_task(sup.run())
        try:
            await poll_until(lambda: "open" in alert_states() or task.done(), "the open alert", timeout=30)
            assert not task.done(), "the agent stopped"
            return sup.snapshot()
        finally:
            sup.request_stop()
            await asyncio.wait_for(task, 30)

    with caplog.at_level(logging.ERROR):
        snapshot = asyncio.run(scenario())
    assert snapshot["storage"]["in_memory"] is True
    assert snapshot["counters"]["windows_scored"] > 0
    assert "running on a database in memory" in caplog.text
    assert "cannot write the pid file" in caplog.text
    assert not (state / "agent.pid").exists()
    assert not (state / "run").exists()  # the bundle went to the runtime directory


@pytest.mark.parametrize("used_before", [False, True])
def test_one_agent_per_state_directory_holds_on_a_read_only_disk(small_disk: Path, tmp_path: Path,
                                                                 used_before: bool) -> None:
    """No lock file can be made on a read-only disk: the agent locks the one a former start left, read-only,
    else the directory itself; a second agent on the same directory is still refused."""
    from types import SimpleNamespace

    from edge_agent.agentstate import agent_lock_held, agent_lock_says_stopped
    from edge_agent.configtools import ConfigError
    from edge_agent.supervisor import _hold_instance_lock

    state = small_disk / "state"
    state.mkdir()
    # the AgentConfig fields the lock reads (a whole config needs a bundle, sources and assets)
    config: Any = SimpleNamespace(state_dir=state, lock_path=state / "agent.lock",
                                  pid_path=state / "agent.pid", source=None)
    if used_before:
        config.lock_path.touch()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    first = _hold_instance_lock(config)
    try:
        with pytest.raises(ConfigError, match="another agent is running with this state directory"):
            _hold_instance_lock(config)
        assert agent_lock_held(config.lock_path)
        # the disk is writable again: a second agent that can now create the lock file is still refused
        # (both lock the state directory itself)
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        with pytest.raises(ConfigError, match="another agent is running with this state directory"):
            _hold_instance_lock(config)
        assert agent_lock_held(config.lock_path)
        assert not agent_lock_says_stopped(config.lock_path)
    finally:
        for fd in first:
            os.close(fd)
    for fd in _hold_instance_lock(config):  # free again once the first is gone
        os.close(fd)
    assert agent_lock_says_stopped(config.lock_path)


def test_a_bundle_that_cannot_be_extracted_on_a_full_disk_names_the_place_and_the_way_out(
        small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd (no $RUNTIME_DIRECTORY) the bundle is extracted under the state directory: on a full
    disk the start fails naming that directory and what to do, and leaves nothing behind."""
    from edge_agent.config import AgentConfig
    from edge_agent.pipeline import load_bundle
    from tests.integration.agent_harness import make_bundle, write_config

    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    bundle, keys = make_bundle(tmp_path)
    state = small_disk / "state"
    state.mkdir()
    (state / "run").mkdir()
    sources = {"plant": {"type": "replay", "path": str(tmp_path / "plant.csv"), "timestamp_field": "ts",
                         "fields": ["flow", "pressure"]}}
    assets = {"pump-1": {"model": "pump", "source": "plant",
                         "channels": {"flow": "flow", "pressure": "pressure"}}}
    config = AgentConfig.load(write_config(tmp_path, state, bundle, keys, sources, assets))
    _fill(small_disk / "filler")
    with pytest.raises(OSError, match=rf"cannot extract the bundle to {state / 'run'}: No space left on "
                                      r"device; free space there, or set \$RUNTIME_DIRECTORY"):
        load_bundle(config, config.run_dir)
    assert list((state / "run").iterdir()) == []
