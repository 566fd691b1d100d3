"""The SKAB development tools in bench/ (score kinds, error shares, row rules) on synthetic SKAB-format
files: they read the development files and the anomaly-free run only, through the benchmark's own code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import skab_error_shares, skab_row_rules, skab_score_kinds
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


@pytest.mark.integration
def test_row_rules_report_every_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab")
    config = write_config(tmp_path, anomaly_free_rows=250, extra=SELECTION)
    assert skab_row_rules.main(["--data-dir", str(data), "--config", str(config), "--seeds", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    variants = ["shipped", *skab_row_rules.POINTWISE, "quantile",
                *(f"min_run_{k}" for k in skab_row_rules.MIN_RUNS)]
    assert list(report["seeds"]["0"]) == variants
    pointwise = report["seeds"]["0"]["pointwise_max"]["chosen_on_dev"]
    assert pointwise["row_score"] == "pointwise_max"
    assert pointwise["margin"] in (*skab_row_rules.LOW_MARGINS, 1.0, 1.5, 3.0)  # SELECTION's margins too
    for name in variants:
        assert 0 <= report["seeds"]["0"][name]["anomaly_free_far_pct"] <= 100
    assert report["mean_over_seeds"]["shipped"]["f1"] > 0.5  # a 6-sigma step is found


def test_pointwise_rows_average_each_rows_own_position() -> None:
    rng = np.random.default_rng(0)
    n_rows, length = 12, 4
    per_position = rng.random((n_rows - length + 1, length))
    expected = [np.mean([per_position[i, r - i] for i in range(len(per_position)) if 0 <= r - i < length])
                for r in range(n_rows)]
    np.testing.assert_allclose(skab_row_rules.pointwise_rows(per_position, n_rows), expected)
    with pytest.raises(ValueError, match="9 windows of 4 for 13 rows"):
        skab_row_rules.pointwise_rows(per_position, 13)


def test_quantile_rows_span_min_to_max_of_the_covering_windows() -> None:
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    n_rows = len(scores) + 3 - 1  # windows of 3
    expected_min = [5, 1, 1, 1, 2, 2, 4]  # the `min` rule
    np.testing.assert_allclose(skab_row_rules.quantile_rows(scores, n_rows, 0.0), expected_min)
    np.testing.assert_allclose(skab_row_rules.quantile_rows(scores, n_rows, 1.0), [5, 5, 5, 3, 4, 4, 4])
    np.testing.assert_allclose(skab_row_rules.quantile_rows(scores, n_rows, 0.5), [5, 3, 3, 2, 3, 3, 4])


def test_false_alarms_near_edges_count_rows_beside_a_label_change() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [0] * 10, dtype=np.int8)  # edges between rows 9|10 and 14|15
    flags = np.zeros(25, dtype=np.int8)
    flags[[0, 8, 9, 12, 15, 24]] = 1  # 12 is a true alarm
    assert skab_row_rules.false_alarms_near_edges(labels, flags, 2) == (5, 3)  # rows 8, 9 and 15
    assert skab_row_rules.false_alarms_near_edges(np.zeros(25, np.int8), flags, 2) == (6, 0)


def test_drop_short_runs_keeps_only_long_runs() -> None:
    flags = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1], dtype=np.int8)
    kept = skab_row_rules.drop_short_runs(flags, 3)
    assert kept.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert skab_row_rules.drop_short_runs(flags, 1).tolist() == flags.tolist()
    assert skab_row_rules.drop_short_runs(flags, 5).tolist() == [0] * 12


def test_tools_need_a_development_split(tmp_path: Path) -> None:
    config = write_config(tmp_path)  # no dev_files, no anomaly-free rows
    for tool in (skab_error_shares, skab_score_kinds, skab_row_rules):
        with pytest.raises(SystemExit) as exc:
            tool.main(["--data-dir", str(tmp_path), "--config", str(config)])
        assert exc.value.code == 2
