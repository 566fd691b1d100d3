"""Which SQLite and OS errors mean the disk or the database file failed, not the agent's code.

A disk fault (`DISK_FAULTS`: disk full, I/O error, read-only or corrupt file) is logged and survived: the
ring buffer drops the batch, retention skips a pass, `Store.open` falls back to a database in memory; a
damaged file (`_DamagedFileError`) is moved aside at start. A locked database (`_locked`) is waited for.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

FAULT_LOG_INTERVAL_S = 60.0  # a disk fault that goes on is logged at most this often, with the count so far
# the state disk cannot take new data: full, over quota, or mounted read-only
FULL_OR_READ_ONLY_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_DISK_ERRNOS = FULL_OR_READ_ONLY_ERRNOS | {errno.EIO}
# Primary SQLite result codes meaning the disk or the file is the problem, not the agent's code: the ring
# buffer and retention log them and go on (detection must not stop), `Store.open` moves a corrupt file aside.
SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 8, 10, 11, 13, 26
DISK_FAULTS = frozenset({SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB})

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


def _read_only_fs(directory: Path) -> bool:
    """Whether `directory` is on a filesystem mounted read-only: SQLite then says only "unable to open
    database file" (it cannot make the -wal and -shm files), the same as for a wrong path."""
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the database; waiting may help."""
    text = str(exc)
    return "locked" in text or "busy" in text


class _DamagedFileError(Exception):
    """SQLite found the database file damaged (not a database, malformed, or a failed `quick_check`)."""


def _damaged(exc: sqlite3.Error) -> bool:
    return _primary_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)
