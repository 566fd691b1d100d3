"""Per-asset alignment: sample-and-hold on the model's grid, stride, staleness, gaps, routing."""

from __future__ import annotations

import numpy as np

from edge_agent.types import Reading
from edge_agent.windows import AssetWindowSpec, Windower


def spec(length: int = 4, stride: int = 2, staleness: float = 0.25, asset: str = "pump") -> AssetWindowSpec:
    return AssetWindowSpec(asset=asset, model="m", inputs=(("s", "a"), ("s", "b")), window_length=length,
                           stride=stride, sample_period_s=0.1, staleness_s=staleness)


def test_windows_follow_length_and_stride() -> None:
    windower = Windower([spec()])
    ends = []
    for i in range(10):
        for window in windower.push(Reading("s", 100.0 + i / 10, {"a": float(i), "b": -float(i)})):
            ends.append(window.end_ts)
            assert window.data.shape == (2, 4)
            assert window.data.dtype == np.float32
            last = round((window.end_ts - 100.0) * 10)
            assert window.data[0].tolist() == [float(last - 3 + k) for k in range(4)]
            assert window.data[1].tolist() == [-v for v in window.data[0].tolist()]
    # first window after 4 samples, then every 2
    assert np.allclose(ends, [100.3, 100.5, 100.7, 100.9])
    assert windower.counters() == {"windows": 4, "stale_windows": 0}


def test_sample_and_hold_across_separate_readings() -> None:
    windower = Windower([spec(length=2, stride=1)])
    windows = []
    for i in range(4):
        ts = 10.0 + i / 10
        windows += windower.push(Reading("s", ts, {"a": float(i)}))
        if i % 2 == 0:  # b only every other period: held in between
            windows += windower.push(Reading("s", ts + 0.01, {"b": float(10 * i)}))
    # grid point 10.0 saw a at 10.0 but b only at 10.01 (future): stale; later points hold b
    assert [w.data[1].tolist() for w in windows] == [[0.0, 0.0], [0.0, 20.0]]
    assert windower.counters()["stale_windows"] == 1


def test_stale_channel_windows_are_counted_not_emitted() -> None:
    windower = Windower([spec(length=2, stride=1, staleness=0.15)])
    emitted = []
    for i in range(8):
        values = {"a": float(i)} if i >= 3 else {"a": float(i), "b": 1.0}  # b stops after 0.2 s
        emitted += windower.push(Reading("s", i / 10, values))
    assert [round(w.end_ts, 1) for w in emitted] == [0.1, 0.2, 0.3]
    assert windower.counters()["stale_windows"] == 4


def test_long_gap_is_counted_in_bulk_and_scoring_resumes() -> None:
    windower = Windower([spec(length=4, stride=1)])
    for i in range(5):
        windower.push(Reading("s", i / 10, {"a": 1.0, "b": 2.0}))
    assert windower.counters() == {"windows": 2, "stale_windows": 0}
    # one hour of silence: 36000 grid points, handled without emitting them one by one
    resumed = []
    for i in range(4):
        resumed += windower.push(Reading("s", 3600.0 + i / 10, {"a": 1.0, "b": 2.0}))
    # points 0.5 and 0.6 still hold the last samples (within 0.25 s): their windows are scored
    assert [round(w.end_ts, 1) for w in resumed] == [0.5, 0.6, 3600.3]
    stats = windower.asset_stats()["pump"]
    assert stats.ticks == 36004
    assert stats.windows == 5
    assert stats.stale_windows == (36004 - 3) - 5  # every window ending on the grid but the 5 scored


def test_readings_route_only_to_their_assets() -> None:
    other = AssetWindowSpec(asset="fan", model="m", inputs=(("t", "a"),), window_length=1, stride=1,
                            sample_period_s=0.1, staleness_s=1.0)
    windower = Windower([spec(length=1, stride=1), other])
    assert [w.asset for w in windower.push(Reading("t", 0.0, {"a": 5.0, "zzz": 1.0}))] == ["fan"]
    assert windower.push(Reading("s", 0.0, {"a": 5.0, "b": 1.0}))[0].asset == "pump"


def test_late_sample_does_not_replace_newer_value() -> None:
    windower = Windower([spec(length=1, stride=1)])
    windower.push(Reading("s", 1.0, {"a": 1.0, "b": 1.0}))
    windower.push(Reading("s", 0.95, {"a": 99.0}))  # late, older than the held value
    (window,) = windower.push(Reading("s", 1.1, {"b": 2.0}))
    assert window.data[:, 0].tolist() == [1.0, 2.0]


def test_timestamps_slightly_early_still_complete_their_grid_point() -> None:
    windower = Windower([spec(length=4, stride=4)])
    t0 = 1795779706.123456
    windows = []
    for i in range(4):  # jitter/rounding by the sender: every other sample lands just before its grid point
        ts = t0 + i * 0.1 - (0.0004 if i % 2 else 0.0)
        windows += windower.push(Reading("s", ts, {"a": 1.0, "b": 2.0}))
    assert len(windows) == 1
    assert windower.counters() == {"windows": 1, "stale_windows": 0}
