"""What `prepare` says about a user's CSV data before any training: extreme values in the rows the scaler is
fitted on, labelled files none of whose windows is labelled, too few calibration windows, and one series per
file when file names repeat (per-asset baselines). Real CSV files and configs, no training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from trainer.calibration import MIN_SCORES
from trainer.config import load_config
from trainer.data.series import Series
from trainer.data.windows import extreme_values
from trainer.run import load_windows, prepare, save_windows
from trainer.scoring import per_asset_baseline


def write_csv(path: Path, rows: int, *, seed: int, labelled: tuple[int, ...] = (),
              cells: dict[int, str] | None = None) -> str:
    """A compressor-like recording 1 s apart: `current` switches between 12 A (unloaded, 60 % of the time)
    and 42 A (loaded), `temp` drifts; `labelled` rows have label 1; `cells` replaces `current` on rows."""
    rng = np.random.default_rng(seed)
    lines = ["time,current,temp,label"]
    for i in range(rows):
        current = f"{(42.0 if i % 100 >= 60 else 12.0) + rng.normal(0, 0.4):.3f}"
        current = (cells or {}).get(i, current)
        lines.append(f"{1_772_431_200 + i},{current},{70 + 0.002 * i + rng.normal(0, 0.1):.3f},"
                     f"{int(i in labelled)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def config_for(tmp_path: Path, paths: list[str], *, stride: int = 5, extra: str = "") -> Path:
    config = tmp_path / "csv.toml"
    config.write_text(
        f'[data]\nsource = "csv"\n{extra}[data.csv]\npaths = {json.dumps(paths)}\n'
        'timestamp_column = "time"\nchannels = ["current", "temp"]\nlabel_column = "label"\n'
        f"[windows]\nlength = 20\nstride = {stride}\ntrain_stride = 5\nsample_period_s = 1.0\n"
    )
    return config


def healthy_files(tmp_path: Path, cells: dict[int, str] | None = None) -> list[str]:
    return [write_csv(tmp_path / f"day{i}.csv", 600, seed=i, cells=cells if i == 0 else None)
            for i in range(4)]


def test_a_sentinel_in_the_fit_data_is_named_by_file_line_column_and_value(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """-9999 on one row of 600 makes the current's std ~400 A instead of ~15 A; the data is used as it is, and
    the warning says where the value is and what it does."""
    paths = healthy_files(tmp_path, cells={99: "-9999"})
    caplog.set_level(logging.WARNING)
    data = prepare(load_config(config_for(tmp_path, paths, extra='split = "time"\n')))
    assert data.splits.fit[0].name == "day0"  # its first 70 %, with the sentinel, is fitted on
    warnings = [r.getMessage() for r in caplog.records if "extreme value" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"extreme value(s) in the data the scaler is fitted on: {paths[0]}: line 101, column 'current': "
        "-9999: more than 3 x the width of the central 99 % of the column's fit rows (")
    assert "Mark missing samples empty or NaN" in warnings[0]
    std = float(data.scaler.to_dict()["std"][0])
    assert std > 200  # unchanged: warned about, not silently dropped
    assert f"with them the column's std is {std:.4g}, without them 1" in warnings[0]


def test_clean_load_unload_data_has_no_extreme_values(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A machine loaded 40 % of the time has its loaded current ~75 robust sigmas (median/MAD) from the
    median: that must not read as extreme."""
    caplog.set_level(logging.INFO)
    prepare(load_config(config_for(tmp_path, healthy_files(tmp_path))))
    assert "extreme value" not in caplog.text
    # and the log says what a run without labelled files tests on, and speaks of no operating regimes
    assert "no labelled data: the test set is the calibration windows" in caplog.text
    assert "val (labelled)" not in caplog.text
    assert "channels constant in the training data, dropped: none" in caplog.text


def test_constant_and_two_state_channels_have_no_extreme_values() -> None:
    n = 1000
    flag = np.zeros(n)
    flag[::50] = 1.0  # a two-state flag, 2 % of the rows on
    constant = np.full(n, 5.0)
    mostly_constant = constant.copy()
    mostly_constant[3] = -9999.0  # constant but for a sentinel: no spread to measure it by
    series = Series("s", np.stack([flag, constant, mostly_constant], axis=1), ["flag", "constant", "mostly"])
    assert extreme_values([series], ["flag", "constant", "mostly"]) == []
    noisy = np.random.default_rng(0).normal(0, 1, (n, 1))
    noisy[7] = 40.0  # 40 sigma
    [found] = extreme_values([Series("t", noisy, ["x"])], ["x"])
    assert (found.rows, found.values) == ([(0, 7)], [40.0])


