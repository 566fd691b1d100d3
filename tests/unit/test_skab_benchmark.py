"""Pure pieces of the SKAB benchmark: row scores from windows, model inputs, validation split, options,
leaderboard parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from trainer.benchmarks.skab_file import validation_mask
from trainer.benchmarks.skab_options import SkabOptions, check_evaluation, parse_options
from trainer.benchmarks.skab_scoring import (
    channel_indices,
    lag1_variance_ratio,
    model_windows,
    read_leaderboard,
    row_scores,
    training_row_scores,
)
from trainer.config import EvaluationConfig
from trainer.data.windows import StandardScaler


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


def test_mean_rule_averages_the_covering_windows() -> None:
    windows = np.array([6.0, 0.0, 3.0])
    rows = row_scores(windows, n_rows=5, length=3, how="mean")
    np.testing.assert_allclose(rows, [6.0, 3.0, 3.0, 1.5, 3.0])


def test_training_rows_use_the_same_rule_and_drop_incomplete_rows() -> None:
    windows = np.array([5.0, 1.0, 3.0])
    np.testing.assert_array_equal(training_row_scores(windows, 3, "min"), [5.0, 1.0, 1.0, 1.0, 3.0])
    np.testing.assert_array_equal(training_row_scores(windows, 3, "end"), windows)


def test_model_windows_centre_only_the_detrended_channels() -> None:
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.normal(size=(30, 3)), axis=0) + np.array([0.0, 100.0, -5.0])
    scaler = StandardScaler.fit(values[:20])
    windows = model_windows(values, scaler, length=8, detrend=[1])
    assert windows.shape == (23, 3, 8)
    plain = model_windows(values, scaler, length=8, detrend=[])
    np.testing.assert_allclose(plain[4, :, 0], scaler.transform(values)[4], rtol=1e-6)
    np.testing.assert_allclose(windows[:, 1, :].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(windows[:, [0, 2]], plain[:, [0, 2]])
    np.testing.assert_allclose(
        windows[:, 1], plain[:, 1] - plain[:, 1].mean(axis=1, keepdims=True), atol=1e-5
    )


def test_unknown_detrend_channel_is_named() -> None:
    assert channel_indices(["b"], ["a", "b"], "k") == [1]
    with pytest.raises(
        ValueError, match=r"k: unknown channel\(s\) \['Temp'\]; the channels are \['a', 'b'\]"
    ):
        channel_indices(["Temp"], ["a", "b"], "k")


def test_lag1_ratio_separates_drift_from_noise() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(size=2000)
    drift = np.cumsum(rng.normal(size=2000))
    ratio = lag1_variance_ratio(np.stack([noise, drift, np.ones(2000)], axis=1))
    assert 0.9 < ratio[0] < 1.1
    assert ratio[1] < 0.05
    assert ratio[2] == 1.0


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
    options = parse_options({"detrend_channels": ["Temperature"], "calibrate_on": "windows"})
    assert options.detrend_channels == ("Temperature",)
    assert options.calibrate_on == "windows"
    with pytest.raises(ConfigError, match="data -> skab -> detrend_channels -> 0"):
        parse_options({"detrend_channels": [3]})
    with pytest.raises(ConfigError, match="data -> skab -> calibrate_on: must be one of rows, windows"):
        parse_options({"calibrate_on": "files"})
    assert parse_options({"anomaly_free_rows": 1150}).anomaly_free_rows == 1150
    with pytest.raises(ConfigError, match=r"anomaly_free_rows: must be 0 or more than train_rows \(400\)"):
        parse_options({"anomaly_free_rows": 300})


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


def test_evaluation_settings_the_benchmark_would_ignore_are_refused() -> None:
    check_evaluation(EvaluationConfig())  # auto, none: the defaults
    check_evaluation(EvaluationConfig(score="reconstruction", score_baseline="auto"))
    refused = r"cfg.toml: evaluation -> score: .*reconstruction.*\(value: 'elbo'\)"
    with pytest.raises(ConfigError, match=refused):
        check_evaluation(EvaluationConfig(score="elbo"), "cfg.toml")
    with pytest.raises(ConfigError, match=r"evaluation -> score_baseline: .*\(value: 'per_asset_initial'\)"):
        check_evaluation(EvaluationConfig(score_baseline="per_asset_initial"))
