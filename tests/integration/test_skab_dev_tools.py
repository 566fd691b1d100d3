"""The SKAB development tools in bench/ (score kinds, error shares) on synthetic SKAB-format files: they read
the development files and the anomaly-free run only, through the benchmark's own code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import skab_error_shares, skab_score_kinds
from tests.integration.test_benchmark_skab import SELECTION, write_config, write_synthetic_skab


@pytest.mark.integration
def test_error_shares_name_the_faulted_channel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab")  # valve1/0: a step on Accelerometer1RMS; other/1 held out
    config = write_config(tmp_path, anomaly_free_rows=250, extra=SELECTION)
    out = tmp_path / "shares.json"
    argv = ["--data-dir", str(data), "--config", str(config), "--setting", "min", "1.5", "--out", str(out)]
    assert skab_error_shares.main(argv) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["setting"] == ["min", 1.5]
    true_alarms = report["dev_true_alarms"]
    assert true_alarms["rows"] > 0
    share = true_alarms["share_pct"]
    assert max(share, key=share.get) == "Accelerometer1RMS"
    assert sum(share.values()) == pytest.approx(100, abs=0.5)
    # 2 anomaly-free pseudo-files of 250 rows, 100 test rows each: flagged rows are at most those
    assert 0 <= report["anomaly_free_flagged"]["rows"] <= 200


@pytest.mark.integration
def test_score_kinds_report_each_kind_over_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab")
    config = write_config(tmp_path, anomaly_free_rows=250, extra=SELECTION)
    assert skab_score_kinds.main(["--data-dir", str(data), "--config", str(config), "--seeds", "0", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dev_files"] == ["valve1"]
    assert set(report["seeds"]) == {"0", "1"}
    for kind in skab_score_kinds.KINDS:
        mean = report["mean_over_seeds"][kind]
        runs = [report["seeds"][s][kind] for s in ("0", "1")]
        assert mean["f1"] == pytest.approx(sum(r["chosen_on_dev"]["f1"] for r in runs) / 2, abs=1e-4)
        assert all(0 <= r["anomaly_free_far_pct"] <= 100 for r in runs)
    assert report["mean_over_seeds"]["reconstruction"]["f1"] > 0.5  # a 6-sigma step is found


def test_tools_need_a_development_split(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # no dev_files, no anomaly-free rows
    for tool in (skab_error_shares, skab_score_kinds):
        with pytest.raises(SystemExit) as exc:
            tool.main(["--data-dir", str(tmp_path), "--config", str(config)])
        assert exc.value.code == 2
