"""`bench/storage_sync_timing.py`: times real SQLite transactions of the agent's `Store` at each level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import storage_sync_timing


@pytest.mark.integration
def test_times_each_level_on_the_given_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sync.json"
    code = storage_sync_timing.main(["--dir", str(tmp_path), "--runs", "1", "--transactions", "5",
                                     "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["dir"] == str(tmp_path)
    assert result["transactions"] == 5
    assert set(result["sync"]) == {"NORMAL", "FULL", "shipped"}
    for level in result["sync"].values():
        assert level["add_alerts_ms_per_txn"] > 0
        assert level["record_windows_64_ms_per_txn"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["sync.json"]  # the temporary database is gone


def test_zero_runs_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        storage_sync_timing.main(["--runs", "0"])
    assert exc.value.code == 2
