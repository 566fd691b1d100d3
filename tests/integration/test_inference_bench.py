"""`bench/inference_bench.py --config`: times a gateway's own bundle with its providers (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import inference_bench
from tests.integration.agent_harness import CHANNELS, make_bundle, serial_asset, serial_source, write_config


@pytest.mark.integration
def test_times_the_active_bundle_of_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, tmp_path / "state", bundle, keys, {"line1": serial_source("/dev/null")},
                          {"pump-1": serial_asset()})
    out = tmp_path / "bench.json"
    code = inference_bench.main(["--config", str(config), "--batch", "1", "20", "--settings", "1x1", "1x2",
                                 "--rounds", "1", "--per-round", "2", "--pause", "0", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    assert f"pump, {len(CHANNELS)} channels x 8 samples" in result["model"]
    assert "providers ['CPUExecutionProvider']" in result["model"]
    cells = result["results"]
    assert set(cells) == {f"batch_{b}_{c}" for b in (1, 20) for c in ("back_to_back", "after_pause")}
    for cell in cells.values():
        assert set(cell) == {"1x1", "1x2"}
        assert cell["1x1"]["speedup_vs_baseline"] == 1.0
        assert all(entry["batches"] == 2 and entry["median_ms"] > 0 for entry in cell.values())


@pytest.mark.integration
def test_a_model_the_bundle_lacks_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, tmp_path / "state", bundle, keys, {"line1": serial_source("/dev/null")},
                          {"pump-1": serial_asset()})
    assert inference_bench.main(["--config", str(config), "--model", "fan"]) == 2
    assert "has no model 'fan' (models: pump)" in capsys.readouterr().err
