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

Modules: `schema` (tables, migrations, records, `[retention]`, `StorageError`), `faults` (which errors
are disk faults), `connection` (opening the file: `quick_check`, a damaged file moved aside), `wal` (the
WAL keeper), `store` (`Store`), `recorder` (`WindowRecorder`, the ring buffer's writer thread). Everything
is imported from here; a test that patches a tuning constant patches it in the module that reads it
(`edge_agent.storage.store` for `LOCK_SLICE_S`, ...), not here.
"""

from __future__ import annotations

from edge_agent.storage.connection import BUSY_TIMEOUT_S
from edge_agent.storage.faults import (
    DISK_FAULTS,
    FAULT_LOG_INTERVAL_S,
    FULL_OR_READ_ONLY_ERRNOS,
    SQLITE_CORRUPT,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_NOTADB,
    SQLITE_READONLY,
)
from edge_agent.storage.faults import _primary_code as _primary_code  # tests
from edge_agent.storage.recorder import RECORDER_RETRY_S, WindowRecorder
from edge_agent.storage.schema import SCHEMA_VERSION, BaselineRecord, OutboxRow, RetentionConfig, StorageError
from edge_agent.storage.schema import _json_vector as _json_vector  # tests
from edge_agent.storage.schema import _json_vectors as _json_vectors  # tests
from edge_agent.storage.store import (
    FREE_FRACTION,
    LOCK_RETRY_PAUSE_S,
    LOCK_SLICE_S,
    LOOP_BUSY_TIMEOUT_S,
    MEMORY_MAX_ROWS,
    PRUNE_CHUNK_ROWS,
    Store,
)
from edge_agent.storage.wal import CHECKPOINT_INTERVAL_S
from edge_agent.storage.wal import _WalKeeper as _WalKeeper  # bench/agent_trace.py

__all__ = [
    "BUSY_TIMEOUT_S",
    "CHECKPOINT_INTERVAL_S",
    "DISK_FAULTS",
    "FAULT_LOG_INTERVAL_S",
    "FREE_FRACTION",
    "FULL_OR_READ_ONLY_ERRNOS",
    "LOCK_RETRY_PAUSE_S",
    "LOCK_SLICE_S",
    "LOOP_BUSY_TIMEOUT_S",
    "MEMORY_MAX_ROWS",
    "PRUNE_CHUNK_ROWS",
    "RECORDER_RETRY_S",
    "SCHEMA_VERSION",
    "SQLITE_CORRUPT",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_NOTADB",
    "SQLITE_READONLY",
    "BaselineRecord",
    "OutboxRow",
    "RetentionConfig",
    "StorageError",
    "Store",
    "WindowRecorder",
]
