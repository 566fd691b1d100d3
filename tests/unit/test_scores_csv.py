"""`scores.csv` rows: times written whole (Unix seconds of a user's CSV data, C-MAPSS cycles)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from trainer.evaluate import write_scores_csv


def test_unix_end_times_are_written_in_full(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    write_scores_csv(path, np.array(["fault02", "fault02"]), np.array([1_773_040_000.0, 1_773_040_005.5]),
                     rul=None, labels=np.array([0, 1]), score=np.array([0.5, 3.0]), threshold=1.25)
    rows = list(csv.DictReader(path.open()))
    assert [r["end"] for r in rows] == ["1773040000", "1773040005.5"]  # not 1.77304e+09
    assert [(r["label"], r["is_anomaly"]) for r in rows] == [("0", "0"), ("1", "1")]
    assert {r["threshold"] for r in rows} == {"1.25"}


def test_cmapss_rows_keep_cycles_and_rul(tmp_path: Path) -> None:
    path = tmp_path / "scores.csv"
    write_scores_csv(path, np.array(["FD001/test/7"]), np.array([112.0]), rul=np.array([29.0]),
                     labels=np.array([1]), score=np.array([2.0]), threshold=1.0)
    row = next(csv.DictReader(path.open()))
    assert (row["unit"], row["cycle_end"], row["rul_end"], row["is_anomaly"]) == ("7", "112", "29", "1")
