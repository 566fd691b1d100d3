"""Alerts survive a failed outbox write; orphaned episodes close; durability and chunked retention.

Real SQLite files throughout: a second connection holding an exclusive lock makes the agent's write fail
("database is locked") the way another process (a backup, `sqlite3` in a shell) would.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edge_agent.decisions import DecisionConfig, DecisionEngine
from edge_agent.pipeline import AlertWriter
from edge_agent.storage import BUSY_TIMEOUT_S, LOOP_BUSY_TIMEOUT_S, RetentionConfig, Store
from edge_agent.types import GatewayIdentity, ScoredWindow, Window

pytestmark = pytest.mark.integration

IDENTITY = GatewayIdentity("s1", "a1", "l1", "gw1")
MANIFEST = {"name": "b", "version": "1.0", "models": [
    {"name": "pump", "input": {"channels": ["a", "b"]}, "threshold": {"value": 1.0},
     "severity": [{"level": "warning", "min_score": 1.0}], "debounce": {"k": 1, "n": 1, "clear_windows": 2}}]}
T0 = 1_800_000_000.0
ALERT_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "edge_agent/schemas/alert.schema.json").read_text())


def scored(ts: float, score: float, asset: str = "pump-1", start: float | None = None) -> ScoredWindow:
    window = Window(asset, "pump", ts - 10 if start is None else start, ts, np.zeros((2, 4), np.float32))
    return ScoredWindow(window, score, score, 1.0, np.array([0.25, 0.75], np.float32),
                        np.array([0.5, -0.5], np.float32), np.zeros(4, np.float32), "b", "1.0")


class Woken:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def writer(store: Store) -> tuple[AlertWriter, Woken]:
    wake = Woken()
    return AlertWriter(store, IDENTITY, lambda e: f"alerts/{e.asset}", wake), wake


Locked = tuple[Path, Store, AlertWriter, Woken, DecisionEngine, sqlite3.Connection]


def locked_writer(tmp_path: Path) -> Locked:
    """A store with its AlertWriter and decision engine, and a second connection holding an exclusive lock
    on the database (another process), so the next outbox write fails; the caller rolls it back."""
    path = tmp_path / "agent.db"
    store = Store.open(path)
    alerts, wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return path, store, alerts, wake, engine, other


def outbox(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        return [json.loads(payload) for (payload,) in conn.execute("SELECT payload FROM outbox ORDER BY seq")]


def test_alert_kept_in_memory_while_the_database_is_locked_then_written(tmp_path: Path) -> None:
    path, store, alerts, wake, engine, other = locked_writer(tmp_path)
    opened = engine.process_batch([scored(T0, 3.0)], T0)
    assert [e.state for e in opened] == ["open"]
    assert alerts.write(opened) is False
    assert [e.alert_id for e, _t, _p in alerts.unstored] == [opened[0].alert_id]
    assert wake.count == 1  # the sink is woken all the same: it sends the alert from memory meanwhile
    other.execute("ROLLBACK")
    other.close()
    # the next batch carries the kept alert first, then its own (the close), in order
    engine.process_batch([scored(T0 + 1, 0.1)], T0 + 1)
    closed = engine.process_batch([scored(T0 + 2, 0.1)], T0 + 2)
    assert alerts.write(closed) is True
    assert alerts.unstored == []
    assert wake.count == 2
    rows = outbox(path)
    assert [(r["state"], r["episode_id"]) for r in rows] == [("open", opened[0].episode_id),
                                                               ("close", opened[0].episode_id)]
    assert store.open_episodes() == []  # the episode row was written and closed: consistent with memory
    store.close()


def test_event_loop_writes_give_up_on_a_locked_database_in_a_quarter_second(tmp_path: Path) -> None:
    """Alerts and delivery marks are written on the event loop: another process holding the database makes
    them fail after `LOOP_BUSY_TIMEOUT_S` (kept and retried), not after the 10 s a worker thread waits."""
    path = tmp_path / "agent.db"
    store = Store.open(path)
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    events = engine.process_batch([scored(T0, 3.0)], T0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        assert alerts.write(events) is False  # kept in memory
        waited_alerts = time.monotonic() - began
        began = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):  # the sink retries its marks
            store.mark_delivered(["x"])
        waited_marks = time.monotonic() - began
        for waited in (waited_alerts, waited_marks):
            assert LOOP_BUSY_TIMEOUT_S <= waited < BUSY_TIMEOUT_S / 2
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert alerts.retry() is True
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_S * 1000  # restored
    store.close()


def test_retry_writes_kept_alerts_without_new_ones(tmp_path: Path) -> None:
    _path, store, alerts, _wake, engine, other = locked_writer(tmp_path)
    assert alerts.write(engine.process_batch([scored(T0, 3.0)], T0)) is False
    assert alerts.retry() is False
    other.execute("ROLLBACK")
    other.close()
    assert alerts.retry() is True
    assert [row["episode_id"] for row in store.open_episodes()] == [e["episode_id"]
                                                                    for e in engine.open_episodes()]
    store.close()


def test_window_times_out_of_range_do_not_crash_rendering(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "agent.db")
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    events = engine.process_batch([scored(1.7e12, 3.0, start=1.7e12 - 10)], T0)  # year 55840
    assert alerts.write(events) is True
    (row,) = outbox(tmp_path / "agent.db")
    assert row["state"] == "open"
    assert row["window"]["end"] == row["time"]
    store.close()


def test_episode_of_an_asset_removed_from_the_config_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    store = Store.open(path)
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    opened = engine.process_batch([scored(T0, 3.0, asset="pump-1"), scored(T0, 3.0, asset="pump-2")], T0)
    assert alerts.write(opened)
    store.close()
    store = Store.open(path)  # restart with pump-2 removed from the config
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    closed = engine.orphaned_episodes(T0 + 5, {("pump-1", "pump")})
    assert [(e.asset, e.state, e.extra["reason"]) for e in closed] == [("pump-2", "close", "asset_removed")]
    assert alerts.write(closed)
    assert [row["asset"] for row in store.open_episodes()] == ["pump-1"]
    assert [(r["asset"], r["state"]) for r in outbox(path)][-1] == ("pump-2", "close")
    assert [e["asset"] for e in engine.open_episodes()] == ["pump-1"]
    store.close()


@pytest.mark.parametrize("legacy", [False, True])
def test_episode_of_a_model_gone_from_the_bundle_closes_with_its_threshold(tmp_path: Path,
                                                                            legacy: bool) -> None:
    """An episode open when the agent stopped, whose model the next bundle lacks, is closed at start-up
    (model_removed). Its threshold comes from the episode row; a database from before that column has none,
    and the close alert says null. It used to render NaN, which JSON refuses: every start crashed."""
    path = tmp_path / "agent.db"
    store = Store.open(path)
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    assert alerts.write(engine.process_batch([scored(T0, 3.0)], T0))
    store.close()
    if legacy:
        with sqlite3.connect(path) as conn:
            # as before the columns (peak_window came later still): both re-added, empty
            conn.execute("ALTER TABLE episodes DROP COLUMN threshold")
            conn.execute("ALTER TABLE episodes DROP COLUMN peak_window")
    store = Store.open(path)
    alerts, _wake = writer(store)
    valve = {**MANIFEST, "models": [{**MANIFEST["models"][0], "name": "valve"}]}
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, valve)
    closed = engine.orphaned_episodes(T0 + 5)
    assert [(e.state, e.extra["reason"]) for e in closed] == [("close", "model_removed")]
    assert alerts.write(closed)
    last = outbox(path)[-1]
    jsonschema.validate(last, ALERT_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert (last["state"], last["threshold"]) == ("close", None if legacy else 1.0)
    assert store.open_episodes() == []
    store.close()


@pytest.mark.parametrize("peak_after_restart", [False, True])
def test_a_close_after_a_restart_reports_the_episode_s_peak_window(tmp_path: Path,
                                                                    peak_after_restart: bool) -> None:
    """The agent stops (or reloads) during an episode and starts again; the fault then clears. The close
    reports the episode's peak window, kept with the episode row (its score, window and root cause), not the
    best window since the restart; unless a window after the restart scored higher."""
    path = tmp_path / "agent.db"
    store = Store.open(path)
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    peak = scored(T0, 6.0)
    peak.channel_error[:] = [0.9, 0.1]  # channel a carried the peak
    assert alerts.write(engine.process_batch([peak], T0))
    assert alerts.write(engine.process_batch([scored(T0 + 10, 2.0)], T0 + 10))  # nothing sent: no change
    store.close()
    store = Store.open(path)  # the restart
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    after = [scored(T0 + 20, 7.0 if peak_after_restart else 1.5), scored(T0 + 30, 0.2), scored(T0 + 40, 0.2)]
    events = [e for i, window in enumerate(after) for e in engine.process_batch([window], T0 + 20 + 10 * i)]
    assert alerts.write(events)
    close = outbox(path)[-1]
    jsonschema.validate(close, ALERT_SCHEMA, format_checker=jsonschema.FormatChecker())
    assert close["state"] == "close"
    if peak_after_restart:
        assert (close["score"], close["peak_score"]) == (7.0, 7.0)
        assert close["root_cause"]["channels"][0]["channel"] == "b"
        assert close["window"] != outbox(path)[0]["window"]
    else:
        opened = outbox(path)[0]
        assert (close["score"], close["peak_score"]) == (6.0, 6.0)
        assert close["root_cause"] == opened["root_cause"]  # channel a, as the peak said
        assert close["root_cause"]["channels"][0]["channel"] == "a"
        assert close["window"] == opened["window"]
    store.close()


def test_alert_transactions_commit_with_full_sync(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "agent.db")
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    assert alerts.write(engine.process_batch([scored(T0, 3.0)], T0))
    store.mark_delivered([e["episode_id"] for e in engine.open_episodes()])
    store.record_windows([scored(T0, 0.1)])
    store._conn.set_trace_callback(None)
    steps = [s for s in statements if s.startswith(("PRAGMA synchronous", "BEGIN", "COMMIT"))]
    full = ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE", "COMMIT", "PRAGMA synchronous=NORMAL"]
    # FULL for the outbox; the connection's NORMAL for the delivery marks (a lost mark only sends the
    # alert again) and the ring buffer
    assert steps == [*full, "BEGIN IMMEDIATE", "COMMIT", "BEGIN IMMEDIATE", "COMMIT"]
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    store.close()


def test_prune_deletes_in_bounded_chunks(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "agent.db", RetentionConfig(max_rows=10, max_age_s=1e9))
    store.record_windows([scored(T0 + i, 0.1) for i in range(137)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    assert store.prune(chunk=20) == 127
    store._conn.set_trace_callback(None)
    assert store.window_count() == 10
    assert statements.count("COMMIT") >= 127 // 20  # several short transactions, not one long one
    store.close()


def test_a_worker_waiting_for_a_locked_database_does_not_hold_up_event_loop_writes(tmp_path: Path) -> None:
    """The ring-buffer thread waits up to 10 s for another process's lock, in slices: between them the
    store is free, so a delivery mark on the event loop fails after its own quarter second (and is retried)
    instead of queueing behind the worker for 10 s (past a 30 s watchdog after a few of those)."""
    path = tmp_path / "agent.db"
    store = Store.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    worker_error: list[BaseException] = []

    def worker() -> None:
        try:
            store.record_windows([scored(T0, 0.1)])
        except BaseException as exc:  # what the worker saw is checked below
            worker_error.append(exc)

    thread = threading.Thread(target=worker)
    try:
        thread.start()
        time.sleep(0.2)  # the worker is waiting for the lock now
        began = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.mark_delivered(["x"])
        assert time.monotonic() - began < 2 * LOOP_BUSY_TIMEOUT_S + 0.5
        assert thread.is_alive()  # still waiting its turn
    finally:
        other.execute("ROLLBACK")
        other.close()
    thread.join(BUSY_TIMEOUT_S)
    assert worker_error == []  # the lock went away within its 10 s: the windows were written
    assert store._query("SELECT count(*) FROM windows")[0][0] == 1
    store.close()


def test_alerts_a_closing_pipeline_cannot_write_go_to_the_next_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A reload while another process holds the database: the closing pipeline gives up on an alert, hands
    it to the next pipeline, and that one writes it (same alert id) once the database is free. Before, the
    next pipeline's writer started empty and the alert was lost."""
    import asyncio

    from edge_agent import supervisor as supervisor_module
    from edge_agent.config import AgentConfig
    from edge_agent.supervisor import Supervisor
    from tests.integration.agent_harness import make_bundle, serial_asset, serial_source, write_config

    monkeypatch.setattr(supervisor_module, "CLOSE_ALERT_ATTEMPTS", 1)  # give up after one try (0.5 s)
    bundle, keys = make_bundle(tmp_path)
    state = tmp_path / "state"
    sources = {"line1": serial_source("/dev/null")}
    assets = {"pump-3": serial_asset()}
    config = AgentConfig.load(write_config(tmp_path, state, bundle, keys, sources, assets))

    async def scenario() -> list[str]:
        supervisor = Supervisor(config)
        state.mkdir(parents=True, exist_ok=True)
        await supervisor.open_pipeline()
        assert supervisor.decisions is not None
        assert supervisor.alerts is not None
        window = Window("pump-3", "pump", T0 - 0.7, T0, np.zeros((2, 8), np.float32))
        hot = ScoredWindow(window, 50.0, 50.0, 1.0, np.array([0.9, 0.1], np.float32), np.zeros(2, np.float32),
                           np.zeros(8, np.float32), "test-bundle", "1.0.0")
        other = sqlite3.connect(config.db_path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(2.0, lambda: (other.execute("ROLLBACK"), other.close()))
        release.start()  # after the closing pipeline gave up on the alert, before its last counters
        try:
            events = supervisor.decisions.process_batch([hot], T0)
            assert [e.state for e in events] == ["open"]
            assert supervisor.alerts.write(events) is False
            await supervisor.close_pipeline()  # a reload
        finally:
            release.join()
        await supervisor.open_pipeline()  # its writer starts with the alert and writes it
        await supervisor.close_pipeline()
        return [e.alert_id for e in events]

    decided = asyncio.run(scenario())
    assert "1 alerts could not be written to the outbox before the pipeline stopped" in caplog.text
    assert [row["alert_id"] for row in outbox(config.db_path)] == decided


def test_alerts_answered_while_in_memory_are_written_with_their_outcome_and_episode(tmp_path: Path) -> None:
    """The sink sent two alerts from memory while the outbox refused writes: the broker delivered one and
    rejected the other for good. Once the database takes writes they are stored so (delivered; parked as
    rejected and counted), with their episode rows, and neither is pending again."""
    path, store, alerts, _wake, engine, other = locked_writer(tmp_path)
    opened = engine.process_batch([scored(T0, 3.0, asset="pump-1"), scored(T0, 3.0, asset="pump-2")], T0)
    assert alerts.write(opened) is False
    ids = [e.alert_id for e in opened]
    assert [a for a, _t, _p in alerts.pending()] == ids
    assert alerts.acknowledged({ids[0]: None, ids[1]: "0x87 Not authorized", "elsewhere": None}) == {
        "elsewhere": None}  # not held here: the sink marks it in the outbox
    assert alerts.pending() == []
    other.execute("ROLLBACK")
    other.close()
    assert alerts.retry() is True
    assert store.backlog() == 0
    assert store.rejected() == 1
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT alert_id, delivered_ts IS NOT NULL, rejected FROM outbox ORDER BY seq")
        assert rows.fetchall() == [(ids[0], 1, None), (ids[1], 0, "0x87 Not authorized")]
        counters = dict(conn.execute("SELECT name, value FROM counters"))
    assert counters["alerts_rejected"] == 1
    assert {row["asset"] for row in store.open_episodes()} == {"pump-1", "pump-2"}


def test_an_alert_already_in_the_outbox_is_skipped_not_refused(tmp_path: Path) -> None:
    """A COMMIT reported failed after it had committed leaves the alerts in memory although the outbox has
    them: writing them again must neither fail on the unique alert id (every later alert would then stay in
    memory) nor count their episode twice."""
    store = Store.open(tmp_path / "agent.db")
    alerts, _wake = writer(store)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)
    opened = engine.process_batch([scored(T0, 3.0)], T0)
    assert alerts.write(opened) is True
    alerts.unstored = [alerts._render(event) for event in opened]  # as a misreported commit leaves them
    closed = engine.process_batch([scored(T0 + 1, 0.1)], T0 + 1) + engine.process_batch([scored(T0 + 2, 0.1)],
                                                                                        T0 + 2)
    assert alerts.write(closed) is True
    assert [row["state"] for row in outbox(tmp_path / "agent.db")] == ["open", "close"]
    with sqlite3.connect(tmp_path / "agent.db") as conn:
        assert conn.execute("SELECT status, alerts FROM episodes").fetchall() == [("closed", 2)]
