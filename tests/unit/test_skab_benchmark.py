"""Pure pieces of the SKAB benchmark: row scores from windows, validation split, leaderboard parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from trainer.benchmarks.skab import SkabOptions, parse_options, read_leaderboard, row_scores, validation_mask


def test_end_rule_gives_each_row_the_window_ending_there() -> None:
    windows = np.array([5.0, 1.0, 3.0])  # 5 rows, length 3: windows end at rows 2, 3, 4
    rows = row_scores(windows, n_rows=5, length=3, how="end")
    np.testing.assert_array_equal(rows[2:], windows)
    assert np.isnan(rows[:2]).all()


def test_min_rule_needs_every_covering_window_high() -> None:
    windows = np.array([5.0, 1.0, 3.0])  # window i covers rows i..i+2
    rows = row_scores(windows, n_rows=5, length=3, how="min")
    # row 0: window 0; row 1: 0-1; row 2: 0-2; row 3: 1-2; row 4: window 2
    np.testing.assert_array_equal(rows, [5.0, 1.0, 1.0, 1.0, 3.0])


def test_row_scores_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="3 window scores for 6 rows and length 3"):
        row_scores(np.zeros(3), n_rows=6, length=3, how="min")


def test_validation_tail_and_interleaved() -> None:
    tail = validation_mask(20, SkabOptions(validation="tail", val_fraction=0.1))
    assert np.flatnonzero(tail).tolist() == [18, 19]
    interleaved = validation_mask(20, SkabOptions(validation="interleaved", val_fraction=0.25))
    assert np.flatnonzero(interleaved).tolist() == [3, 7, 11, 15, 19]


def test_options_are_strict() -> None:
    assert parse_options({"row_score": "end"}).row_score == "end"
    with pytest.raises(ConfigError, match="data -> skab -> row_score: must be one of end, min"):
        parse_options({"row_score": "max"})
    with pytest.raises(ConfigError, match="data -> skab -> margin: unknown key"):
        parse_options({"margin": 2})


def test_leaderboard_rows_of_the_outlier_table_only(tmp_path: Path) -> None:
    (tmp_path / "LEADERBOARD.md").write_text(
        "intro\n### Outlier detection problem\n\n| Algorithm | F1 | FAR, % | MAR, %\n|---|---|---|---\n"
        "|Perfect detector | 1 | 0 | 0\n|Conv-AE |0.78 | 13.55 | 28.02\n\n"
        "### Changepoint detection problem\n| Algorithm | NAB | a | b\n|MSCRED | 32.42 | 16.53 | 40.28\n",
        encoding="utf-8",
    )
    rows = read_leaderboard(tmp_path / "data")  # found beside the data folder too
    assert rows == [
        {"algorithm": "Perfect detector", "f1": 1.0, "far_pct": 0.0, "mar_pct": 0.0},
        {"algorithm": "Conv-AE", "f1": 0.78, "far_pct": 13.55, "mar_pct": 28.02},
    ]
    assert read_leaderboard(tmp_path / "nowhere" / "deeper") == []
