"""The evaluation report's figures: time axes and titles that read in the data's own terms."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.dates as mdates

from trainer.report import TimeAxis, contribution_plot, scores_over_time_plot, utc_iso

START = datetime(2026, 3, 5, 6, 0, tzinfo=timezone.utc).timestamp()  # 1772690400


def _csv_like() -> dict[str, Any]:
    """Two files of 1 s windows: `run04`, cut at a long gap into two segments, and `fault`, labelled at the
    end."""
    names, times, labels = [], [], []
    files = (("run04#0", START, 100, None), ("run04#1", START + 400, 100, None),
             ("fault", START + 3600, 200, 150))
    for name, start, n, anomalous_from in files:
        names += [name] * n
        times += [start + i for i in range(n)]
        labels += [int(anomalous_from is not None and i >= anomalous_from) for i in range(n)]
    score = np.linspace(0.0, 2.0, len(names))
    return {"series": np.array(names), "time": np.array(times, dtype=np.float64), "score": score,
            "labels": np.array(labels)}


def test_time_axis_follows_the_data_source() -> None:
    assert TimeAxis.for_source("cmapss") == TimeAxis("cycle", "unit")
    assert TimeAxis.for_source("csv") == TimeAxis("utc", "file")
    assert TimeAxis.for_source("skab") == TimeAxis("utc", "file")
    assert TimeAxis.for_source("synthetic") == TimeAxis("step", "series")
    assert TimeAxis.for_source(None) == TimeAxis("step", "series")


def test_points_read_as_cycles_utc_times_or_steps() -> None:
    assert TimeAxis.for_source("cmapss").point("FD001/test/17", 143.0) == "unit 17 @ cycle 143"
    assert TimeAxis.for_source("csv").point("fault", START + 59) == "fault @ 2026-03-05T06:00:59Z"
    # only C-MAPSS units are shortened: other names are unique only whole (files of one name in two folders)
    assert TimeAxis.for_source("skab").point("valve1/0", START) == "valve1/0 @ 2026-03-05T06:00:00Z"
    csv_point = TimeAxis.for_source("csv").point("day2/compressor", START)
    assert csv_point == "day2/compressor @ 2026-03-05T06:00:00Z"
    step_point = TimeAxis.for_source("synthetic").point("synthetic/faulty/3", 42.0)
    assert step_point == "synthetic/faulty/3 @ step 42"
    assert utc_iso(START + 0.25) == "2026-03-05T06:00:00.250Z"


def test_time_indexed_scores_get_a_utc_date_axis_with_one_panel_per_file() -> None:
    data = _csv_like()
    fig = scores_over_time_plot(data["series"], data["time"], data["score"], data["labels"], 1.0,
                                axis=TimeAxis.for_source("csv"))
    try:
        axes = fig.axes
        # the labelled file first; the segments of run04 share its panel
        assert [ax.get_ylabel() for ax in axes] == ["fault", "run04"]
        assert len(axes[1].get_lines()) == 3  # two segments (no line across the gap) and the threshold
        for ax in axes:
            assert isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
        left, right = (mdates.num2date(x) for x in axes[0].get_xlim())
        assert left <= datetime(2026, 3, 5, 7, 0, tzinfo=timezone.utc) < right  # dates, not raw seconds
        fig.canvas.draw()
        ticks = " ".join(t.get_text() for t in axes[0].get_xticklabels())
        offset = axes[0].xaxis.get_offset_text().get_text()
        assert "07:0" in ticks
        assert "2026-Mar-05" in offset
        assert "UTC" in axes[-1].get_xlabel()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_cycles_and_steps_keep_a_plain_number_axis() -> None:
    data = _csv_like()
    cycles = np.tile(np.arange(1.0, 101.0), 4)
    for source, label in (("cmapss", "cycle at window end"), ("synthetic", "time step at window end")):
        fig = scores_over_time_plot(data["series"], cycles, data["score"], data["labels"], 1.0,
                                    axis=TimeAxis.for_source(source))
        try:
            assert not any(isinstance(ax.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
                           for ax in fig.axes)
            assert fig.axes[-1].get_xlabel().startswith(label)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)


def test_top_window_titles_name_the_window_end() -> None:
    data = _csv_like()
    channel_error = np.ones((len(data["score"]), 2))
    fig = contribution_plot(channel_error, ["a", "b"], data["score"], data["series"], data["time"],
                            axis=TimeAxis.for_source("csv"))
    try:
        titles = [ax.get_title() for ax in fig.axes]
        # one panel per file: the top window of `fault` (its last) and of `run04` (its second segment's last,
        # named as in scores.csv)
        assert titles == ["fault\n@ 2026-03-05T07:03:19Z", "run04#1\n@ 2026-03-05T06:08:19Z"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    cmapss = contribution_plot(np.ones((2, 2)), ["a", "b"], np.array([1.0, 2.0]),
                               np.array(["FD001/test/17", "FD001/test/17"]), np.array([142.0, 143.0]),
                               axis=TimeAxis.for_source("cmapss"))
    try:
        assert [ax.get_title() for ax in cmapss.axes] == ["unit 17\n@ cycle 143"]
    finally:
        import matplotlib.pyplot as plt

        plt.close(cmapss)


@pytest.mark.parametrize(("source", "heading"), [("csv", "Scores over time per file"),
                                                 ("skab", "Scores over time per file"),
                                                 ("cmapss", "Scores over time per unit"),
                                                 ("synthetic", "Scores over time per series")])
def test_report_heading_names_files_units_or_series(source: str, heading: str) -> None:
    pytest.importorskip("torch")
    from trainer.evaluate import build_figures
    from trainer.scoring import ScoreOutput

    data = _csv_like()
    n = len(data["score"])
    output = ScoreOutput(data["score"], np.ones((n, 2)), np.ones((n, 4)), np.zeros((n, 2)))
    run = {"data_source": source, "channels": ["a", "b"],
           "history": {"train_loss": [2.0, 1.0], "val_loss": [2.5, 1.5], "train_recon": [1.5, 0.8],
                       "best_epoch": 1}}
    figures = build_figures(run, data["series"], data["time"], labels=data["labels"], score=data["score"],
                            output=output, threshold=1.0)
    assert [key for key in figures if key.startswith("Scores over time")] == [heading]
    assert figures[heading]


def test_file_times_that_are_no_dates_stay_numbers() -> None:
    data = _csv_like()
    millis = data["time"] * 1000.0  # epoch milliseconds read as seconds: the year 58144
    axis = TimeAxis.for_source("csv", millis)
    assert axis == TimeAxis("number", "file")
    assert axis.point("fault", millis[0]) == f"fault @ {millis[0]:.15g}"
    fig = scores_over_time_plot(data["series"], millis, data["score"], data["labels"], 1.0, axis=axis)
    try:
        assert not isinstance(fig.axes[0].xaxis.get_major_formatter(), mdates.ConciseDateFormatter)
        assert "not Unix seconds" in fig.axes[-1].get_xlabel()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    assert TimeAxis.for_source("csv", data["time"]) == TimeAxis("utc", "file")


def test_elapsed_seconds_stay_numbers_and_a_files_segments_share_its_panel() -> None:
    data = _csv_like()
    elapsed = data["time"] - START  # a file's own clock from 0, not dates in 1970
    axis = TimeAxis.for_source("csv", elapsed)
    assert axis == TimeAxis("number", "file")
    assert axis.point("fault", 130.0) == "fault @ 130"
    fig = scores_over_time_plot(data["series"], elapsed, data["score"], data["labels"], 1.0, axis=axis)
    try:
        assert [ax.get_ylabel() for ax in fig.axes] == ["fault", "run04"]  # run04#0 and run04#1: one panel
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
