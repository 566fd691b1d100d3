"""Opening the database file: the writer connection with WAL and the current schema (`_connect`), the
`quick_check` of an existing file before it (`_check`), and a damaged file moved aside with its WAL, never
deleted (`_move_aside`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

from edge_agent.storage.faults import _damaged, _DamagedFileError
from edge_agent.storage.schema import _SCHEMA, SCHEMA_VERSION, StorageError, _add_columns

BUSY_TIMEOUT_S = 10.0  # worker threads wait this long for another process's lock on the database


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
