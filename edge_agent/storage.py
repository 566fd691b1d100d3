"""The agent's SQLite state: scored-window ring buffer, alert episodes, outbox, baselines, counters.

One writer connection in WAL mode with short transactions (Telegraf's buffer). Alert transactions (outbox,
episodes) commit with `synchronous=FULL`, so a committed alert survives a power cut; the scored-window ring
buffer, delivery marks, counters and baselines commit with `synchronous=NORMAL` (the next FULL commit
syncs them too; a delivery mark lost in a power cut sends that alert once more; docs/storage.md has the
measured cost): every alert is written to the `outbox` before anyone tries to publish it, and it is marked
delivered only when the broker acknowledged it (PUBACK). The writer connection never checkpoints; a
background thread with its own connection does (`_WalKeeper`), so no commit on the event loop copies the
WAL into the database. The schema is documented in `docs/storage.md`; vectors are stored as JSON text so
`sqlite-utils rows state.db windows` shows them as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.configtools import Section
from edge_agent.logtools import RateLimitedLog
from edge_agent.types import AlertEvent, ScoredWindow

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PRUNE_CHUNK_ROWS = 5_000  # rows deleted per retention transaction: the writer lock is never held long
BUSY_TIMEOUT_S = 10.0  # worker threads wait this long for another process's lock on the database
# Writes made on the event loop (alerts, delivery marks, score baselines) wait at most this long, then fail
# and are retried (`pipeline.AlertWriter` keeps the alerts in memory, the sink retries its marks, the baseline
# tracker its state): a `sqlite3` shell or a backup holding the database must not stall the windows, nor the
# watchdog pings, for seconds.
LOOP_BUSY_TIMEOUT_S = 0.25
# While another process holds the database, a writer waits for it in slices of this length, holding the
# store's lock only during a slice: a worker thread waiting its 10 s never holds up the event loop's writes
# (which then fail after their own 0.25 s and are retried) or its watchdog pings.
LOCK_SLICE_S = 0.05
RECORDER_RETRY_S = 1.0  # the ring-buffer thread's pause before writing again to a database another holds
LOCK_RETRY_PAUSE_S = 0.02
CHECKPOINT_INTERVAL_S = 10.0  # the WAL keeper's passive checkpoints, at most this often while writes come in
FAULT_LOG_INTERVAL_S = 60.0  # a disk fault that goes on is logged at most this often, with the count so far
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
MEMORY_MAX_ROWS = 10_000  # windows a database in RAM keeps (`Store.open(memory_fallback=True)`)
FREE_FRACTION = 0.1  # on a full disk the ring buffer gives up this share of its oldest windows, then retries
# Primary SQLite result codes meaning the disk or the file is the problem, not the agent's code: the ring
# buffer and retention log them and go on (detection must not stop), `Store.open` moves a corrupt file aside.
SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 8, 10, 11, 13, 26
DISK_FAULTS = frozenset({SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    start_ts REAL NOT NULL,
    end_ts REAL NOT NULL,
    score REAL NOT NULL,
    raw_score REAL NOT NULL,
    threshold REAL NOT NULL,
    above INTEGER NOT NULL,
    latent_mean TEXT NOT NULL,
    channel_error TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS windows_end_ts ON windows (end_ts);
CREATE INDEX IF NOT EXISTS windows_asset_model ON windows (asset, model, end_ts);
CREATE TABLE IF NOT EXISTS episodes (
    episode_id TEXT PRIMARY KEY,
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    bundle_name TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
    start_ts REAL NOT NULL,
    last_event_ts REAL NOT NULL,
    end_ts REAL,
    severity TEXT NOT NULL,
    peak_score REAL NOT NULL,
    last_score REAL NOT NULL,
    alerts INTEGER NOT NULL DEFAULT 0,
    threshold REAL
);
CREATE INDEX IF NOT EXISTS episodes_status ON episodes (status, asset, model);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL UNIQUE,
    episode_id TEXT NOT NULL,
    state TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ts REAL NOT NULL,
    delivered_ts REAL,
    rejected TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (delivered_ts, seq);
CREATE TABLE IF NOT EXISTS baselines (
    asset TEXT NOT NULL,
    model TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    raw_scores TEXT NOT NULL,
    baseline REAL,
    updated_ts REAL NOT NULL,
    PRIMARY KEY (asset, model, bundle_version)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class StorageError(RuntimeError):
    """The state database cannot be opened or used; names the file."""


@dataclass(frozen=True)
class RetentionConfig:
    """Ring-buffer retention: windows (and delivered outbox rows) beyond `max_rows` or older than
    `max_age_s` are pruned. Undelivered alerts are never pruned."""

    max_rows: int = 1_000_000
    max_age_s: float = 30 * 24 * 3600.0

    @classmethod
    def from_section(cls, section: Section) -> RetentionConfig:
        """Parse the `[retention]` table (`max_rows`, `max_age_days`); unknown keys are errors."""
        max_rows = section.integer("max_rows", cls.max_rows, minimum=1)
        max_age_days = section.number("max_age_days", cls.max_age_s / 86400.0, minimum=0.0,
                                      exclusive_minimum=True)
        section.finish()
        return cls(max_rows=max_rows, max_age_s=max_age_days * 86400.0)


@dataclass(frozen=True)
class OutboxRow:
    """One alert waiting to be (or already) published, in `seq` order."""

    seq: int
    alert_id: str
    episode_id: str
    state: str
    topic: str
    payload: bytes
    created_ts: float


@dataclass(frozen=True)
class BaselineRecord:
    raw_scores: tuple[float, ...]
    baseline: float | None


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def _json_vector(values: Iterable[float]) -> str:
    return _ENCODE([round(float(v), 7) for v in values])


def _json_vectors(vectors: Sequence[Any]) -> list[str]:
    """`_json_vector` of each vector; vectors of one length are rounded in one numpy call.

    `np.round(x, 7)` divides an exact integer by 1e7, so it gives the same double as `round(x, 7)` (up
    to how a tie at the 8th decimal is broken), and the text is the same shortest repr."""
    try:
        matrix = np.asarray(vectors, dtype=np.float64)
    except ValueError:  # vectors of different lengths (several models)
        return [_json_vector(v) for v in vectors]
    if matrix.ndim != 2:
        return [_json_vector(np.asarray(v).reshape(-1)) for v in vectors]
    return [_ENCODE(row) for row in np.round(matrix, 7).tolist()]


class WindowRecorder:
    """Writes scored windows to the ring buffer from one background thread, in batched transactions.

    The detector hands each scored batch over with `submit` (no waiting) and goes on; the thread writes
    everything submitted since its last transaction in one transaction, through the same `Store` (one
    connection, one lock: still one writer). Alerts do not go this way: they are written to the outbox on
    the event loop before the sink is woken. A write error is raised by the next `submit`, so the
    detector fails and is restarted as before; but a database held by another process (a `sqlite3` shell,
    a backup) is not an error: the batch goes back in front and is tried again every `RECORDER_RETRY_S`.
    Nor is a disk fault (`DISK_FAULTS`: disk full, I/O error, read-only or corrupt file): detection must go
    on without its record, so the batch is dropped (counted in `failed_windows`, logged at most every
    `FAULT_LOG_INTERVAL_S`); on a full disk the oldest windows make room first (`Store.free_space`) and the
    batch is tried once more.
    At most `max_pending` windows wait (`submit` then blocks until the thread has caught up:
    back-pressure); while the database is held, the oldest windows beyond that are dropped instead (counted
    in `dropped`, logged), so the detector never waits on the ring buffer.

    The ring buffer is the low-priority writer: the thread waits until no batch has been submitted for
    `quiet_s` (a burst of windows is over), or `max_delay_s` after the oldest pending window, or until
    `batch_rows` are pending. Its transaction then neither holds the store's lock while the burst's
    alerts are committed nor takes the interpreter from the detector in the middle of a burst
    (docs/deployment.md, "Performance")."""

    def __init__(self, store: Store, max_pending: int = 4096, quiet_s: float = 0.02,
                 max_delay_s: float = 0.5, batch_rows: int = 1024) -> None:
        self._store = store
        self._max_pending = max_pending
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._batch_rows = min(batch_rows, max_pending)
        self._pending: list[ScoredWindow] = []
        self._first_at = 0.0  # monotonic time of the oldest pending window
        self._last_at = 0.0  # ... of the latest submit
        self._urgent = False  # flush() or close(): write now
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._error: BaseException | None = None
        self.written = 0
        self.dropped = 0  # windows given up while the database was held by another process
        self.requeued = 0  # batches put back for that reason
        self.failed_windows = 0  # windows given up on a disk fault (`DISK_FAULTS`)
        self.last_fault: str | None = None  # the latest such error, for status
        self.last_fault_at = 0.0  # its wall-clock time (status shows the newer of the store's and recorder's)
        self._fault_log = RateLimitedLog(log, FAULT_LOG_INTERVAL_S)
        self._freeing_helps = True  # False once a batch failed even after `free_space`; a success resets it
        self._held_elsewhere = False  # the last write found the database held; cleared by the next success
        self._thread = threading.Thread(target=self._run, name="storage[windows]", daemon=True)
        self._thread.start()

    def submit(self, scored: Sequence[ScoredWindow]) -> None:
        """Queue windows for the ring buffer; raises the error of an earlier failed write."""
        with self._cond:
            if self._error is not None:
                error, self._error = self._error, None
                raise StorageError(f"{self._store.path}: writing scored windows failed: {error}") from error
            if self._closed:
                raise StorageError(f"{self._store.path}: window recorder is closed")
            if scored:
                now = time.monotonic()
                if not self._pending:
                    self._first_at = now
                self._last_at = now
                self._pending.extend(scored)
                self._cond.notify_all()
            if self._held_elsewhere:  # no back-pressure while the database is held: drop the oldest
                self._drop_excess()
            while len(self._pending) > self._max_pending and self._error is None and not self._held_elsewhere:
                self._cond.wait()

    def _drop_excess(self) -> None:
        """With the condition held: keep at most `max_pending` windows, the newest."""
        excess = len(self._pending) - self._max_pending
        if excess > 0:
            del self._pending[:excess]
            self.dropped += excess

    @property
    def pending(self) -> int:
        """Windows submitted but not yet committed."""
        with self._cond:
            return len(self._pending) + (1 if self._busy else 0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed (or failed); False on timeout."""
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not (self._pending or self._busy), timeout)

    def close(self) -> None:
        """Write what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            log.error("%s: scored windows lost at shutdown: %s", self._store.path, self._error)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                self._linger()
                batch, self._pending = self._pending, []
                self._urgent = False
                self._busy = True
                self._cond.notify_all()
            try:
                self._write(batch)
            except Exception as exc:  # reported to the detector by the next submit  # noqa: BLE001
                if _disk_fault(exc):  # the disk, not the agent: drop the batch, detection goes on
                    self._lost(batch, exc)
                elif isinstance(exc, sqlite3.OperationalError) and _locked(exc):
                    self._requeue(batch, exc)  # another process holds the database: try again shortly
                else:
                    self._failed(batch, exc)
            else:
                self.written += len(batch)
                self._held_elsewhere = False
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: Sequence[ScoredWindow]) -> None:
        """Record a batch; on a full disk free the oldest windows and try once more. Where that did not help
        (the disk is full of something else) no more windows are freed until a write succeeds again: a full
        disk must not empty the ring buffer 10 % at a time."""
        try:
            self._store.record_windows(batch)
        except sqlite3.OperationalError as exc:
            if _primary_code(exc) != SQLITE_FULL or not self._freeing_helps:
                raise
            self._freeing_helps = False
            if not self._store.free_space():
                raise
            self._store.record_windows(batch)  # once more, into the pages just freed
        self._freeing_helps = True

    def _lost(self, batch: Sequence[ScoredWindow], exc: BaseException) -> None:
        """Count a batch a disk fault refused; log the count at most every `FAULT_LOG_INTERVAL_S`."""
        with self._cond:
            self.failed_windows += len(batch)
            self.last_fault, self.last_fault_at = str(exc), time.time()
            self._held_elsewhere = False
        self._fault_log.error("%s: scored windows not recorded, the disk or the database file failed (%s); %d"
                              " windows lost so far, detection goes on", self._store.path, exc,
                              self.failed_windows)

    def _failed(self, batch: Sequence[ScoredWindow], exc: BaseException) -> None:
        log.error("%s: writing %d scored windows failed: %s", self._store.path, len(batch), exc)
        with self._cond:
            self._error = exc

    def _requeue(self, batch: list[ScoredWindow], exc: sqlite3.OperationalError) -> None:
        """Put a batch the locked database refused back in front, in order, and wait before the next try.
        Beyond `max_pending` the oldest windows are dropped (counted in `dropped`, logged): the ring buffer
        is a record, and the detector must not wait on it while the database is held."""
        with self._cond:
            self._pending[:0] = batch
            self._held_elsewhere = True
            self._drop_excess()
            self._cond.notify_all()  # a submit waiting on back-pressure goes on
            self.requeued += 1
            if self.requeued == 1 or self.requeued % 100 == 0:
                log.warning("%s: scored windows not written yet, the database is held by another process "
                            "(%s); %d waiting, %d dropped so far", self._store.path, exc, len(self._pending),
                            self.dropped)
            self._cond.wait_for(lambda: self._closed, RECORDER_RETRY_S)

    def _linger(self) -> None:
        """With the condition held: wait until the pending windows are due (see the class docstring)."""
        while not (self._closed or self._urgent or self._error is not None
                   or len(self._pending) >= self._batch_rows):
            now = time.monotonic()
            due = min(self._last_at + self._quiet_s, self._first_at + self._max_delay_s)
            if now >= due:
                return
            self._cond.wait(due - now)


class _WalKeeper:
    """Checkpoints the WAL from a background thread with its own connection.

    The main connection's auto-checkpoint is off, so no commit on the event loop (an alert, a delivery mark)
    ever copies the WAL into the database and fsyncs it: measured under the agent benchmark's spread load,
    such a checkpoint took 2.5 ms at the median and up to 15 ms. A passive checkpoint waits for nobody and
    blocks no writer (SQLite `wal_checkpoint`); it runs every `interval_s` while writes come in, so
    the WAL holds at most what the agent writes in that time.
    """

    def __init__(self, path: Path, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._cond = threading.Condition()
        self.checkpoints = 0
        self.failures = 0
        self._fault_log = RateLimitedLog(log, FAULT_LOG_INTERVAL_S)
        self._dirty = False
        self._urgent = False  # checkpoint_now()
        self._closed = False
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._thread = threading.Thread(target=self._run, name="storage[wal]", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        """A transaction was committed: the next checkpoint has work to do."""
        self._dirty = True

    def checkpoint_now(self, timeout: float | None = None) -> bool:
        """Run a checkpoint now (tests, tools) and wait for it; False on timeout."""
        with self._cond:
            done = self.checkpoints
            self._dirty = True
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self.checkpoints > done or self._closed, timeout)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        due = time.monotonic() + self._interval_s
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._urgent, max(0.0, due - time.monotonic()))
                if self._closed:
                    return
                self._urgent = False
            due = time.monotonic() + self._interval_s
            if self._dirty:
                self._dirty = False
                self._checkpoint()

    def _checkpoint(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:
            self.failures += 1  # a full disk fails every try
            self._fault_log.warning("%s: WAL checkpoint failed (retried): %s; %d failed so far", self._path,
                                    exc, self.failures)
            self._dirty = True
        else:
            self._fault_log.reset()
        with self._cond:
            self.checkpoints += 1
            self._cond.notify_all()


# SQLite's own messages for the `DISK_FAULTS` codes (sqlite3ErrStr), for Python 3.10, whose sqlite3 errors
# carry no `sqlite_errorcode` (added in 3.11)
_FAULT_MESSAGES = (("database or disk is full", SQLITE_FULL), ("disk I/O error", SQLITE_IOERR),
                   ("attempt to write a readonly database", SQLITE_READONLY),
                   ("database disk image is malformed", SQLITE_CORRUPT),
                   ("file is not a database", SQLITE_NOTADB))


def _primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of an `sqlite3.Error` (extended codes carry it in the low byte); on
    Python 3.10 read from the message for the `DISK_FAULTS` codes."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(exc)
    return next((value for message, value in _FAULT_MESSAGES if text.startswith(message)), None)


def _disk_fault(exc: BaseException) -> bool:
    """Disk full, I/O error, read-only file or corrupt file (`DISK_FAULTS`): not a bug in the agent."""
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) in DISK_FAULTS


def _locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the database; waiting may help."""
    text = str(exc)
    return "locked" in text or "busy" in text


