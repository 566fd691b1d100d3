from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError, Section
from edge_agent.decisions import DecisionConfig, DecisionEngine, new_id
from edge_agent.sinks.payload import alert_payload
from edge_agent.storage import RetentionConfig, Store
from edge_agent.types import AlertEvent, GatewayIdentity, RootCauseEntry, ScoredWindow, Window
from tests.support import FakeClock, wait_until

pytestmark = pytest.mark.integration

IDENTITY = GatewayIdentity("s1", "a1", "l1", "gw1")


def scored(ts: float, score: float = 0.5, asset: str = "pump-1") -> ScoredWindow:
    window = Window(asset, "pump", ts - 10, ts, np.zeros((2, 4), np.float32))
    return ScoredWindow(window, score, score + 0.1, 1.0, np.array([0.25, 0.75], np.float32),
                        np.array([0.5, -0.5], np.float32), np.zeros(4, np.float32), "b", "1.0")


def event(state: str = "open", episode: str | None = None, ts: float = 1_800_000_000.0) -> AlertEvent:
    return AlertEvent(new_id(ts), episode or new_id(ts), state, ts, ts, "pump-1", "pump", "b", "1.0", 2.0,
                      1.0, "warning", ts - 10, ts, ts - 3, (RootCauseEntry("flow", 1.0),), {"reason": state})


def add(store: Store, events: list[AlertEvent]) -> None:
    store.add_alerts(events, lambda e: f"t/{e.asset}", lambda e: alert_payload(e, IDENTITY))


def test_open_sets_wal_and_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"windows", "episodes", "outbox", "baselines", "counters"} <= tables


def test_commits_never_checkpoint_the_wal_keeper_does(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path, checkpoint_interval_s=3600.0)
    try:
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(300):  # far beyond SQLite's default auto-checkpoint of 1,000 pages
            store.record_windows([scored(1_800_000_000.0 + i * 10 + k) for k in range(10)])
        wal_pages = (path.parent / "state.db-wal").stat().st_size // 4096
        assert wal_pages > 1000  # nothing was copied back and the WAL restarted: no commit checkpointed
        assert store.wal_checkpoints == 0
        assert store.checkpoint(timeout=10.0)
        assert store.wal_checkpoints == 1
        assert store.window_count() == 3000
    finally:
        store.close()


