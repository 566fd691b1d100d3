"""The ring-buffer writer thread (`WindowRecorder`) and the batched vector encoding, on real SQLite files."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.storage import StorageError, Store, WindowRecorder, _json_vector, _json_vectors
from edge_agent.types import ScoredWindow, Window

pytestmark = pytest.mark.integration


def scored(ts: float, errors: np.ndarray, latent: np.ndarray, score: float = 0.5) -> ScoredWindow:
    window = Window("pump-1", "pump", ts - 10, ts, np.zeros((len(errors), 4), np.float32))
    return ScoredWindow(window, score, score + 0.1, 1.0, errors, latent, np.zeros(4, np.float32), "b", "1.0")


def test_batched_vector_text_is_the_per_vector_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for scale in (1e-6, 1e-2, 1.0, 1e3):
        rows = list((rng.standard_normal((40, 9)) * scale).astype(np.float32))
        assert _json_vectors(rows) == [_json_vector(row) for row in rows]
    ragged = [np.array([0.1, 0.2], np.float32), np.array([0.3], np.float32)]  # two models, two latent sizes
    expected = [json.loads(_json_vector(r)) for r in ragged]
    assert [json.loads(text) for text in _json_vectors(ragged)] == expected


def test_recorder_commits_every_submitted_batch_and_drains_on_close(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    recorder = WindowRecorder(store, max_pending=8)
    errors = np.array([0.25, 0.75], np.float32)
    latent = np.array([0.5, -0.5], np.float32)
    for batch in range(5):  # more than max_pending in all: submit waits for the thread (back-pressure)
        recorder.submit([scored(1000.0 + batch * 10 + i, errors, latent, score=2.0 * (i % 2))
                         for i in range(4)])
    assert recorder.flush(timeout=10)
    assert store.window_count() == 20
    recorder.submit([scored(2000.0, errors, latent)])
    recorder.close()  # the last batch is written before the thread stops
    assert recorder.written == 21
    store.close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        rows = db.execute("SELECT end_ts, above, channel_error, latent_mean FROM windows ORDER BY id"
                          ).fetchall()
    assert [r[0] for r in rows[:4]] == [1000.0, 1001.0, 1002.0, 1003.0]
    assert [r[1] for r in rows[:4]] == [0, 1, 0, 1]
    assert json.loads(rows[-1][2]) == [0.25, 0.75]
    assert json.loads(rows[-1][3]) == [0.5, -0.5]


def test_a_failed_write_is_raised_by_the_next_submit(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    recorder = WindowRecorder(store)
    with sqlite3.connect(tmp_path / "state.db") as db:  # another process broke the table
        db.execute("DROP TABLE windows")
    recorder.submit([scored(1.0, np.ones(2, np.float32), np.ones(2, np.float32))])
    assert recorder.flush(timeout=10)
    with pytest.raises(StorageError, match="writing scored windows failed"):
        recorder.submit([])
    recorder.close()
    store.close()


def _written_within(recorder: WindowRecorder, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while recorder.written < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_recorder_waits_for_the_burst_to_end_before_writing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state.db")
    recorder = WindowRecorder(store, quiet_s=1.0, max_delay_s=60.0)
    errors, latent = np.ones(2, np.float32), np.ones(2, np.float32)
    recorder.submit([scored(1.0, errors, latent)])
    time.sleep(0.1)
    recorder.submit([scored(2.0, errors, latent)])  # the burst goes on: the quiet period starts again
    time.sleep(0.1)
    assert recorder.written == 0
    assert store.window_count() == 0
    assert _written_within(recorder, 2, timeout=10)  # quiet for 1 s: both in one transaction
    assert store.window_count() == 2
    recorder.close()
    store.close()


@pytest.mark.parametrize("trigger", ["batch_rows", "max_delay"])
def test_sustained_load_is_written_without_a_quiet_period(tmp_path: Path, trigger: str) -> None:
    store = Store.open(tmp_path / "state.db")
    recorder = (WindowRecorder(store, quiet_s=60.0, max_delay_s=60.0, batch_rows=4) if trigger == "batch_rows"
                else WindowRecorder(store, quiet_s=60.0, max_delay_s=0.2))
    errors, latent = np.ones(2, np.float32), np.ones(2, np.float32)
    for i in range(4):  # submits 10 ms apart: never quiet for 60 s
        recorder.submit([scored(float(i), errors, latent)])
        time.sleep(0.01)
    assert _written_within(recorder, 4, timeout=10)
    recorder.close()
    store.close()
