"""`Store`, the single writer of the state database: the windows ring buffer and its retention, the alert
outbox and episodes, score baselines and counters, over one connection and one lock.

Alert transactions commit with `synchronous=FULL`; the rest with `synchronous=NORMAL` (the package
docstring says why). A file that cannot be opened is moved aside (damaged) or replaced by a database in
memory (a disk fault, `memory_fallback`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.storage.connection import BUSY_TIMEOUT_S, _connect, _move_aside, _undelivered_in
from edge_agent.storage.faults import _DISK_ERRNOS, _DamagedFileError, _disk_fault, _locked, _read_only_fs
from edge_agent.storage.schema import (
    _ENCODE,
    BaselineRecord,
    OutboxRow,
    RetentionConfig,
    StorageError,
    _json_vector,
    _json_vectors,
)
from edge_agent.storage.wal import CHECKPOINT_INTERVAL_S, _WalKeeper
from edge_agent.types import AlertEvent, ScoredWindow

log = logging.getLogger(__name__)

PRUNE_CHUNK_ROWS = 5_000  # rows deleted per retention transaction: the writer lock is never held long
# Writes made on the event loop (alerts, delivery marks, score baselines) wait at most this long, then fail
# and are retried (`pipeline.AlertWriter` keeps the alerts in memory, the sink retries its marks, the baseline
# tracker its state): a `sqlite3` shell or a backup holding the database must not stall the windows, nor the
# watchdog pings, for seconds.
LOOP_BUSY_TIMEOUT_S = 0.25
# While another process holds the database, a writer waits for it in slices of this length, holding the
# store's lock only during a slice: a worker thread waiting its 10 s never holds up the event loop's writes
# (which then fail after their own 0.25 s and are retried) or its watchdog pings.
LOCK_SLICE_S = 0.05
LOCK_RETRY_PAUSE_S = 0.02
MEMORY_MAX_ROWS = 10_000  # windows a database in RAM keeps (`Store.open(memory_fallback=True)`)
FREE_FRACTION = 0.1  # on a full disk the ring buffer gives up this share of its oldest windows, then retries


class Store:
    """The single writer of the state database. Thread-safe (one lock): the event loop and the worker threads
    (ring buffer, retention, status counters) share the connection."""

    def __init__(self, conn: sqlite3.Connection, path: Path, retention: RetentionConfig,
                 clock: Callable[[], float] = time.time,
                 checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S, *, in_memory: bool = False) -> None:
        self._conn = conn
        self.path = path
        self.in_memory = in_memory  # `open(memory_fallback=True)` could not use the file: nothing is kept
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        self._keeper = _WalKeeper(Path(":memory:") if in_memory else path, checkpoint_interval_s)
        self.recovered_from: Path | None = None  # where `open` moved a damaged database (for status)
        self.prune_failures = 0  # retention passes a disk fault stopped (`DISK_FAULTS`)
        self.last_fault: str | None = None  # the latest such error, for status
        self.last_fault_at = 0.0  # its wall-clock time (status shows the newer of the store's and recorder's)

    @classmethod
    def open(cls, path: Path, retention: RetentionConfig | None = None,
             clock: Callable[[], float] = time.time,
             checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S, memory_fallback: bool = False) -> Store:
        """Open (creating if needed) the database at `path` with WAL and the current schema.

        A file SQLite finds damaged (`file is not a database`, `database disk image is malformed`, a failed
        `PRAGMA quick_check`) would fail every start: it is moved aside with its `-wal` and `-shm` to
        `<name>.corrupt-<UTC time>` (never deleted), logged as an ERROR, and a fresh database is started;
        `recovered_from` names the moved file. `memory_fallback` (the agent): when a disk fault
        (`DISK_FAULTS`, or ENOSPC/EDQUOT/EROFS/EIO, or a directory on a filesystem mounted read-only: a
        full or read-only disk, an I/O error) keeps the file from opening, a fresh database in RAM is used
        instead (`in_memory`; `MEMORY_MAX_ROWS` windows at most), so detection and alerts still run; nothing
        in it outlives the process."""
        path = Path(path)
        moved: Path | None = None
        retention = retention or RetentionConfig()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = _connect(path)
            except _DamagedFileError as exc:
                moved = _move_aside(path, clock())
                log.error("state database %s is damaged (%s): moved it aside to %s and started a fresh one;"
                          " %s undelivered alerts in it were not sent", path, exc, moved,
                          _undelivered_in(moved))
                conn = _connect(path)
        except (sqlite3.Error, OSError, _DamagedFileError) as exc:
            disk = (_disk_fault(exc) or getattr(exc, "errno", None) in _DISK_ERRNOS
                    or _read_only_fs(path.parent))
            if not (memory_fallback and disk):
                raise StorageError(f"{path}: cannot open the state database: {exc}") from exc
            log.error("state database %s cannot be opened (%s): running on a database in memory; scored "
                      "windows, alerts and episodes are not kept across a restart. Free the disk and restart "
                      "the agent", path, exc)
            memory = cls(_connect(path, memory=True), path,
                         dataclasses.replace(retention, max_rows=min(retention.max_rows, MEMORY_MAX_ROWS)),
                         clock, checkpoint_interval_s, in_memory=True)
            memory.last_fault, memory.last_fault_at = str(exc), time.time()
            return memory
        log.info("state database %s open (WAL)", path)
        store = cls(conn, path, retention, clock, checkpoint_interval_s)
        store.recovered_from = moved
        return store

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False,
                     busy_s: float = BUSY_TIMEOUT_S) -> Iterator[sqlite3.Connection]:
        """One write transaction; `durable`: the commit is fsynced (synchronous=FULL) before it returns;
        `busy_s`: how long to wait for another process's lock before `database is locked`, in slices
        (`LOCK_SLICE_S`) between which the store's lock is free for other threads."""
        self._begin(busy_s, durable)  # returns holding self._lock, inside BEGIN IMMEDIATE
        try:
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._keeper.wrote()
        finally:
            self._release(durable)

    def _rollback(self) -> None:
        """Roll back what is left of a failed transaction. SQLite may have rolled it back itself (disk full,
        I/O error), and a COMMIT may have failed: the connection must not stay inside it either way."""
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # the original error is the one to raise
            log.warning("%s: rollback failed: %s", self.path, exc)

    def _begin(self, busy_s: float, durable: bool) -> None:
        deadline = time.monotonic() + busy_s
        while True:
            self._lock.acquire()
            try:
                if durable:
                    self._conn.execute("PRAGMA synchronous=FULL")
                wait_ms = max(1, int(min(LOCK_SLICE_S, deadline - time.monotonic()) * 1000))
                self._conn.execute(f"PRAGMA busy_timeout={wait_ms}")
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except BaseException as exc:
                self._release(durable)
                if not (isinstance(exc, sqlite3.OperationalError) and _locked(exc)) \
                        or time.monotonic() >= deadline:
                    raise
            time.sleep(LOCK_RETRY_PAUSE_S)  # the lock is free meanwhile

    def _release(self, durable: bool) -> None:
        """Undo a transaction's settings on the connection and let go of the store's lock."""
        try:
            if durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")  # the default again
        finally:
            self._lock.release()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            return list(cur.fetchall())

    # windows ring buffer -------------------------------------------------------------------------------
    def record_windows(self, scored: Sequence[ScoredWindow]) -> None:
        """Append scored windows to the ring buffer (one transaction)."""
        if not scored:
            return
        latents = _json_vectors([s.latent_mean for s in scored])
        errors = _json_vectors([s.channel_error for s in scored])
        rows = [(s.window.asset, s.window.model, s.bundle_name, s.bundle_version, s.window.start_ts,
                 s.window.end_ts, float(s.score), float(s.raw_score), float(s.threshold),
                 int(s.score > s.threshold), latent, error)
                for s, latent, error in zip(scored, latents, errors, strict=True)]
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO windows (asset, model, bundle_name, bundle_version, start_ts, end_ts, score,"
                " raw_score, threshold, above, latent_mean, channel_error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def window_count(self) -> int:
        return int(self._query("SELECT count(*) FROM windows")[0][0])

    def last_windows(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent windows, newest first, vectors decoded (for status and drift)."""
        rows = self._query(
            "SELECT asset, model, bundle_version, start_ts, end_ts, score, raw_score, threshold, above,"
            " latent_mean, channel_error FROM windows ORDER BY id DESC LIMIT ?", (limit,))
        keys = ("asset", "model", "bundle_version", "start_ts", "end_ts", "score", "raw_score", "threshold",
                "above", "latent_mean", "channel_error")
        out = []
        for row in rows:
            item = dict(zip(keys, row, strict=True))
            item["latent_mean"] = json.loads(item["latent_mean"])
            item["channel_error"] = json.loads(item["channel_error"])
            out.append(item)
        return out

    def prune(self, chunk: int = PRUNE_CHUNK_ROWS) -> int:
        """Drop windows beyond the row cap or older than the age cap, and delivered outbox rows and closed
        episodes older than the age cap, in transactions of at most `chunk` rows each (other writers get
        the lock in between). Returns the number of windows removed; 0, logged, on a disk fault
        (`DISK_FAULTS`: the retention loop goes on, counted in `prune_failures`).

        Age is measured against the newest row of the same clock, never past the gateway's clock: each
        (asset, model)'s windows against its newest `end_ts` (the device's time), delivered outbox rows
        against the newest `delivered_ts`, closed episodes against the newest closed `end_ts` (the gateway's
        clock too).
        A device whose clock is years off, or a gateway clock stepping forward, thus never empties a table;
        undelivered (and rejected) alerts and open episodes are never pruned."""
        try:
            return self._prune(chunk)
        except sqlite3.Error as exc:
            if not _disk_fault(exc):
                raise
            self.prune_failures += 1
            self.last_fault, self.last_fault_at = str(exc), time.time()
            log.error("%s: retention pass failed, the disk or the database file failed (%s); %d failed"
                      " so far", self.path, exc, self.prune_failures)
            return 0

    def _prune(self, chunk: int) -> int:
        now, max_age = self._clock(), self.retention.max_age_s
        removed = 0
        for asset, model, newest in self._window_groups():
            removed += self._delete_in_chunks(
                "DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE asset = ? AND model = ?"
                " AND end_ts < ? LIMIT ?)", (asset, model, min(now, newest) - max_age), chunk)
        removed += self._delete_in_chunks(
            "DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE id <= (SELECT id FROM windows"
            " ORDER BY id DESC LIMIT 1 OFFSET ?) LIMIT ?)", (self.retention.max_rows,), chunk)
        self._delete_in_chunks(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_ts IS NOT NULL AND"
            " delivered_ts < min(?, (SELECT max(delivered_ts) FROM outbox)) - ? LIMIT ?)", (now, max_age),
            chunk)
        newest_closed = self._query("SELECT max(end_ts) FROM episodes WHERE status = 'closed'")[0][0]
        if newest_closed is not None:  # episode times are the gateway's clock: one newest for all
            self._delete_in_chunks(
                "DELETE FROM episodes WHERE episode_id IN (SELECT episode_id FROM episodes WHERE status ="
                " 'closed' AND end_ts < ? LIMIT ?)", (min(now, float(newest_closed)) - max_age,), chunk)
        if removed:
            log.debug("pruned %d windows", removed)
        return removed

    def _window_groups(self) -> Iterator[tuple[str, str, float]]:
        """Each (asset, model) in the ring buffer with its newest `end_ts`, by index seeks (a skip scan of
        `windows_asset_model`), not a scan of the table."""
        row = self._query("SELECT asset, model FROM windows ORDER BY asset, model LIMIT 1")
        while row:
            asset, model = row[0]
            newest = self._query("SELECT max(end_ts) FROM windows WHERE asset = ? AND model = ?",
                                 (asset, model))[0][0]
            if newest is not None:  # None: `free_space` emptied the group meanwhile
                yield asset, model, float(newest)
            row = self._query("SELECT asset, model FROM windows WHERE (asset, model) > (?, ?)"
                              " ORDER BY asset, model LIMIT 1", (asset, model))

    def free_space(self) -> int:
        """Delete the oldest `FREE_FRACTION` of the ring buffer (by insertion order, one transaction), so a
        full disk takes new windows: SQLite reuses the freed pages without a VACUUM. Returns the number of
        windows deleted; logged as a WARNING."""
        first, last = self._query("SELECT min(id), max(id) FROM windows")[0]
        if first is None:
            return 0
        upto = first + max(1, int((last - first + 1) * FREE_FRACTION))
        count = self._delete_in_chunks(  # in chunks, as retention: the writer lock is never held long
            "DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE id < ? LIMIT ?)", (upto,),
            PRUNE_CHUNK_ROWS)
        log.warning("%s: disk full: deleted the %d oldest scored windows to make room", self.path, count)
        return count

    def _delete_in_chunks(self, sql: str, params: tuple[Any, ...], chunk: int) -> int:
        total = 0
        while True:
            with self._transaction() as conn:
                count = max(conn.execute(sql, (*params, chunk)).rowcount, 0)
            total += count
            if count < chunk:
                return total

    async def prune_async(self, chunk: int = PRUNE_CHUNK_ROWS) -> int:
        """`prune` in a worker thread, so a large backlog never blocks the event loop."""
        return await asyncio.to_thread(self.prune, chunk)

    # alerts: outbox + episodes ---------------------------------------------------------------------------
    def add_alerts(self, events: Sequence[AlertEvent], topic_for: Callable[[AlertEvent], str],
                   payload_for: Callable[[AlertEvent], bytes],
                   outcomes: Mapping[str, str | None] | None = None) -> None:
        """Write alerts to the outbox and their episodes to `episodes`, in one transaction (fsynced).

        Topic and payload are rendered now, so what is delivered after a restart is byte for byte what
        was decided before it. `outcomes`: alerts the broker already answered while they waited in memory
        (`pipeline.AlertWriter`), by alert id: None delivered, else the reason it was rejected for good;
        they are written delivered or parked as rejected (and counted in `alerts_rejected`). An alert
        already in the outbox (a COMMIT reported failed after it had committed, and the caller kept it to
        write again) is skipped with its episode change, not refused."""
        if not events:
            return
        rendered = [(e, topic_for(e), payload_for(e)) for e in events]
        now = self._clock()
        outcomes = outcomes or {}
        rejected = 0
        with self._transaction(durable=True, busy_s=LOOP_BUSY_TIMEOUT_S) as conn:
            for event, topic, payload in rendered:
                answered = event.alert_id in outcomes
                reason = outcomes.get(event.alert_id)
                added = conn.execute(
                    "INSERT INTO outbox (alert_id, episode_id, state, topic, payload, created_ts,"
                    " delivered_ts, rejected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (alert_id) DO NOTHING",
                    (event.alert_id, event.episode_id, event.state, topic, payload.decode("utf-8"), now,
                     now if answered and reason is None else None, reason)).rowcount
                if added:  # else written by a transaction reported failed that had committed: done then
                    self._upsert_episode(conn, event)
                    rejected += int(reason is not None)
            if rejected:
                conn.execute("INSERT INTO counters (name, value) VALUES ('alerts_rejected', ?)"
                             " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (rejected,))

    @staticmethod
    def _upsert_episode(conn: sqlite3.Connection, event: AlertEvent) -> None:
        # the peak window the engine knows (`decisions._summary_record`): a close after a restart reports it
        peak = event.extra.get("peak_window")
        peak_window = None if peak is None else _ENCODE(peak)
        if event.state == "open":
            conn.execute(
                "INSERT INTO episodes (episode_id, asset, model, bundle_name, bundle_version, status,"
                " start_ts, last_event_ts, severity, peak_score, last_score, alerts, threshold, peak_window)"
                " VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, 1, ?, ?)",
                (event.episode_id, event.asset, event.model, event.bundle_name, event.bundle_version,
                 event.episode_start_ts, event.ts, event.severity, event.score, event.score,
                 event.threshold if math.isfinite(event.threshold) else None, peak_window))
            return
        status = "closed" if event.state == "close" else "open"
        conn.execute(
            "UPDATE episodes SET status = ?, last_event_ts = ?, end_ts = ?, severity = ?,"
            " peak_score = max(peak_score, ?), last_score = ?, alerts = alerts + 1,"
            " peak_window = coalesce(?, peak_window) WHERE episode_id = ?",
            (status, event.ts, event.ts if status == "closed" else None, event.severity,
             float(event.extra.get("peak_score", event.score)), event.score, peak_window, event.episode_id))

    def open_episodes(self) -> list[dict[str, Any]]:
        """Episodes not yet closed (restored by the decision engine after a restart)."""
        rows = self._query(
            "SELECT episode_id, asset, model, bundle_name, bundle_version, start_ts, last_event_ts, severity,"
            " peak_score, last_score, alerts, threshold, peak_window FROM episodes WHERE status = 'open'"
            " ORDER BY start_ts")
        keys = ("episode_id", "asset", "model", "bundle_name", "bundle_version", "start_ts", "last_event_ts",
                "severity", "peak_score", "last_score", "alerts", "threshold", "peak_window")
        episodes = [dict(zip(keys, row, strict=True)) for row in rows]
        for episode in episodes:  # JSON text (None before the column: the engine falls back)
            with contextlib.suppress(TypeError, ValueError):
                episode["peak_window"] = json.loads(episode["peak_window"])
        return episodes

    def pending(self, limit: int = 100) -> list[OutboxRow]:
        """Undelivered alerts, oldest first."""
        rows = self._query(
            "SELECT seq, alert_id, episode_id, state, topic, payload, created_ts FROM outbox"
            " WHERE delivered_ts IS NULL AND rejected IS NULL ORDER BY seq LIMIT ?", (limit,))
        return [OutboxRow(seq, alert_id, episode_id, state, topic, payload.encode("utf-8"), created_ts)
                for seq, alert_id, episode_id, state, topic, payload, created_ts in rows]

    def mark_delivered(self, alert_ids: Iterable[str]) -> None:
        """Mark alerts as acknowledged by the broker (PUBACK)."""
        ids = [(self._clock(), alert_id) for alert_id in alert_ids]
        if not ids:
            return
        # not fsynced: a mark lost in a power cut only sends that alert once more (receivers drop
        # duplicates by alert id), and an fsync here would hold up the next alerts on the event loop
        with self._transaction(busy_s=LOOP_BUSY_TIMEOUT_S) as conn:
            conn.executemany("UPDATE outbox SET delivered_ts = ? WHERE alert_id = ? AND delivered_ts IS NULL",
                             ids)

    def mark_rejected(self, rejections: Iterable[tuple[str, str]]) -> None:
        """Park alerts the broker refused for good (`(alert_id, reason)`): not delivered, not sent again,
        never pruned; `UPDATE outbox SET rejected = NULL` puts them back in the queue."""
        rows = [(reason, alert_id) for alert_id, reason in rejections]
        if not rows:
            return
        # the rows and the `alerts_rejected` counter together
        with self._transaction(durable=True, busy_s=LOOP_BUSY_TIMEOUT_S) as conn:
            conn.executemany("UPDATE outbox SET rejected = ? WHERE alert_id = ? AND delivered_ts IS NULL",
                             rows)
            conn.execute("INSERT INTO counters (name, value) VALUES ('alerts_rejected', ?)"
                         " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (len(rows),))

    def rejected(self) -> int:
        """How many alerts the broker refused for good (parked in the outbox)."""
        return int(self._query("SELECT count(*) FROM outbox WHERE rejected IS NOT NULL")[0][0])

    def backlog(self) -> int:
        """How many alerts wait for delivery (rejected ones do not wait)."""
        return int(self._query("SELECT count(*) FROM outbox WHERE delivered_ts IS NULL AND rejected IS NULL")
                   [0][0])

    # baselines ---------------------------------------------------------------------------------------------
    def get_baseline(self, asset: str, model: str, bundle_version: str) -> BaselineRecord | None:
        rows = self._query("SELECT raw_scores, baseline FROM baselines WHERE asset = ? AND model = ?"
                           " AND bundle_version = ?", (asset, model, bundle_version))
        if not rows:
            return None
        raw, baseline = rows[0]
        return BaselineRecord(tuple(float(v) for v in json.loads(raw)), baseline)

    def put_baseline(self, asset: str, model: str, bundle_version: str, raw_scores: Sequence[float],
                     baseline: float | None) -> None:
        """Store an asset's score-baseline state (written from the event loop: the short busy timeout)."""
        with self._transaction(busy_s=LOOP_BUSY_TIMEOUT_S) as conn:
            conn.execute(
                "INSERT INTO baselines (asset, model, bundle_version, raw_scores, baseline, updated_ts)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (asset, model, bundle_version) DO UPDATE SET"
                " raw_scores = excluded.raw_scores, baseline = excluded.baseline,"
                " updated_ts = excluded.updated_ts",
                (asset, model, bundle_version, _json_vector(raw_scores), baseline, self._clock()))

    # counters ----------------------------------------------------------------------------------------------
    def set_counter(self, name: str, value: int) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO counters (name, value) VALUES (?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, int(value)))

    def incr_counters(self, deltas: Mapping[str, int]) -> None:
        """Add to named counters (created at zero), in one transaction."""
        items = [(name, int(delta)) for name, delta in deltas.items() if delta]
        if not items:
            return
        with self._transaction() as conn:
            conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?)"
                             " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", items)

    def counters(self) -> dict[str, int]:
        rows = self._query("SELECT name, value FROM counters ORDER BY name")
        return {name: int(value) for name, value in rows}

    # WAL upkeep -----------------------------------------------------------------------------------------
    def checkpoint(self, timeout: float | None = 10.0) -> bool:
        """Have the WAL keeper checkpoint now and wait for it (the agent does not need this: the keeper
        checkpoints by itself); False on timeout."""
        return self._keeper.checkpoint_now(timeout)

    @property
    def wal_checkpoints(self) -> int:
        """Checkpoints the WAL keeper has run."""
        return self._keeper.checkpoints

    def close(self) -> None:
        """Stop the WAL keeper, checkpoint the WAL (TRUNCATE) and close the connection."""
        self._keeper.close()
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
            self._conn.close()
