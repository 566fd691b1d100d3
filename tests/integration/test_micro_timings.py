"""`bench/micro_timings.py`: times the real decision engine and status file writes of an opened pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import micro_timings


@pytest.mark.integration
def test_times_decisions_and_status_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "micro.json"
    code = micro_timings.main(["--dir", str(tmp_path), "--rounds", "2", "--batches", "3", "--writes", "3",
                               "--pause", "0", "--evict-mib", "1", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert result["dir"] == str(tmp_path)
    assert result["rounds"] == 2

    decisions = result["decision_engine"]
    # the episode pattern's steady state: two episodes open and two close in each of the 12 timed batches
    assert decisions["alerts"] == {"close": 24, "open": 24}
    for case in ("back_to_back", "after_idle"):
        assert decisions[case]["samples"] == 6
        assert 0 < decisions[case]["median_ms"] <= decisions[case]["p90_ms"]
        assert decisions[case]["cpu_median_ms"] > 0

    status = result["status_file"]
    assert status["assets"] == 50
    assert status["open_episodes"] == 10  # the 10 assets above the threshold in the last batch
    compact, indented = status["c_encoder"], status["python_encoder_indent"]
    assert 8_000 < compact["document_bytes"] < indented["document_bytes"] < 40_000
    for variant in (compact, indented):
        assert variant["samples"] == 6
        assert 0 < variant["median_ms"] <= variant["p90_ms"]
        assert variant["cpu_median_ms"] > 0
        assert variant["encode_only_median_ms"] > 0
    assert status["python_over_c_median"] > 0
    assert status["python_over_c_encode_only"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["micro.json"]  # the temporary state directory is gone


def test_zero_batches_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        micro_timings.main(["--batches", "0"])
    assert exc.value.code == 2
