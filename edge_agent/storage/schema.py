"""The state database's schema and the records that go in and out of it: the tables (`_SCHEMA`, documented in
`docs/storage.md`), the schema version and the columns added since (`_add_columns`), the outbox and baseline
rows read back, the `[retention]` settings, and the JSON text that vectors are stored as (so
`sqlite-utils rows state.db windows` shows them as they are).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.configtools import Section

SCHEMA_VERSION = 1

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
    threshold REAL,
    peak_window TEXT
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


def _add_columns(conn: sqlite3.Connection) -> None:
    """Databases made before a column was added get it (NULL: no data to migrate): the outbox's
    `rejected` (not rejected), the episodes' `threshold` (the threshold the episode was opened against;
    unknown for episodes opened before it was kept) and `peak_window` (the episode's peak window as JSON,
    for a close after a restart; unknown before)."""
    for table, column, kind in (("outbox", "rejected", "TEXT"), ("episodes", "threshold", "REAL"),
                                ("episodes", "peak_window", "TEXT")):
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