def test_wal_keeper_checkpoints_by_itself_while_writes_come_in(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db", checkpoint_interval_s=0.05)
    try:
        add(store, [event()])
        wait_until(lambda: store.wal_checkpoints >= 1, what="a background checkpoint")
        seen = store.wal_checkpoints
        time.sleep(0.3)  # no writes: no more checkpoints
        assert store.wal_checkpoints == seen
        store.record_windows([scored(1_800_000_000.0)])
        wait_until(lambda: store.wal_checkpoints > seen, what="a checkpoint after the next write")
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1


def test_windows_ring_buffer_is_capped_by_rows_and_age(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000.0)
    store = Store.open(tmp_path / "state.db", RetentionConfig(max_rows=5, max_age_s=100.0), clock=clock)
    store.record_windows([scored(clock.now - 500 + i) for i in range(3)])  # too old
    store.record_windows([scored(clock.now - 50 + i) for i in range(8)])
    removed = store.prune()
    assert removed == 3 + 3
    rows = store.last_windows(10)
    assert [r["end_ts"] for r in rows] == [clock.now - 50 + i for i in range(7, 2, -1)]
    assert rows[0]["channel_error"] == pytest.approx([0.25, 0.75])
    assert rows[0]["latent_mean"] == pytest.approx([0.5, -0.5])


def test_outbox_order_delivery_and_backlog(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    events = [event(ts=1_800_000_000.0 + i) for i in range(5)]
    add(store, events)
    assert store.backlog() == 5
    pending = store.pending(3)
    assert [p.alert_id for p in pending] == [e.alert_id for e in events[:3]]
    assert json.loads(pending[0].payload)["alert_id"] == events[0].alert_id
    store.mark_delivered([events[0].alert_id, events[1].alert_id])
    assert [p.alert_id for p in store.pending(10)] == [e.alert_id for e in events[2:]]
    assert store.backlog() == 3


def test_a_failing_row_rolls_back_the_whole_batch_and_a_stored_alert_id_is_skipped(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    first = event()
    add(store, [first])
    broken = dataclasses.replace(event(), episode_id=None)  # NOT NULL: the insert fails
    with pytest.raises(sqlite3.IntegrityError):
        add(store, [event(), broken])
    assert store.backlog() == 1  # the batch was one transaction
    add(store, [first, event()])  # `first` is in the outbox already (a misreported commit): skipped
    assert store.backlog() == 2
    assert [row["alerts"] for row in store.open_episodes() if row["episode_id"] == first.episode_id] == [1]


def test_outbox_and_open_episodes_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = Store.open(path)
    opened = event("open")
    add(store, [opened])
    store.close()
    again = Store.open(path)
    assert [p.alert_id for p in again.pending(10)] == [opened.alert_id]
    (episode,) = again.open_episodes()
    assert episode["episode_id"] == opened.episode_id
    add(again, [event("close", episode=opened.episode_id, ts=1_800_000_100.0)])
    assert again.open_episodes() == []


def test_decision_engine_resumes_an_open_episode_after_restart(tmp_path: Path) -> None:
    manifest = {"name": "b", "models": [{"name": "pump", "input": {"channels": ["a", "b"]},
                                         "threshold": {"value": 1.0},
                                         "severity": [{"level": "warning", "min_score": 1.0}],
                                         "debounce": {"k": 1, "n": 1, "clear_windows": 2}}]}
    path = tmp_path / "state.db"
    store = Store.open(path)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, manifest)
    opened = engine.process(scored(1_800_000_000.0, score=3.0), 1_800_000_000.0)
    add(store, opened)
    store.close()

    store = Store.open(path)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, manifest)
    assert [e["episode_id"] for e in engine.open_episodes()] == [opened[0].episode_id]
    # the same episode continues: no second open
    assert engine.process(scored(1_800_000_001.0, score=3.0), 1_800_000_001.0) == []
    assert engine.process(scored(1_800_000_002.0, score=0.1), 1_800_000_002.0) == []
    (close,) = engine.process(scored(1_800_000_003.0, score=0.1), 1_800_000_003.0)
    assert (close.state, close.episode_id) == ("close", opened[0].episode_id)


def test_counters_and_baselines(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.incr_counters({"dropped": 2, "invalid": 1})
    store.incr_counters({"dropped": 3, "stale": 0})
    store.set_counter("restarts", 7)
    assert store.counters() == {"dropped": 5, "invalid": 1, "restarts": 7}
    store.put_baseline("pump-1", "pump", "1.0", [0.5, 0.7], None)
    store.put_baseline("pump-1", "pump", "1.0", [0.5, 0.7, 0.6], 0.6)
    record = store.get_baseline("pump-1", "pump", "1.0")
    assert record is not None
    assert record.baseline == pytest.approx(0.6)
    assert record.raw_scores == pytest.approx((0.5, 0.7, 0.6))
    assert store.get_baseline("pump-1", "pump", "2.0") is None


def test_sqlite_utils_cli_reads_the_database(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    store.record_windows([scored(1_800_000_000.0)])
    store.close()
    db = str(tmp_path / "state.db")
    out = subprocess.run([sys.executable, "-m", "sqlite_utils", "rows", db, "windows"], capture_output=True,
                         text=True, check=True).stdout
    (row,) = json.loads(out)
    assert json.loads(row["channel_error"]) == pytest.approx([0.25, 0.75])


def test_retention_config_parsing() -> None:
    assert RetentionConfig.from_section(Section({"max_rows": 10, "max_age_days": 2}, "retention")) == \
        RetentionConfig(10, 2 * 86400.0)
    with pytest.raises(ConfigError, match=r"retention -> max_rows"):
        RetentionConfig.from_section(Section({"max_rows": 0}, "retention"))
    with pytest.raises(ConfigError, match=r"retention -> rows: unknown key"):
        RetentionConfig.from_section(Section({"rows": 3}, "retention"))
