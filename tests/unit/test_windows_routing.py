"""A reading carrying an asset's channels in model order takes the whole-asset path of the windower; it must
give exactly the windows the per-channel path gives for the same samples."""

from __future__ import annotations

import numpy as np

from edge_agent.types import Reading
from edge_agent.windows import AssetWindowSpec, Windower

CHANNELS = ("a", "b", "c")


def spec(asset: str = "pump") -> AssetWindowSpec:
    return AssetWindowSpec(asset=asset, model="m", inputs=tuple(("s", c) for c in CHANNELS), window_length=5,
                           stride=2, sample_period_s=0.1, staleness_s=0.25)


def windows(readings: list[Reading]) -> list[tuple[float, list[list[float]]]]:
    windower = Windower([spec()])
    return [(w.end_ts, w.data.tolist()) for r in readings for w in windower.push(r)]


def test_whole_asset_readings_give_the_same_windows_as_shuffled_ones() -> None:
    rng = np.random.default_rng(3)
    times = [100.0 + i / 10 for i in range(40)]
    times[17], times[18] = times[18], times[17]  # one sample arrives late: it must not replace a newer one
    del times[25:29]  # and a gap long enough to make windows stale
    values = [dict(zip(CHANNELS, rng.standard_normal(3).tolist(), strict=True)) for _ in times]
    in_order = [Reading("s", t, v) for t, v in zip(times, values, strict=True)]
    shuffled = [Reading("s", t, {k: v[k] for k in ("c", "a", "b")})
                for t, v in zip(times, values, strict=True)]
    fast, general = windows(in_order), windows(shuffled)
    assert fast == general
    assert len(fast) >= 5


def test_readings_with_extra_fields_feed_only_the_routed_channels() -> None:
    windower = Windower([spec("p1"), AssetWindowSpec(asset="p2", model="m", inputs=(("s", "x"),),
                                                       window_length=2, stride=1, sample_period_s=0.1,
                                                       staleness_s=0.25)])
    out = []
    for i in range(6):
        out += windower.push(Reading("s", 1.0 + i / 10, {"a": i, "b": 2.0 * i, "c": 3.0 * i, "x": -i}))
    by_asset = {w.asset: w for w in out}
    assert by_asset["p1"].data[:, -1].tolist() == [4.0, 8.0, 12.0]  # its last window ends at the 5th
    assert by_asset["p2"].data.tolist() == [[-4.0, -5.0]]
