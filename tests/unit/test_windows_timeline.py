"""Readings far from an asset's own timeline: dropped and counted, a real clock jump re-anchors the grid."""

from __future__ import annotations

import logging

import pytest

from edge_agent.sources import lineformats
from edge_agent.sources.lineformats import LineFormatError, parse_timestamp
from edge_agent.types import Reading
from edge_agent.windows import REANCHOR_AFTER, AssetWindowSpec, Windower


def windower(max_jump_s: float = 3600.0) -> Windower:
    return Windower([AssetWindowSpec(asset="pump", model="m", inputs=(("s", "a"), ("s", "b")),
                                     window_length=4, stride=2, sample_period_s=1.0, staleness_s=3.0,
                                     max_jump_s=max_jump_s)])


def feed(w: Windower, start: float, count: int) -> int:
    """`count` readings one second apart from `start` (a fake clock: the readings' own times)."""
    return sum(len(w.push(Reading("s", start + i, {"a": 1.0, "b": 2.0}))) for i in range(count))


def test_one_timestamp_in_the_far_future_is_dropped_and_scoring_goes_on() -> None:
    w = windower()
    assert feed(w, 1_700_000_000.0, 10) == 4
    assert w.push(Reading("s", 1e10, {"a": 1.0, "b": 2.0})) == []  # a garbage timestamp
    windows = feed(w, 1_700_000_010.0, 90)
    assert windows == 45  # every second point ends a window, as if the bad reading never came
    assert w.out_of_range() == 1
    assert w.counters()["stale_windows"] == 0  # no grid points were spent on the jump


def test_a_reading_far_in_the_past_is_dropped() -> None:
    w = windower()
    feed(w, 1_700_000_000.0, 10)
    assert w.push(Reading("s", 1_600_000_000.0, {"a": 1.0, "b": 2.0})) == []
    assert w.out_of_range() == 1
    assert feed(w, 1_700_000_010.0, 4) == 2


def test_a_backwards_clock_jump_re_anchors_after_consecutive_readings() -> None:
    w = windower()
    feed(w, 1_700_000_000.0, 10)
    jumped = 1_699_000_000.0  # the device's clock went back ~11 days and stays there
    windows = feed(w, jumped, 40)
    assert w.out_of_range() == REANCHOR_AFTER - 1
    assert w.aligners["pump"].stats.reanchors == 1
    # the readings after the re-anchor build windows on the new timeline
    assert windows == (40 - (REANCHOR_AFTER - 1) - 4) // 2 + 1
    assert w.counters()["stale_windows"] == 0


def test_scattered_garbage_never_re_anchors() -> None:
    w = windower()
    feed(w, 1_700_000_000.0, 10)
    for i in range(3 * REANCHOR_AFTER):  # each far from the timeline and far from the previous one
        w.push(Reading("s", 1e10 + i * 1e6, {"a": 1.0, "b": 2.0}))
    assert w.aligners["pump"].stats.reanchors == 0
    assert w.out_of_range() == 3 * REANCHOR_AFTER
    assert feed(w, 1_700_000_010.0, 4) == 2


def test_gap_within_max_jump_counts_stale_windows_not_seconds() -> None:
    w = windower(max_jump_s=86_400.0)
    feed(w, 0.0, 10)  # a replay with rebase = false: 1970 timestamps are fine
    feed(w, 3600.0, 10)  # one hour of silence
    stale = w.counters()["stale_windows"]
    assert 0 < stale <= 3600 // 2 + 2  # windows (stride 2) in the gap, never more than the grid holds
    assert w.out_of_range() == 0


def test_milliseconds_sent_as_seconds_are_rejected_at_the_source() -> None:
    with pytest.raises(LineFormatError, match="milliseconds"):
        parse_timestamp(1.7e12, "unix_s")
    assert parse_timestamp(1.7e12, "unix_ms") == pytest.approx(1.7e9)
    with pytest.raises(LineFormatError, match="outside"):
        parse_timestamp(-5.0, "unix_s")


def test_iso_timestamps_are_held_to_the_same_range() -> None:
    assert parse_timestamp("2026-11-27T12:00:00+01:00", "iso8601") == pytest.approx(1_795_777_200.0)
    for raw in ("0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00"):
        with pytest.raises(LineFormatError, match=r"outside 1970\.\.9999"):
            parse_timestamp(raw, "iso8601")


