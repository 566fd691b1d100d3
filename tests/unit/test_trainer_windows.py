"""Trainer windowing, window bookkeeping, scalers (standard and per regime) and splits by series."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.series import Series
from trainer.data.windows import (
    RegimeScaler,
    StandardScaler,
    make_windows,
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
