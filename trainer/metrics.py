"""Evaluation metrics: threshold-free and thresholded binary metrics, SKAB's leaderboard metrics, and
first-alarm lead time on run-to-failure units.

A rate whose denominator is 0 is undefined and reported as None (JSON null), never as 0.0: with no anomalous
windows recall and MAR are undefined (0.0 would read "missed everything" and "missed nothing" at once), with
no alarms precision is, and with neither F1 is. See docs/evaluation.md, "Threshold metrics".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score


def _binary(name: str, values: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise ValueError(f"{name} must be 0/1, got {array[bad[0]].item()!r} at index {bad[0]}")
    return array.astype(bool)


def _counts(labels: np.ndarray, predictions: np.ndarray) -> tuple[int, int, int, int]:
    if labels.shape != predictions.shape:
        raise ValueError(f"labels ({labels.size}) and predictions ({predictions.size}) differ in length")
    tn, fp, fn, tp = confusion_matrix(labels, predictions, labels=[False, True]).ravel()
    return int(tp), int(fp), int(fn), int(tn)


def _ratio(numerator: int, denominator: int) -> float | None:
    """`numerator / denominator`, None when the denominator is 0 (the rate is undefined)."""
    return numerator / denominator if denominator else None


def _percent(numerator: int, denominator: int) -> float | None:
    ratio = _ratio(numerator, denominator)
    return None if ratio is None else 100.0 * ratio


def binary_metrics(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, Any]:
    """ROC-AUC, PR-AUC (average precision) and the confusion at `threshold` (``score > threshold`` alarms).

    `far` is FP / (FP + TN) and `mar` FN / (FN + TP), both as fractions; F1 is 2 TP / (2 TP + FP + FN).
    ROC-AUC and PR-AUC are None when the labels hold only one class, and each rate is None when its
    denominator is 0 (recall and `mar` without anomalous windows, precision without alarms, `far` without
    normal windows, F1 with neither anomalous windows nor alarms): they are undefined then.
    """
    truth = _binary("labels", labels)
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != truth.shape:
        raise ValueError(f"labels ({truth.size}) and scores ({values.size}) differ in length")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"scores hold non-finite values at index {np.flatnonzero(~np.isfinite(values))[0]}")
    both = 0 < truth.sum() < truth.size
    tp, fp, fn, tn = _counts(truth, values > threshold)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "roc_auc": float(roc_auc_score(truth, values)) if both else None,
        "pr_auc": float(average_precision_score(truth, values)) if both else None,
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "far": _ratio(fp, fp + tn),
        "mar": _ratio(fn, fn + tp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def skab_metrics(
    labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray
) -> dict[str, Any]:
    """SKAB's outlier-detection leaderboard metrics over point-wise 0/1 predictions.

    As the leaderboard defines them: F1 of the anomalous class, FAR % = FP / (FP + TN) * 100,
    MAR % = FN / (FN + TP) * 100. As in `binary_metrics`, a rate whose denominator is 0 is None (MAR %
    without anomalous rows, FAR % without normal rows, F1 with neither anomalous rows nor predicted ones);
    the test parts of SKAB's labelled files always hold both classes.
    """
    tp, fp, fn, tn = _counts(_binary("labels", labels), _binary("predictions", predictions))
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "far_pct": _percent(fp, fp + tn),
        "mar_pct": _percent(fn, fn + tp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


@dataclass(frozen=True)
class UnitAlarms:
    """Alarms on one run-to-failure unit.

    `first_alarm_rul`: RUL (cycles before failure) at the unit's first alarm of any kind, None without
    alarms. `lead_time`: RUL at the first alarm inside the degraded part (``rul < healthy_rul``), None when
    the degradation went unnoticed. `false_alarms`: alarms in the healthy part (``rul >= healthy_rul``, the
    same cut as the trainer's healthy training rows); `healthy_steps`: how many steps that part has.
    """

    unit: str
    first_alarm_rul: float | None
    lead_time: float | None
    false_alarms: int
    healthy_steps: int


def first_alarm_lead_time(
    unit: str, alarms: Sequence[int] | np.ndarray, rul: Sequence[float] | np.ndarray, healthy_rul: float
) -> UnitAlarms:
    """Lead time and healthy-part false alarms of one unit from its per-step 0/1 `alarms` and `rul`."""
    flags = _binary(f"alarms of unit {unit}", alarms)
    remaining = np.asarray(rul, dtype=np.float64)
    if remaining.shape != flags.shape:
        raise ValueError(f"unit {unit}: {flags.size} alarm flags but {remaining.size} RUL values")
    healthy = remaining >= healthy_rul
    fired = np.flatnonzero(flags)
    degraded_fired = np.flatnonzero(flags & ~healthy)
    return UnitAlarms(
        unit=unit,
        first_alarm_rul=float(remaining[fired[0]]) if fired.size else None,
        lead_time=float(remaining[degraded_fired[0]]) if degraded_fired.size else None,
        false_alarms=int((flags & healthy).sum()),
        healthy_steps=int(healthy.sum()),
    )


def lead_time_summary(units: Sequence[UnitAlarms]) -> dict[str, Any]:
    """Across units: share of units detected before failure, median/mean/min lead time, false alarms in the
    healthy parts (total, per 1,000 healthy steps (None without healthy steps), and units with any), plus the
    per-unit rows."""
    if not units:
        raise ValueError("no units to summarise")
    leads = np.array([u.lead_time for u in units if u.lead_time is not None], dtype=np.float64)
    false_alarms = sum(u.false_alarms for u in units)
    healthy_steps = sum(u.healthy_steps for u in units)
    return {
        "units": len(units),
        "detected_fraction": leads.size / len(units),
        "lead_time_median": float(np.median(leads)) if leads.size else None,
        "lead_time_mean": float(leads.mean()) if leads.size else None,
        "lead_time_min": float(leads.min()) if leads.size else None,
        "false_alarms": false_alarms,
        "false_alarms_per_1000_healthy_steps": None if healthy_steps == 0
        else 1000.0 * false_alarms / healthy_steps,
        "units_with_false_alarms": sum(1 for u in units if u.false_alarms),
        "per_unit": [asdict(u) for u in units],
    }
