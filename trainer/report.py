"""The offline HTML evaluation report: matplotlib figures embedded as base64 PNGs, no external assets."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_UNITS_PLOTTED = 8
TOP_ALERTS = 5


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: the report is written to a file, never shown
    import matplotlib.pyplot as plt

    return plt


def _figure(ncols: int = 1, width: float = 6.0, height: float = 3.5) -> tuple[Any, Any]:
    return _pyplot().subplots(1, ncols, figsize=(width * ncols, height))


def roc_pr_figure(labels: np.ndarray, score: np.ndarray) -> str | None:
    """ROC and precision-recall curves (None when only one class is present)."""
    if not 0 < labels.sum() < len(labels):
        return None
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig, (ax_roc, ax_pr) = _figure(2, 4.5)
    fpr, tpr, _ = roc_curve(labels, score)
    ax_roc.plot(fpr, tpr)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(
        xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (AUC {auc(fpr, tpr):.3f})"
    )
    precision, recall, _ = precision_recall_curve(labels, score)
    ax_pr.plot(recall, precision)
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    return _png(fig)


def scores_over_time_figure(
    series: np.ndarray, time: np.ndarray, score: np.ndarray, labels: np.ndarray | None, threshold: float
) -> str:
    """Score per window over time for up to `MAX_UNITS_PLOTTED` series (those with anomalies first)."""
    names = list(dict.fromkeys(series.tolist()))
    if labels is not None:
        names.sort(key=lambda n: -int(labels[series == n].any()))
    names = names[:MAX_UNITS_PLOTTED]
    fig, axes = _pyplot().subplots(len(names), 1, figsize=(9.0, 1.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        mask = series == name
        ax.plot(time[mask], score[mask], lw=1)
        ax.axhline(threshold, color="r", lw=0.8, ls="--")
        if labels is not None and labels[mask].any():
            t = time[mask][labels[mask] == 1]
            ax.axvspan(t.min(), t.max(), color="orange", alpha=0.2)
        ax.set_ylabel(str(name).rsplit("/", 1)[-1], fontsize=8)
    axes[-1, 0].set_xlabel("time at window end (orange: labelled anomalous, red dashes: threshold)")
    return _png(fig)


def histogram_figure(labels: np.ndarray | None, score: np.ndarray, threshold: float) -> str:
    """Score histograms for normal and anomalous windows."""
    fig, ax = _figure(1, 6.0)
    bins = np.histogram_bin_edges(score, bins=60)
    if labels is None:
        ax.hist(score, bins=bins, alpha=0.7, label="all")
    else:
        for value, name in ((0, "normal"), (1, "anomalous")):
            if np.any(labels == value):  # an empty class has no density (numpy warns dividing by 0)
                ax.hist(score[labels == value], bins=bins, alpha=0.6, density=True, label=name)
    ax.axvline(threshold, color="r", ls="--", label="threshold")
    ax.set(xlabel="score", ylabel="density", yscale="log")
    ax.legend()
    return _png(fig)


def contribution_figure(
    channel_error: np.ndarray, channels: Sequence[str], score: np.ndarray, names: np.ndarray, time: np.ndarray
) -> str:
    """Per-channel error bars for the top-scoring window of each of the `TOP_ALERTS` top-scoring units."""
    top: list[int] = []
    seen: set[str] = set()
    for index in np.argsort(-score):
        if str(names[index]) not in seen:
            seen.add(str(names[index]))
            top.append(int(index))
        if len(top) == TOP_ALERTS:
            break
    fig, axes = _figure(len(top), 3.2, 3.0)
    axes = np.atleast_1d(axes)
    for ax, index in zip(axes, top, strict=True):
        ax.barh(list(channels), channel_error[index])
        ax.set_title(f"{str(names[index]).rsplit('/', 1)[-1]} @ {time[index]:.15g}", fontsize=9)
        ax.tick_params(labelsize=7)
    return _png(fig)


def training_figure(history: dict[str, Any]) -> str:
    """Training and validation loss per epoch."""
    fig, ax = _figure(1, 6.0)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train loss")
    ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.plot(epochs, history["train_recon"], ls=":", label="train reconstruction")
    if history.get("best_epoch", -1) >= 0:
        ax.axvline(history["best_epoch"] + 1, color="k", lw=0.8, ls="--", label="kept")
    ax.set(xlabel="epoch", ylabel="loss per window", yscale="log")
    ax.legend()
    return _png(fig)


def write_report(path: Path, title: str, metrics: dict[str, Any], figures: dict[str, str | None]) -> None:
    """One self-contained HTML page: a metrics summary and the figures."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        (
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "pre{background:#f4f4f4;padding:8px;overflow:auto}</style></head><body>"
        ),
        f"<h1>{html.escape(title)}</h1><h2>Metrics</h2>",
        f"<pre>{html.escape(json.dumps(metrics, indent=1, default=str))}</pre>",
    ]
    for heading, image in figures.items():
        if image:
            parts.append(
                f"<h2>{html.escape(heading)}</h2><img alt='{html.escape(heading)}' "
                f"src='data:image/png;base64,{image}'>"
            )
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
