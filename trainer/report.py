"""The offline HTML evaluation report: matplotlib figures embedded as base64 PNGs, no external assets."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.csv_reader import SEGMENT_SUFFIX

MAX_UNITS_PLOTTED = 8
TOP_ALERTS = 5


@dataclass(frozen=True)
class TimeAxis:
    """How a run's window end times read, from its `data_source`: C-MAPSS counts cycles per engine unit;
    CSV and SKAB files carry Unix seconds, shown as UTC date and time, per file (the segments a CSV file is
    cut into at long gaps share their file's panel); other data (synthetic) has plain time steps per series.
    File times that are no date between `DATES_FROM` and `DATES_TO` as Unix seconds (elapsed seconds from 0,
    milliseconds since the epoch) are shown as the numbers they are, per file all the same."""

    kind: str  # "cycle", "utc", "number" (file times that are not dates) or "step"
    series_word: str  # "unit", "file" or "series"

    @classmethod
    def for_source(cls, data_source: str | None, time: np.ndarray | None = None) -> TimeAxis:
        if data_source == "cmapss":
            return cls("cycle", "unit")
        if data_source in ("csv", "skab"):
            if time is not None and len(time) and not _dates(np.asarray(time, dtype=np.float64)):
                return cls("number", "file")
            return cls("utc", "file")
        return cls("step", "series")

    def panel(self, name: str) -> str:
        """The panel a series is drawn in: its file for CSV segments, else the series itself."""
        return SEGMENT_SUFFIX.sub("", name) if self.series_word == "file" else name

    def short(self, name: str) -> str:
        """A series as plots name it: a C-MAPSS unit by its number (`FD001/test/17` -> `17`); any other by
        its whole name, which is unique (CSV files of the same name in different folders: `day1/compressor`,
        `day2/compressor`; SKAB: `valve1/0`)."""
        return str(name).rsplit("/", 1)[-1] if self.kind == "cycle" else str(name)

    def point(self, name: str, time: float) -> str:
        """One window: `unit 17 @ cycle 143`, `run06 @ 2026-03-05T10:15:00Z`, `series @ step 12`."""
        short = self.short(name)
        if self.kind == "cycle":
            return f"unit {short} @ cycle {time:.15g}"
        if self.kind == "utc":
            return f"{short} @ {utc_iso(time)}"
        if self.kind == "number":
            return f"{short} @ {time:.15g}"
        return f"{short} @ step {time:.15g}"

    def values(self, time: np.ndarray) -> np.ndarray:
        """What goes on the x axis: numpy datetimes (matplotlib draws them as dates) for Unix seconds."""
        if self.kind != "utc":
            return time
        return np.round(np.asarray(time, dtype=np.float64) * 1000.0).astype(np.int64).astype("datetime64[ms]")

    def format_axis(self, ax: Any) -> None:
        if self.kind == "utc":
            import matplotlib.dates as mdates

            locator = mdates.AutoDateLocator(tz=timezone.utc)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))

    @property
    def label(self) -> str:
        names = {"cycle": "cycle at window end", "utc": "window end (UTC)",
                 "number": "timestamp at window end (as in the files: not Unix seconds of a date)"}
        return names.get(self.kind, "time step at window end")


# Earlier file times are elapsed seconds (0, 10, 20, ...: a file's own clock), not dates: no recording this
# trainer reads is from before 1980, and ten years of data in elapsed seconds would be needed to pass it.
DATES_FROM = datetime(1980, 1, 1, tzinfo=timezone.utc).timestamp()
DATES_TO = datetime(2200, 1, 1, tzinfo=timezone.utc).timestamp()


def _dates(unix_seconds: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(unix_seconds)) and unix_seconds.min() >= DATES_FROM
                and unix_seconds.max() < DATES_TO)


def utc_iso(unix_seconds: float) -> str:
    """ISO 8601 UTC with a `Z`: whole seconds, or milliseconds when the time has a fraction."""
    stamp = datetime.fromtimestamp(float(unix_seconds), tz=timezone.utc)
    spec = "seconds" if float(unix_seconds).is_integer() else "milliseconds"
    return stamp.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def png(fig: Any) -> str:
    """`fig` as a base64 PNG for the report (the figure is closed)."""
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
    return png(fig)


def scores_over_time_plot(
    series: np.ndarray,
    time: np.ndarray,
    score: np.ndarray,
    labels: np.ndarray | None,
    threshold: float,
    *,
    axis: TimeAxis | None = None,
) -> Any:
    """Score per window over time for up to `MAX_UNITS_PLOTTED` panels (those with anomalies first), one per
    unit, file or series as `axis` says; time-indexed data gets a UTC date/time axis. Returns the matplotlib
    figure, open (`png` turns it into the report's image)."""
    axis = axis or TimeAxis.for_source(None)
    panel_of = np.array([axis.panel(str(n)) for n in series.tolist()], dtype=object)
    names = list(dict.fromkeys(panel_of.tolist()))
    if labels is not None:
        names.sort(key=lambda n: -int(labels[panel_of == n].any()))
    names = names[:MAX_UNITS_PLOTTED]
    x = axis.values(time)
    fig, axes = _pyplot().subplots(len(names), 1, figsize=(9.0, 1.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        for member in dict.fromkeys(series[panel_of == name].tolist()):  # a line per segment, none over a gap
            mask = series == member
            ax.plot(x[mask], score[mask], lw=1, color="C0")
            if labels is not None and labels[mask].any():
                t = x[mask][labels[mask] == 1]
                ax.axvspan(t.min(), t.max(), color="orange", alpha=0.2)
        ax.axhline(threshold, color="r", lw=0.8, ls="--")
        axis.format_axis(ax)
        ax.set_ylabel(axis.short(name), fontsize=8)
    axes[-1, 0].set_xlabel(f"{axis.label} (orange: labelled anomalous, red dashes: threshold)")
    fig.tight_layout()
    return fig


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
    return png(fig)


def contribution_plot(
    channel_error: np.ndarray,
    channels: Sequence[str],
    score: np.ndarray,
    names: np.ndarray,
    time: np.ndarray,
    *,
    axis: TimeAxis | None = None,
) -> Any:
    """Per-channel error bars for the top-scoring window of each of the `TOP_ALERTS` top-scoring series,
    titled with the series and the window's end (`TimeAxis.point`). Returns the figure, open (`png`)."""
    axis = axis or TimeAxis.for_source(None)
    top: list[int] = []
    seen: set[str] = set()
    for index in np.argsort(-score):
        panel = axis.panel(str(names[index]))
        if panel not in seen:
            seen.add(panel)
            top.append(int(index))
        if len(top) == TOP_ALERTS:
            break
    fig, axes = _figure(len(top), 3.2, 3.0)
    axes = np.atleast_1d(axes)
    for ax, index in zip(axes, top, strict=True):
        ax.barh(list(channels), channel_error[index])
        ax.set_title(axis.point(str(names[index]), float(time[index])).replace(" @ ", "\n@ "), fontsize=9)
        ax.tick_params(labelsize=7)
    return fig


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
    return png(fig)


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