def test_a_clock_stepped_back_within_max_jump_re_anchors() -> None:
    """A device clock stepped back two hours (within max_jump_s): the readings lie behind the window grid and
    could only ever be stale. They are dropped and counted, and the consecutive ones re-anchor the grid,
    instead of leaving the asset unscored for two hours with nothing logged."""
    w = windower(max_jump_s=86_400.0)
    assert feed(w, 1_700_000_000.0, 10) == 4
    windows = feed(w, 1_700_000_000.0 - 7200.0, 40)
    assert w.out_of_range() == REANCHOR_AFTER - 1
    assert w.aligners["pump"].stats.reanchors == 1
    assert windows == (40 - (REANCHOR_AFTER - 1) - 4) // 2 + 1


def test_one_reading_ahead_within_max_jump_costs_a_re_anchor_not_an_hour() -> None:
    """One reading an hour ahead (within max_jump_s) moves the grid forward; the correct readings after it
    are behind that grid, so after REANCHOR_AFTER of them the grid goes back to their time."""
    w = windower(max_jump_s=86_400.0)
    start = 1_700_000_000.0
    feed(w, start, 10)
    w.push(Reading("s", start + 10 + 3600.0, {"a": 1.0, "b": 2.0}))
    windows = feed(w, start + 10, 60)
    assert w.aligners["pump"].stats.reanchors == 1
    assert w.out_of_range() == REANCHOR_AFTER - 1
    assert windows == (60 - (REANCHOR_AFTER - 1) - 4) // 2 + 1


def test_a_late_reading_within_staleness_is_still_held() -> None:
    w = Windower([AssetWindowSpec(asset="pump", model="m", inputs=(("s", "a"), ("t", "b")), window_length=4,
                                  stride=2, sample_period_s=1.0, staleness_s=3.0)])
    windows = []
    for i in range(20):  # source t's samples arrive 2 s late (within staleness): still fresh, never dropped
        windows += w.push(Reading("s", 100.0 + i, {"a": 1.0}))
        windows += w.push(Reading("t", 100.0 + i - 2.0, {"b": 2.0}))
    assert w.out_of_range() == 0
    # windows end at 103, 105, ..., 119; only the first is stale (its point 100 was cut before t's first
    # sample arrived)
    assert [win.end_ts for win in windows] == [105.0 + 2 * k for k in range(8)]
    assert w.counters()["stale_windows"] == 1


def test_a_source_lagging_past_staleness_does_not_move_the_grid() -> None:
    """Source t lags 10 s behind source s on the same asset: its readings can only be stale, so they are
    dropped and counted, and the windows are stale as they would be anyway; s's readings in between keep
    the grid where it is (no re-anchor back and forth)."""
    w = Windower([AssetWindowSpec(asset="pump", model="m", inputs=(("s", "a"), ("t", "b")), window_length=4,
                                  stride=2, sample_period_s=1.0, staleness_s=3.0)])
    for i in range(5 * REANCHOR_AFTER):
        w.push(Reading("s", 100.0 + i, {"a": 1.0}))
        w.push(Reading("t", 100.0 + i - 10.0, {"b": 2.0}))
    assert w.aligners["pump"].stats.reanchors == 0
    assert w.out_of_range() >= 5 * REANCHOR_AFTER - 10
    assert w.counters()["windows"] == 0


def test_seconds_sent_as_milliseconds_are_accepted_with_a_hint(caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A device sending Unix seconds under unix_ms lands in 1970 and no window is ever complete; a
    millisecond uptime counter looks the same, so the reading stays, with a warning naming the source and
    the fix: once an hour per source, so one source cannot hide another's."""
    caplog.set_level(logging.WARNING, logger="edge_agent.sources.lineformats")
    monkeypatch.setattr(lineformats, "_seconds_as_ms_logs", {})
    assert parse_timestamp(1.5, "unix_ms", "line1") == pytest.approx(0.0015)  # an uptime counter's start
    assert "unix_s" not in caplog.text
    assert parse_timestamp(1_800_000_000, "unix_ms", "line1") == pytest.approx(1_800_000.0)
    assert parse_timestamp(1_800_000_001, "unix_ms", "line1") == pytest.approx(1_800_000.001)
    assert parse_timestamp(1_800_000_002, "unix_ms", "plant") == pytest.approx(1_800_000.002)
    warnings = [r.getMessage() for r in caplog.records]
    hint = ' read as unix_ms is in 1970-01-21: if the device sends seconds, set timestamp_format = "unix_s"'
    assert warnings == [f"source line1: timestamp 1800000000{hint}",
                        f"source plant: timestamp 1800000002{hint}"]
