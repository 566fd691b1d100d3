"""Trainer windowing, window bookkeeping, scalers (standard and per regime) and splits by series."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from trainer.data.series import Series
from trainer.data.windows import (
    STD_FLOOR,
    RegimeScaler,
    StandardScaler,
    make_windows,
    quantization_std,
    scaler_from_dict,
    sliding_windows,
    split_series,
    window_end_rows,
)


def test_sliding_windows_cover_the_right_rows() -> None:
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    windows = sliding_windows(values, 4, 3)
    assert windows.shape == (3, 4, 2)
    np.testing.assert_array_equal(windows[1], values[3:7])
    np.testing.assert_array_equal(window_end_rows(10, 4, 3), [3, 6, 9])
    assert sliding_windows(values, 11).shape == (0, 11, 2)
    with pytest.raises(ValueError, match="length and stride must be >= 1"):
        sliding_windows(values, 0)


def test_make_windows_keeps_series_end_row_labels_and_rul() -> None:
    a = Series(
        "a",
        np.arange(12, dtype=float).reshape(6, 2),
        ["x", "y"],
        timestamps=np.arange(6) + 100.0,
        labels=np.array([0, 0, 0, 0, 1, 1]),
        rul=np.arange(6)[::-1].astype(float),
        conditions=np.ones((6, 1)),
        condition_names=["op"],
    )
    b = a.slice(0, 2)  # shorter than the window: no windows
    b.name = "b"  # one name per series in a set of windows
    ws = make_windows([a, b], 3, 1, condition_channels=True)
    assert ws.data.shape == (4, 3, 3)  # channels first, condition channel appended
    assert ws.channels == ["x", "y", "op"]
    np.testing.assert_array_equal(ws.end_row, [2, 3, 4, 5])
    np.testing.assert_array_equal(ws.end_time, [102, 103, 104, 105])
    np.testing.assert_array_equal(ws.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(ws.rul, [3, 2, 1, 0])
    np.testing.assert_array_equal(ws.data[0, 0], [0, 2, 4])  # channel x over rows 0..2
    assert set(ws.series) == {"a"}


def test_make_windows_rejects_nan_with_series_and_row() -> None:
    values = np.zeros((5, 1))
    values[3, 0] = np.nan
    with pytest.raises(ValueError, match="series 'bad': NaN or infinite value at row 3"):
        make_windows([Series("bad", values, ["x"])], 2)


def test_standard_scaler_round_trip() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal([5.0, -3.0], [2.0, 0.5], (500, 2))
    scaler = StandardScaler.fit(values)
    z = scaler.transform(values)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)
    again = scaler_from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(values), z)


def test_regime_scaler_normalises_each_regime() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 100.0], [20.0, 80.0], [40.0, 100.0]])
    regime = rng.integers(0, 3, 900)
    conditions = centres[regime] + rng.normal(0, 0.1, (900, 2))
    levels = np.array([[1.0, 10.0], [5.0, 20.0], [9.0, 30.0]])
    values = levels[regime] + rng.normal(0, 0.2, (900, 2))
    scaler = RegimeScaler.fit(values, conditions, 3, seed=0)
    assigned = scaler.assign(conditions)
    # the clustering recovers the regimes (up to label order)
    assert len({(a, r) for a, r in zip(assigned, regime, strict=True)}) == 3
    z = scaler.transform(values, conditions)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=0.05)
    again = scaler_from_dict(scaler.to_dict())
    assert isinstance(again, RegimeScaler)
    np.testing.assert_allclose(again.transform(values, conditions), z, atol=1e-6)


def test_a_channel_that_never_moved_in_one_regime_is_scaled_by_its_resolution(
        caplog: pytest.LogCaptureFixture) -> None:
    """C-MAPSS FD002's sensor_6 reads 8.00 on every healthy row of one regime and varies in 0.01 steps in
    others: that regime's std is 0, and with the 1e-6 floor a one-step tick (8.01, as wear sets in) scored
    10,000 sigmas, drowning every other channel in the score and the root cause. Its floor is the rounding
    spread of its resolution instead: 0.01 / sqrt(12), so the tick is 3.5 sigmas."""
    rng = np.random.default_rng(0)
    regime = np.repeat([0, 1], 500)
    conditions = np.array([[0.0], [50.0]])[regime] + rng.normal(0, 0.1, (1000, 1))
    quiet = np.where(regime == 0, 8.00, 8.00 + 0.01 * rng.integers(-3, 4, 1000))
    noisy = rng.normal(0, 1, 1000) + 10 * regime
    values = np.column_stack([np.round(quiet, 2), noisy])
    caplog.set_level(logging.INFO, logger="trainer.data.windows")
    scaler = RegimeScaler.fit(values, conditions, 2, seed=0, channels=["sensor_6", "noisy"])
    quiet_regime = int(scaler.assign(np.array([[0.0]]))[0])
    np.testing.assert_allclose(scaler.std[quiet_regime, 0], 0.01 / math.sqrt(12), rtol=1e-6)
    assert scaler.std[1 - quiet_regime, 0] > 0.01  # where it moves, its own spread
    assert scaler.std[quiet_regime, 1] == pytest.approx(values[regime == 0, 1].std())  # untouched
    tick = scaler.transform(np.array([[8.01, 0.0]]), np.array([[0.0]]))[0, 0]
    assert tick == pytest.approx(math.sqrt(12), rel=1e-3)
    assert f"operating regime {quiet_regime}: sensor_6 spread less than their resolution" in caplog.text
    np.testing.assert_allclose(quantization_std(np.array([[1.0, 5.0], [1.5, 5.0], [1.25, 5.0]])),
                               [0.25 / math.sqrt(12), STD_FLOOR])


def test_split_series_is_by_whole_series_and_seeded() -> None:
    series = [Series(f"s{i}", np.zeros((3, 1)), ["x"]) for i in range(10)]
    first, second = split_series(series, 0.3, seed=4)
    assert len(second) == 3
    assert len(first) == 7
    assert not {s.name for s in first} & {s.name for s in second}
    assert [s.name for s in split_series(series, 0.3, seed=4)[1]] == [s.name for s in second]
    with pytest.raises(ValueError, match="split fraction"):
        split_series(series, 1.5, 0)


def test_one_set_of_windows_refuses_two_series_of_one_name() -> None:
    """Windows are told apart by series name (per-asset baselines, scores.csv, the report): two series of
    one name in one set would be scored as one asset."""
    values = np.zeros((6, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"series names \['pump'\] occur more than once in one set of "
                                         "windows"):
        make_windows([Series("pump", values, ["x"]), Series("pump", values, ["x"])], 2)
