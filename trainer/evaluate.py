"""`evaluate_run`: score a RUN_DIR's test windows and write metrics.json, scores.csv and report.html."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from trainer.metrics import binary_metrics, first_alarm_lead_time, lead_time_summary
from trainer.report import (
    TimeAxis,
    contribution_plot,
    histogram_figure,
    png,
    roc_pr_figure,
    scores_over_time_plot,
    training_figure,
    write_report,
)
from trainer.run import adjusted_scores, load_windows
from trainer.scoring import ScoreOutput, run_scorer, score_windows
from trainer.torch_model import ExportableScorer
from trainer.train import load_checkpoint

log = logging.getLogger(__name__)


# what `evaluate` reads from run.json (`fit_run` writes them all)
RUN_KEYS = ("channels", "input_channels", "scaler", "scoring", "threshold", "score_baseline")


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], ExportableScorer]:
    """run.json and the exportable scorer of a RUN_DIR."""
    root = Path(run_dir)
    run_path = root / "run.json"
    if not run_path.is_file():
        raise FileNotFoundError(
            f"{run_path}: not a run directory (no run.json); create one with `edge-trainer fit`"
        )
    try:
        run = json.loads(run_path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{run_path}: not valid JSON ({exc}); the run directory is damaged") from exc
    missing = [key for key in RUN_KEYS if not isinstance(run, dict) or key not in run]
    if missing:
        raise ValueError(f"{run_path}: missing {', '.join(missing)}; the run directory is damaged or from "
                         "another version")
    vae, _ = load_checkpoint(root / "checkpoint.pt")
    return run, run_scorer(vae, run)


def unit_of(name: str) -> str:
    """`FD001/test/17` -> `17`; other series names are kept whole."""
    parts = str(name).split("/")
    return parts[-1] if len(parts) == 3 and parts[0].startswith("FD") else str(name)


def write_scores_csv(
    path: Path,
    names: np.ndarray,
    end_time: np.ndarray,
    *,
    rul: np.ndarray | None,
    labels: np.ndarray | None,
    score: np.ndarray,
    threshold: float,
) -> None:
    """One row per window: C-MAPSS `unit,cycle_end,rul_end,label,score,threshold,is_anomaly`; other data
    `series,end,label,score,threshold,is_anomaly`."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if rul is not None:
            writer.writerow(["unit", "cycle_end", "rul_end", "label", "score", "threshold", "is_anomaly"])
        else:
            writer.writerow(["series", "end", "label", "score", "threshold", "is_anomaly"])
        for i in range(len(score)):
            label = "" if labels is None else int(labels[i])
            head = (
                [unit_of(names[i]), f"{end_time[i]:.15g}", f"{rul[i]:g}"]
                if rul is not None
                else [names[i], f"{end_time[i]:.15g}"]  # Unix times whole: %g would print 1.77304e+09
            )
            writer.writerow([*head, label, f"{score[i]:.6g}", f"{threshold:.6g}", int(score[i] > threshold)])


def lead_times(
    names: np.ndarray, rul: np.ndarray, score: np.ndarray, threshold: float, healthy_rul: float
) -> dict[str, Any]:
    """First-alarm lead time and healthy-part false alarms on run-to-failure series."""
    units = [
        first_alarm_lead_time(
            str(n), (score[names == n] > threshold).astype(int), rul[names == n], healthy_rul
        )
        for n in dict.fromkeys(names.tolist())
    ]
    return lead_time_summary(units)


def evaluate_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Score the run's evaluation (test) windows; write metrics.json, scores.csv, report.html in `out_dir`."""
    root, out = Path(run_dir), Path(out_dir)
    run, scorer = load_run(root)
    threshold = float(run["threshold"]["value"])
    test = load_windows(root / "evaluation.npz", run["input_channels"])
    out.mkdir(parents=True, exist_ok=True)
    output = score_windows(scorer, test.data)
    score = adjusted_scores(output.score, test.series, run["score_baseline"])
    metrics: dict[str, Any] = {
        "scoring": run["scoring"],
        "score_baseline": run["score_baseline"],
        "threshold": run["threshold"],
        "n_windows": len(test),
    }
    if test.labels is not None:
        metrics["test"] = binary_metrics(test.labels, score, threshold)
    splits = run.get("splits") or {}
    if splits.get("test") and splits.get("test") == splits.get("calibration"):
        # no labelled series to test on (CSV data without anomalies): the only windows are the threshold's own
        metrics["test_note"] = ("no labelled series: the test windows are the calibration windows the "
                                "threshold was fitted on, so their false-alarm rate is in-sample, not a "
                                "held-out estimate; add a labelled recording to test on")
        log.warning("%s", metrics["test_note"])
    val_path = root / "validation.npz"
    healthy_rul = run.get("healthy_min_rul")
    if test.rul is not None and healthy_rul is not None:
        # The label cut (RUL < 30) counts degrading windows (30 <= RUL < healthy) as normal; the false-alarm
        # rate the threshold was calibrated for is the one on healthy windows.
        healthy = test.rul >= float(healthy_rul)
        metrics["test_healthy_windows"] = {
            "n": int(healthy.sum()),
            "false_alarm_rate": float(np.mean(score[healthy] > threshold)) if healthy.any() else None,
        }
    if val_path.is_file() and healthy_rul is not None:
        val = load_windows(val_path, run["input_channels"])
        if val.rul is not None and len(val):
            val_score = adjusted_scores(
                score_windows(scorer, val.data).score, val.series, run["score_baseline"]
            )
            summary = lead_times(val.series, val.rul, val_score, threshold, float(healthy_rul))
            metrics["validation_run_to_failure"] = {k: v for k, v in summary.items() if k != "per_unit"}
    write_scores_csv(
        out / "scores.csv",
        test.series,
        test.end_time,
        rul=test.rul,
        labels=test.labels,
        score=score,
        threshold=threshold,
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_report(
        out / "report.html",
        f"Evaluation of {root.name}",
        metrics,
        build_figures(
            run,
            test.series,
            test.end_time,
            labels=test.labels,
            score=score,
            output=output,
            threshold=threshold,
        ),
    )
    log.info("evaluation written to %s", out)
    return metrics


def build_figures(
    run: dict[str, Any],
    names: np.ndarray,
    time: np.ndarray,
    *,
    labels: np.ndarray | None,
    score: np.ndarray,
    output: ScoreOutput,
    threshold: float,
) -> dict[str, str | None]:
    """The report's figures, keyed by heading. Times read as the run's data source says (`TimeAxis`):
    C-MAPSS cycles per unit, UTC date/time per file for CSV and SKAB, time steps per series otherwise."""
    n_model = len(run["channels"])
    axis = TimeAxis.for_source(run.get("data_source"), time)
    return {
        "ROC and precision-recall (test windows)": roc_pr_figure(labels, score)
        if labels is not None
        else None,
        f"Scores over time per {axis.series_word}": png(scores_over_time_plot(
            names, time, score, labels, threshold, axis=axis
        )),
        "Score histograms: normal vs anomalous": histogram_figure(labels, score, threshold),
        "Per-channel contributions of the top-scoring windows": png(contribution_plot(
            output.channel_error[:, :n_model], run["channels"], score, names, time, axis=axis
        )),
        "Training curves": training_figure(run["history"]),
    }
