"""The scored-window ring buffer's writer: one background thread that records what the detector submits,
in batched transactions through the `Store`, and rides out a database held elsewhere or a failing disk.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence

from edge_agent.logtools import RateLimitedLog
from edge_agent.storage.faults import FAULT_LOG_INTERVAL_S, SQLITE_FULL, _disk_fault, _locked, _primary_code
from edge_agent.storage.schema import StorageError
from edge_agent.storage.store import Store
from edge_agent.types import ScoredWindow

log = logging.getLogger(__name__)

RECORDER_RETRY_S = 1.0  # the ring-buffer thread's pause before writing again to a database another holds


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
