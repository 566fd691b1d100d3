"""Metrics on hand-counted confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.metrics import binary_metrics, first_alarm_lead_time, lead_time_summary, skab_metrics


def test_skab_metrics_match_the_leaderboard_definitions() -> None:
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    predictions = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]  # tp 3, fp 2, fn 1, tn 4
    metrics = skab_metrics(labels, predictions)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (3, 2, 1, 4)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert metrics["far_pct"] == pytest.approx(100 * 2 / 6)
    assert metrics["mar_pct"] == pytest.approx(25.0)


def test_skab_null_and_perfect_detectors() -> None:
    labels = np.array([0, 0, 1, 1, 0])
    assert skab_metrics(labels, np.zeros(5, dtype=int)) == {
        "f1": 0.0,
        "far_pct": 0.0,
        "mar_pct": 100.0,
        "tp": 0,
        "fp": 0,
        "fn": 2,
        "tn": 3,
    }
    perfect = skab_metrics(labels, labels)
    assert (perfect["f1"], perfect["far_pct"], perfect["mar_pct"]) == (1.0, 0.0, 0.0)


def test_binary_metrics_at_threshold() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.9, 0.8, 0.95])
    metrics = binary_metrics(labels, scores, threshold=0.5)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (2, 1, 0, 2)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == 1.0
    assert metrics["far"] == pytest.approx(1 / 3)
    assert metrics["mar"] == 0.0
    # ranking: of the 6 (anomalous, normal) pairs, only (0.8, 0.9) is misordered
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert 0 < metrics["pr_auc"] <= 1


def test_binary_metrics_one_class_has_no_auc() -> None:
    metrics = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.25)
    assert metrics["roc_auc"] is None
    assert metrics["fp"] == 1


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="labels must be 0/1, got 2 at index 1"):
        skab_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        binary_metrics([0, 1], [0.1], 0.5)
    with pytest.raises(ValueError, match="non-finite values at index 1"):
        binary_metrics([0, 1], [0.1, np.nan], 0.5)


def test_first_alarm_lead_time() -> None:
    rul = np.arange(9, -1, -1)  # 9..0, healthy while rul >= 5 (the trainer's cut: RUL >= healthy_min_rul)
    alarms = np.array([0, 1, 0, 0, 0, 0, 1, 1, 1, 1])
    unit = first_alarm_lead_time("u1", alarms, rul, healthy_rul=5)
    assert unit.first_alarm_rul == 8.0
    assert unit.lead_time == 3.0
    assert unit.false_alarms == 1
    assert unit.healthy_steps == 5


def test_lead_time_summary_counts_missed_units() -> None:
    rul = np.arange(9, -1, -1)
    detected = first_alarm_lead_time("a", (rul <= 2).astype(int), rul, healthy_rul=4)
    missed = first_alarm_lead_time("b", np.zeros(10, dtype=int), rul, healthy_rul=4)
    summary = lead_time_summary([detected, missed])
    assert summary["detected_fraction"] == 0.5
    assert summary["lead_time_median"] == 2.0
    assert summary["false_alarms"] == 0
    assert missed.lead_time is None
    assert missed.first_alarm_rul is None
    with pytest.raises(ValueError, match="unit x: 2 alarm flags but 3 RUL values"):
        first_alarm_lead_time("x", [0, 1], [3, 2, 1], healthy_rul=1)


def test_healthy_cut_includes_the_boundary() -> None:
    # rul == healthy_rul is healthy, as in training (rows with RUL >= healthy_min_rul are the normal data)
    unit = first_alarm_lead_time("b", [1, 0, 0], [4, 3, 2], healthy_rul=4)
    assert (unit.false_alarms, unit.healthy_steps, unit.lead_time) == (1, 1, None)
    unit = first_alarm_lead_time("c", [0, 1, 0], [4, 3, 2], healthy_rul=4)
    assert (unit.false_alarms, unit.lead_time) == (0, 3.0)


def test_rates_without_a_denominator_are_undefined_not_zero() -> None:
    # a healthy test set (no anomalous window) with one false alarm: recall and MAR have nothing to count
    metrics = binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.9, 0.3], threshold=0.5)
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (0, 1, 0, 3)
    assert metrics["recall"] is None
    assert metrics["mar"] is None
    assert metrics["precision"] == 0.0  # the one alarm was false
    assert metrics["f1"] == 0.0
    assert metrics["far"] == pytest.approx(0.25)
    # ... and without any alarm, precision is undefined too, and so is F1 (0 / 0 both ways)
    quiet = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.5)
    assert (quiet["precision"], quiet["recall"], quiet["f1"], quiet["mar"]) == (None, None, None, None)
    assert quiet["far"] == 0.0
    # anomalies all missed without an alarm: precision undefined, but recall 0, MAR 1 and F1 0 are defined
    missed = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.5)
    assert (missed["precision"], missed["recall"], missed["mar"], missed["f1"]) == (None, 0.0, 1.0, 0.0)
    # only anomalous windows: no false-alarm rate
    assert binary_metrics([1, 1], [0.9, 0.1], threshold=0.5)["far"] is None


def test_skab_metrics_follow_the_same_rule_when_a_class_is_absent() -> None:
    assert skab_metrics([0, 0, 0], [0, 0, 0]) == {
        "f1": None, "far_pct": 0.0, "mar_pct": None, "tp": 0, "fp": 0, "fn": 0, "tn": 3}
    assert skab_metrics([1, 1], [1, 0])["far_pct"] is None


def test_false_alarms_per_healthy_steps_need_healthy_steps() -> None:
    rul = np.array([3.0, 2.0, 1.0])
    summary = lead_time_summary([first_alarm_lead_time("u", [0, 1, 1], rul, healthy_rul=10)])
    assert summary["false_alarms"] == 0
    assert summary["false_alarms_per_1000_healthy_steps"] is None