class _DamagedFileError(Exception):
    """SQLite found the database file damaged (not a database, malformed, or a failed `quick_check`)."""


def _damaged(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to `path`, closed on leaving the `with`: closing it never checkpoints the
    file's WAL into it nor deletes that WAL."""
    return contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                              timeout=BUSY_TIMEOUT_S))


def _check(path: Path) -> None:
    """`PRAGMA quick_check` of an existing database (docs/storage.md has its measured cost), on a read-only
    connection (a damaged file's WAL stays as it is). `_DamagedFileError` if SQLite finds the file
    damaged."""
    if not path.exists():
        return
    try:
        with _read_only(path) as conn:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        if _damaged(exc):
            raise _DamagedFileError(str(exc)) from exc
        raise
    if problems != ["ok"]:
        raise _DamagedFileError("quick_check: " + "; ".join(problems[:3]))


def _connect(path: Path, memory: bool = False) -> sqlite3.Connection:
    """The writer connection to `path`, with WAL and the current schema, once `_check` found the file sound;
    `_DamagedFileError` if SQLite finds it damaged. `memory`: a fresh database in RAM instead (no file)."""
    if not memory:
        _check(path)
    conn = sqlite3.connect(":memory:" if memory else path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # a database in RAM keeps its own journal mode
        conn.execute("PRAGMA synchronous=NORMAL")  # FULL for alert transactions (`durable=True`)
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints: `_WalKeeper`, off the event loop
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        _add_columns(conn)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StorageError(f"{path}: schema version {row[0]} is not supported"
                               f" (expected {SCHEMA_VERSION})")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if _damaged(exc):
            raise _DamagedFileError(str(exc)) from exc
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def _move_aside(path: Path, now: float) -> Path:
    """Rename a damaged database and its `-wal`/`-shm` to `<name>.corrupt-<UTC time>` (+ `-wal`/`-shm`, so
    `sqlite3` opens the moved file with its WAL); never deletes them. Returns the moved database's path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    extra = 1
    while moved.exists():  # damaged again within the same second
        extra += 1
        moved = path.with_name(f"{path.name}.corrupt-{stamp}-{extra}")
    try:
        for suffix in ("-wal", "-shm", ""):  # the database last: a crash in between leaves no orphan WAL
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(moved.with_name(moved.name + suffix))
    except OSError as exc:
        raise StorageError(f"{path}: the state database is damaged and cannot be moved aside: {exc}") from exc
    return moved


def _undelivered_in(path: Path) -> str:
    """How many undelivered alerts a moved-aside database still shows, for the log ('an unknown number' if
    it cannot be read)."""
    try:
        with _read_only(path) as conn:
            count = conn.execute("SELECT count(*) FROM outbox WHERE delivered_ts IS NULL").fetchone()[0]
    except sqlite3.Error:
        return "an unknown number of"
    return str(count)


def _add_columns(conn: sqlite3.Connection) -> None:
    """Databases made before a column was added get it (NULL: no data to migrate): the outbox's
    `rejected` (not rejected), the episodes' `threshold` (the threshold the episode was opened against;
    unknown for episodes opened before it was kept)."""
    for table, column, kind in (("outbox", "rejected", "TEXT"), ("episodes", "threshold", "REAL")):
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


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
        (`DISK_FAULTS`, or ENOSPC/EDQUOT/EROFS/EIO: a full or read-only disk, an I/O error) keeps the file
        from opening, a fresh database in RAM is used instead (`in_memory`; `MEMORY_MAX_ROWS` windows at
        most), so detection and alerts still run; nothing in it outlives the process."""
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
            if not (memory_fallback and (_disk_fault(exc) or getattr(exc, "errno", None) in _DISK_ERRNOS)):
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
        if event.state == "open":
            conn.execute(
                "INSERT INTO episodes (episode_id, asset, model, bundle_name, bundle_version, status,"
                " start_ts, last_event_ts, severity, peak_score, last_score, alerts, threshold)"
                " VALUES (?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, 1, ?)",
                (event.episode_id, event.asset, event.model, event.bundle_name, event.bundle_version,
                 event.episode_start_ts, event.ts, event.severity, event.score, event.score,
                 event.threshold if math.isfinite(event.threshold) else None))
            return
        status = "closed" if event.state == "close" else "open"
        conn.execute(
            "UPDATE episodes SET status = ?, last_event_ts = ?, end_ts = ?, severity = ?,"
            " peak_score = max(peak_score, ?), last_score = ?, alerts = alerts + 1 WHERE episode_id = ?",
            (status, event.ts, event.ts if status == "closed" else None, event.severity,
             float(event.extra.get("peak_score", event.score)), event.score, event.episode_id))

    def open_episodes(self) -> list[dict[str, Any]]:
        """Episodes not yet closed (restored by the decision engine after a restart)."""
        rows = self._query(
            "SELECT episode_id, asset, model, bundle_name, bundle_version, start_ts, last_event_ts, severity,"
            " peak_score, last_score, alerts, threshold FROM episodes WHERE status = 'open'"
            " ORDER BY start_ts")
        keys = ("episode_id", "asset", "model", "bundle_name", "bundle_version", "start_ts", "last_event_ts",
                "severity", "peak_score", "last_score", "alerts", "threshold")
        return [dict(zip(keys, row, strict=True)) for row in rows]

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