def test_a_sparse_label_that_no_window_ends_on_is_warned_about_in_fit_and_evaluate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SKAB's `changepoint` marks single rows; a window's label is its last row's, so with stride 5 rows
    301 and 402 (window ends are rows 19, 24, 29, ...) label no window."""
    paths = [*healthy_files(tmp_path), write_csv(tmp_path / "valve.csv", 600, seed=7, labelled=(301, 402))]
    caplog.set_level(logging.WARNING)
    data = prepare(load_config(config_for(tmp_path, paths)))
    message = ("has 2 row(s) labelled 1 but none of its 117 window(s) is labelled 1: a window's label is its "
               "last row's, and with stride 5 no window ends on a labelled row")
    assert f"test windows: series 'valve' ({paths[-1]}) {message}" in caplog.text
    caplog.clear()
    save_windows(tmp_path / "evaluation.npz", data.test)  # as fit writes it; evaluate reads it back
    loaded = load_windows(tmp_path / "evaluation.npz", data.input_channels)
    assert loaded.labelled_rows == {"valve": 2}
    assert f"{tmp_path / 'evaluation.npz'}: series 'valve' {message}" in caplog.text
    caplog.clear()
    dense = write_csv(tmp_path / "valve.csv", 600, seed=7, labelled=tuple(range(300, 420)))
    prepare(load_config(config_for(tmp_path, [*paths[:4], dense])))
    assert "labelled 1 but none" not in caplog.text


def test_too_few_calibration_windows_are_refused_before_training(tmp_path: Path) -> None:
    config = config_for(tmp_path, healthy_files(tmp_path), stride=100)
    with pytest.raises(ConfigError) as info:
        prepare(load_config(config))
    assert str(info.value) == (
        f"windows -> stride: need at least {MIN_SCORES} scores to calibrate, got 6: 6 calibration window(s) "
        "of 20 samples, one every 100 rows, from 1 series (600 rows); use a smaller windows -> stride, a "
        "larger data -> calibration_fraction, or more normal data (found before training) (value: 100)")


def test_per_asset_baselines_are_per_file_when_file_names_repeat(tmp_path: Path) -> None:
    """day1/pump.csv and day2/pump.csv are two assets: each one's baseline is the median of its own first
    windows, so the first window of each scores 0."""
    paths = [write_csv(tmp_path / folder / "pump.csv", 600, seed=i)
             for i, folder in enumerate(("day1", "day2", "day3"))]
    data = prepare(load_config(config_for(tmp_path, paths, extra='split = "time"\n')))
    windows = data.calibration
    assert list(dict.fromkeys(windows.series.tolist())) == ["day1/pump", "day2/pump", "day3/pump"]
    score = np.concatenate([np.full(int(np.sum(windows.series == name)), 10.0 * (k + 1))
                            for k, name in enumerate(dict.fromkeys(windows.series.tolist()))])
    adjusted = per_asset_baseline(score, windows.series, 3)
    np.testing.assert_allclose(adjusted, 0.0)  # with one shared name, day2 and day3 would score 10 and 20


def test_a_labelled_series_shorter_than_a_window_is_named_as_such(caplog: pytest.LogCaptureFixture) -> None:
    from trainer.data.windows import WindowSet, warn_missed_labels

    empty = WindowSet(np.zeros((0, 2, 24), dtype=np.float32), ["a", "b"], np.array([], dtype=str),
                      np.array([], dtype=np.int64), np.array([]), labels=np.array([], dtype=np.int8),
                      labelled_rows={"lab#1": 20}, stride=1)
    caplog.set_level(logging.WARNING)
    warn_missed_labels(empty, "test windows")
    assert ("test windows: series 'lab#1' has 20 row(s) labelled 1 but none of its 0 window(s) is labelled "
            "1: it is shorter than one window, so it has no window at all") in caplog.text
    assert "stride" not in caplog.text
