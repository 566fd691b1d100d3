from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from edge_agent.configtools import ConfigError, Section
from edge_agent.decisions import DecisionConfig, DecisionEngine, new_id, peak_time, root_cause
from edge_agent.types import GatewayIdentity, ScoredWindow, Window

IDENTITY = GatewayIdentity(site="s1", area="a1", line="l1", gateway_id="gw1")
CHANNELS = ["flow", "pressure", "temp"]


def manifest(k: int = 2, n: int = 3, clear: int = 3, threshold: float = 1.0) -> dict[str, Any]:
    return {"name": "pumps", "version": "1.0.0", "models": [{
        "name": "pump", "input": {"channels": CHANNELS},
        "threshold": {"value": threshold},
        "severity": [{"level": "warning", "min_score": threshold},
                     {"level": "high", "min_score": 2 * threshold},
                     {"level": "critical", "min_score": 4 * threshold}],
        "debounce": {"k": k, "n": n, "clear_windows": clear}}]}


class Feeder:
    """Feeds windows one second apart (a fake clock) to an engine."""

    def __init__(self, engine: DecisionEngine, asset: str = "pump-1") -> None:
        self.engine = engine
        self.asset = asset
        self.now = 1_800_000_000.0
        self.version = "1.0.0"

    def feed(self, score: float, hot_channel: int = 0, flat: tuple[str, ...] = ()) -> list:
        self.now += 1.0
        errors = np.full(3, 0.1, dtype=np.float32)
        errors[hot_channel] = 1.0
        time_error = np.zeros(5, dtype=np.float32)
        time_error[3] = 1.0
        window = Window(self.asset, "pump", self.now - 4, self.now, np.zeros((3, 5), np.float32))
        scored = ScoredWindow(window, score, score, 1.0, errors, np.zeros(2, np.float32), time_error,
                              "pumps", self.version, flat)
        return self.engine.process(scored, self.now)


def engine(update_interval_s: float = 60.0, **kw: Any) -> DecisionEngine:
    return DecisionEngine(DecisionConfig(update_interval_s=update_interval_s), IDENTITY, None, manifest(**kw))


def test_debounce_needs_k_of_n_above() -> None:
    f = Feeder(engine(k=2, n=3))
    assert f.feed(1.5) == []          # 1 of 3
    assert f.feed(0.5) == []          # 1 of 3
    events = f.feed(1.5)              # 2 of 3 -> open
    assert [e.state for e in events] == ["open"]
    assert events[0].severity == "warning"


def test_isolated_spikes_never_open() -> None:
    f = Feeder(engine(k=2, n=3))
    events = [e for score in [1.5, 0.2, 0.2, 1.5, 0.2, 0.2, 1.5] for e in f.feed(score)]
    assert events == []


def test_sustained_fault_with_dips_is_one_episode() -> None:
    f = Feeder(engine(k=2, n=3, clear=3))
    scores = [1.5, 1.5] + [1.5, 0.5, 1.5, 0.5, 0.5, 1.5] * 5 + [0.5, 0.5, 0.5]
    events = [e for s in scores for e in f.feed(s)]
    assert [e.state for e in events] == ["open", "close"]
    assert len({e.episode_id for e in events}) == 1
    assert events[1].extra["reason"] == "cleared"


def test_rising_severity_updates_at_once_falling_waits_for_periodic() -> None:
    f = Feeder(engine(update_interval_s=10.0, k=1, n=1, clear=2))
    assert [e.state for e in f.feed(1.2)] == ["open"]
    rise = f.feed(2.5)
    assert [(e.state, e.severity, e.extra["reason"]) for e in rise] == [("update", "high", "severity")]
    crit = f.feed(5.0)
    assert [(e.state, e.severity) for e in crit] == [("update", "critical")]
    quiet = [e for _ in range(8) for e in f.feed(1.2)]
    assert quiet == []  # falling severity is not announced immediately
    periodic = [e for _ in range(3) for e in f.feed(1.2)]
    assert [(e.state, e.extra["reason"], e.severity) for e in periodic] == [("update", "periodic", "warning")]


def test_close_reports_the_peak_window_and_root_cause() -> None:
    f = Feeder(engine(k=1, n=1, clear=1))
    f.feed(1.5, hot_channel=0)
    f.feed(3.0, hot_channel=2)
    f.feed(1.5, hot_channel=0)
    (close,) = f.feed(0.1)
    assert close.state == "close"
    assert close.score == pytest.approx(3.0)
    assert close.root_cause[0].channel == "temp"
    assert close.extra["peak_score"] == pytest.approx(3.0)


def test_root_cause_ranks_channels_by_share() -> None:
    ranked = root_cause(np.array([0.1, 0.6, 0.3]), CHANNELS)
    assert [r.channel for r in ranked] == ["pressure", "temp", "flow"]
    assert sum(r.share for r in ranked) == pytest.approx(1.0)
    assert ranked[0].share == pytest.approx(0.6)


def test_peak_time_uses_window_timestamps_or_interpolates() -> None:
    data = np.zeros((3, 5), np.float32)
    te = np.array([0, 0, 5, 1, 0], np.float32)
    common = (1.0, 1.0, 1.0, np.zeros(3), np.zeros(2), te, "b", "1")
    plain = ScoredWindow(Window("a", "pump", 100.0, 104.0, data), *common)
    assert peak_time(plain) == pytest.approx(102.0)
    stamped = ScoredWindow(Window("a", "pump", 100.0, 104.0, data, np.array([100, 100.5, 101.7, 103, 104.0])),
                           *common)
    assert peak_time(stamped) == pytest.approx(101.7)


def test_assets_are_independent() -> None:
    e = engine(k=1, n=1, clear=1)
    a, b = Feeder(e, "pump-1"), Feeder(e, "pump-2")
    assert [x.asset for x in a.feed(2.0)] == ["pump-1"]
    assert b.feed(0.1) == []
    assert [ep["asset"] for ep in e.open_episodes()] == ["pump-1"]


def test_swap_manifest_closes_vanished_models() -> None:
    e = engine(k=1, n=1)
    Feeder(e).feed(2.0)
    other = manifest()
    other["models"][0]["name"] = "fan"
    events = e.swap_manifest(other, now=1_900_000_000.0)
    assert [(ev.state, ev.model, ev.extra["reason"]) for ev in events] == [("close", "pump", "model_removed")]
    assert e.open_episodes() == []


def test_unknown_model_is_a_clear_error() -> None:
    e = engine()
    window = Window("pump-1", "nope", 0.0, 1.0, np.zeros((3, 5), np.float32))
    scored = ScoredWindow(window, 1.0, 1.0, 1.0, np.zeros(3), np.zeros(2), np.zeros(5), "pumps", "1.0.0")
    with pytest.raises(KeyError, match="nope"):
        e.process(scored, 1.0)


def test_ids_are_unique_and_time_sortable() -> None:
    ids = [new_id(1_800_000_000.0 + i) for i in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def _id_millis(ulid: str) -> int:
    return int("".join(format("0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(c), "05b") for c in ulid)[2:50], 2)


def test_ids_keep_creation_order_when_the_clock_steps_back_or_stands_still() -> None:
    """NTP steps the gateway clock back an hour: later ids still sort after earlier ones (the ULID monotonic
    mode keeps the last millisecond and counts up), and once the clock passes it again they follow it."""
    t = 2_000_000_000.0
    ids = [new_id(t), new_id(t), new_id(t - 3600.0), new_id(t - 3600.0), new_id(t - 0.0005), new_id(t + 1.0)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [_id_millis(i) for i in ids] == [2_000_000_000_000] * 5 + [2_000_000_001_000]


def test_ids_made_on_several_threads_are_unique_and_ordered_per_thread() -> None:
    def make() -> list[str]:
        return [new_id(2_100_000_000.0) for _ in range(2000)]

    with ThreadPoolExecutor(4) as pool:
        batches = [future.result() for future in [pool.submit(make) for _ in range(4)]]
    assert all(batch == sorted(batch) for batch in batches)
    assert len({i for batch in batches for i in batch}) == 8000


def test_config_parsing_and_errors() -> None:
    cfg = DecisionConfig.from_section(Section({"update_interval_s": 30, "debounce": {"k": 2, "n": 4}},
                                              "decisions"))
    assert cfg == DecisionConfig(update_interval_s=30.0, debounce_k=2, debounce_n=4)
    with pytest.raises(ConfigError, match=r"decisions -> debounce -> k"):
        DecisionConfig.from_section(Section({"debounce": {"k": 5, "n": 3}}, "decisions"))
    with pytest.raises(ConfigError, match=r"decisions -> interval: unknown key"):
        DecisionConfig.from_section(Section({"interval": 3}, "decisions"))


def test_messages_after_a_bundle_swap_name_the_bundle_that_scored_the_window() -> None:
    e = engine(k=1, n=1, clear=1)
    f = Feeder(e)
    (opened,) = f.feed(1.5)
    assert e.swap_manifest(manifest(k=1, n=1, clear=1), now=f.now) == []  # same model: episode continues
    f.version = "2.0.0"
    (rise,) = f.feed(5.0)
    assert rise.episode_id == opened.episode_id
    assert (opened.bundle_version, rise.bundle_version) == ("1.0.0", "2.0.0")



def test_process_batch_equals_processing_one_by_one() -> None:
    rng = np.random.default_rng(5)
    items = []
    for step, score in enumerate([0.5, 2.0, 2.5, 0.4, 0.3, 0.2, 3.0, 0.2, 0.1, 0.1]):
        window = Window("pump-1", "pump", step, step + 4.0, np.zeros((3, 5), np.float32))
        errors, time_error = rng.random(3).astype(np.float32), rng.random(5).astype(np.float32)
        items.append(ScoredWindow(window, score, score, 1.0, errors, np.zeros(2, np.float32), time_error,
                                  "pumps", "1.0.0"))
    one = engine(k=2, n=3)
    singly = [e for item in items for e in one.process(item, 1_800_000_000.0)]
    together = engine(k=2, n=3).process_batch(items, 1_800_000_000.0)
    assert [(e.state, e.score, e.peak_ts, e.root_cause) for e in together] == [
        (e.state, e.score, e.peak_ts, e.root_cause) for e in singly]
    assert [e.state for e in together] == ["open", "close"]


def test_a_wall_clock_stepped_back_does_not_silence_the_periodic_update() -> None:
    """NTP steps a gateway's clock back an hour while an episode is open: the next window sends the update
    (its time the new reference), and the updates come every `update_interval_s` after it, instead of
    nothing for the hour of the step."""
    f = Feeder(engine(update_interval_s=60.0, k=1, n=1))
    assert [e.state for e in f.feed(1.5)] == ["open"]
    for _ in range(30):
        assert f.feed(1.5) == []
    f.now -= 3600.0
    stepped = f.feed(1.5)
    assert [(e.state, e.extra["reason"]) for e in stepped] == [("update", "periodic")]
    later = [e for _ in range(180) for e in f.feed(1.5)]
    assert [(e.state, e.extra["reason"]) for e in later] == [("update", "periodic")] * 3


def test_every_message_reports_the_severity_of_its_own_score() -> None:
    """Open at a critical score, a periodic update at a warning one, then the close: the close reports the
    peak window and its level (it used to say the lowered running severity, "warning", next to 5.0)."""
    f = Feeder(engine(update_interval_s=10.0, k=1, n=1, clear=2))
    (opened,) = f.feed(5.0)
    periodic = [e for _ in range(10) for e in f.feed(1.2)]
    closed = f.feed(0.5) + f.feed(0.5)
    assert [(e.state, e.score, e.severity) for e in [opened, *periodic, *closed]] == [
        ("open", 5.0, "critical"), ("update", 1.2, "warning"), ("close", 5.0, "critical")]


def test_periodic_update_of_a_window_below_the_threshold_reports_that_window_s_level() -> None:
    """A data gap longer than update_interval_s, then a window below the threshold (and below every
    min_score): the periodic update reports it with the first level of the ladder, not the old "critical";
    the running severity follows, so a later rise is announced at once."""
    f = Feeder(engine(update_interval_s=10.0, k=1, n=1, clear=3))
    assert [e.severity for e in f.feed(5.0)] == ["critical"]
    f.now += 30.0
    (periodic,) = f.feed(0.5)
    assert (periodic.extra["reason"], periodic.score, periodic.severity) == ("periodic", 0.5, "warning")
    (rise,) = f.feed(2.5)
    assert (rise.extra["reason"], rise.score, rise.severity) == ("severity", 2.5, "high")
    (rise,) = f.feed(5.0)
    assert (rise.extra["reason"], rise.severity) == ("severity", "critical")


def test_closes_for_a_removed_model_or_asset_report_the_peak_and_its_level() -> None:
    for remove in ("model", "asset"):
        e = engine(update_interval_s=10.0, k=1, n=1, clear=3)
        f = Feeder(e)
        f.feed(5.0)
        assert [ev.severity for _ in range(10) for ev in f.feed(1.2)] == ["warning"]
        if remove == "model":
            other = manifest()
            other["models"][0]["name"] = "fan"
            (close,) = e.swap_manifest(other, now=f.now + 1)  # the model's ladder is gone
        else:
            (close,) = e.orphaned_episodes(f.now + 1, assets=[("pump-2", "pump")])
        assert (close.state, close.score, close.severity) == ("close", 5.0, "critical"), remove


class FakeStore:
    """The part of `Store` the engine reads at start-up: one open episode, as the agent left it."""

    def __init__(self, **row: Any) -> None:
        self.row = {"episode_id": new_id(1_800_000_000.0), "asset": "pump-1", "model": "pump",
                    "bundle_name": "pumps", "bundle_version": "1.0.0", "start_ts": 1_800_000_000.0,
                    "last_event_ts": 1_800_000_030.0, "severity": "warning", "peak_score": 5.0,
                    "last_score": 1.2, "alerts": 2, "threshold": 1.0, **row}

    def open_episodes(self) -> list[dict[str, Any]]:
        return [dict(self.row)]


def test_a_restored_episode_closed_before_any_window_reports_its_peak_at_the_peak_s_level() -> None:
    """Restored after a restart (last message a warning update at 1.2, peak 5.0), then its model leaves the
    bundle, or its asset the config, before any window: the close reports the peak and "critical"."""
    for remove in ("model", "asset"):
        e = DecisionEngine(DecisionConfig(), IDENTITY, FakeStore(), manifest())
        if remove == "model":
            other = manifest()
            other["models"][0]["name"] = "fan"
            (close,) = e.swap_manifest(other, now=1_800_000_100.0)
        else:
            (close,) = e.orphaned_episodes(1_800_000_100.0, assets=[])
        assert (close.state, close.score, close.severity) == ("close", 5.0, "critical"), remove


def test_a_restored_episode_whose_model_is_gone_closes_with_its_last_message_s_score_and_level() -> None:
    """No ladder to rate the peak with: the close repeats the last message's score and severity (both from
    the episode row), and `peak_score` still says the peak."""
    other = manifest()
    other["models"][0]["name"] = "fan"
    e = DecisionEngine(DecisionConfig(), IDENTITY, FakeStore(), other)
    (close,) = e.orphaned_episodes(1_800_000_100.0)
    assert (close.extra["reason"], close.score, close.severity) == ("model_removed", 1.2, "warning")
    assert close.extra["peak_score"] == 5.0


def test_a_restored_episode_goes_on_from_its_last_message_s_severity() -> None:
    f = Feeder(DecisionEngine(DecisionConfig(update_interval_s=10.0), IDENTITY,
                              FakeStore(severity="high", last_score=2.5), manifest(k=1, n=1, clear=3)))
    f.now = 1_800_000_030.0
    assert f.feed(2.5) == []  # same level as the last message: nothing to announce
    (rise,) = f.feed(5.0)
    assert (rise.extra["reason"], rise.severity) == ("severity", "critical")
    f.now += 30.0
    (periodic,) = f.feed(0.5)
    assert (periodic.extra["reason"], periodic.score, periodic.severity) == ("periodic", 0.5, "warning")
    closed = f.feed(0.5) + f.feed(0.5)
    assert [(e.state, e.score, e.severity) for e in closed] == [("close", 5.0, "critical")]


def test_a_silent_asset_gets_one_no_data_update_per_silence() -> None:
    e = engine(k=1, n=1, clear=2)
    f = Feeder(e)
    assert [x.state for x in f.feed(5.0)] == ["open"]
    f.feed(1.5)  # the last window before the sensors stop
    other = Feeder(e, asset="pump-2")
    other.feed(0.5)  # another asset, no episode: nothing to report for it
    assert e.silent("pump-2", f.now + 30) == []
    events = e.silent("pump-1", f.now + 30)
    assert [(x.state, x.extra["reason"], x.score, x.severity) for x in events] == [
        ("update", "no_data", 1.5, "warning")]  # the last window scored, at its own level
    assert events[0].window_end_ts == f.now
    assert e.silent("pump-1", f.now + 40) == []  # once per silence
    f.now += 40  # the sensors come back
    assert f.feed(1.5) == []  # the episode goes on as before
    assert [x.extra["reason"] for x in e.silent("pump-1", f.now + 30)] == ["no_data"]  # a new silence
    f.now += 40
    assert [x.state for x in f.feed(0.2) + f.feed(0.2)] == ["close"]
    assert e.silent("pump-1", f.now + 30) == []  # closed: nothing open to report


def test_a_restored_episode_closes_with_its_kept_peak_window_unless_a_later_one_scored_higher() -> None:
    """The episode row keeps the peak window (`peak_window`): after a restart the close reports it, at its
    level on the model's ladder, with its root cause, not the best window since the restart."""
    kept = {"score": 5.0, "severity": "critical", "start_ts": 1_800_000_001.0, "end_ts": 1_800_000_005.0,
            "peak_ts": 1_800_000_004.0, "root_cause": [["temp", 0.7], ["flow", 0.2], ["pressure", 0.1]],
            "threshold": 1.0, "bundle_name": "pumps", "bundle_version": "1.0.0"}
    for later, expected in ((1.5, (5.0, "critical", "temp", 1_800_000_005.0)),
                            (6.0, (6.0, "critical", "flow", 1_800_000_031.0))):
        f = Feeder(DecisionEngine(DecisionConfig(update_interval_s=3600.0), IDENTITY,
                                  FakeStore(peak_window=kept), manifest(k=1, n=1, clear=2)))
        f.now = 1_800_000_030.0
        events = f.feed(later) + f.feed(0.5) + f.feed(0.5)
        closes = [e for e in events if e.state == "close"]
        assert len(closes) == 1
        close = closes[0]
        assert (close.score, close.severity, close.root_cause[0].channel, close.window_end_ts) == expected
    # a kept value that cannot be read: the close falls back to the best window since the restart
    f = Feeder(DecisionEngine(DecisionConfig(update_interval_s=3600.0), IDENTITY,
                              FakeStore(peak_window={"score": "x"}), manifest(k=1, n=1, clear=2)))
    f.now = 1_800_000_030.0
    (close,) = [e for e in f.feed(1.5) + f.feed(0.5) + f.feed(0.5) if e.state == "close"]
    assert close.score == 1.5


def test_a_flat_lined_channel_opens_keeps_and_closes_an_episode_whatever_the_score() -> None:
    """A stuck sensor: its windows score below the threshold (a frozen plausible value reconstructs well),
    but the flat line counts as above. The open says so and names the flat channel apart (the root cause
    stays ranked by share); the episode closes once the channel moves again (clear_windows windows)."""
    f = Feeder(engine(k=2, n=3, clear=2))
    assert f.feed(0.3, hot_channel=0, flat=("temp",)) == []  # 1 of 3
    (opened,) = f.feed(0.3, hot_channel=0, flat=("temp",))
    assert opened.state == "open"
    assert opened.extra["reason"] == "flatline"
    assert [entry.channel for entry in opened.root_cause] == ["flow", "pressure", "temp"]  # by share
    assert opened.flat == ("temp",)  # named apart (alert root_cause.flat)
    assert opened.score == pytest.approx(0.3)
    assert opened.severity == "warning"  # the score's own level (the lowest)
    assert f.feed(0.3, flat=("temp",)) == []  # still stuck: the episode stays open
    assert [e["flat"] for e in f.engine.open_episodes()] == [["temp"]]  # `edge-agent status` shows it
    assert f.feed(0.3) == []
    assert [e["flat"] for e in f.engine.open_episodes()] == [[]]  # moving again, closing
    (closed,) = f.feed(0.3)
    assert (closed.state, closed.extra["reason"]) == ("close", "cleared")
    assert closed.episode_id == opened.episode_id
    assert closed.flat == ("temp",)  # the close reports the peak window: the first flat one


def test_an_episode_opened_by_the_score_says_debounce_even_with_a_flat_line_later() -> None:
    f = Feeder(engine(k=1, n=1, clear=2))
    (opened,) = f.feed(1.5)
    assert opened.extra["reason"] == "debounce"
    assert f.feed(0.3, flat=("temp",)) == []  # the flat line keeps it open
    assert f.feed(0.3) == []
    assert [e.state for e in f.feed(0.3)] == ["close"]


def test_flatline_false_in_the_config_turns_the_check_off() -> None:
    config = DecisionConfig.from_section(Section({"flatline": False}, "decisions"))
    assert config.flatline is False
    assert DecisionConfig.from_section(Section({}, "decisions")).flatline is True
    f = Feeder(DecisionEngine(config, IDENTITY, None, manifest(k=1, n=1)))
    assert f.feed(0.3, flat=("temp",)) == []
    with pytest.raises(ConfigError, match="flatline"):
        DecisionConfig.from_section(Section({"flatline": "yes"}, "decisions"))


def test_the_kept_peak_window_keeps_its_flat_channels_across_a_restart() -> None:
    from edge_agent.decisions import _Summary, _summary_from_record, _summary_record

    summary = _Summary(0.3, "warning", 1.0, 2.0, 1.5, (), 1.0, "b", "1", ("temp",))
    record = json.loads(json.dumps(_summary_record(summary)))  # as the episodes table keeps it
    restored = _summary_from_record(record, None)
    assert restored is not None
    assert restored.flat == ("temp",)
    del record["flat"]  # a row written before the check
    old = _summary_from_record(record, None)
    assert old is not None
    assert old.flat == ()


def test_status_names_a_stuck_sensor_in_an_open_episode() -> None:
    from edge_agent.commands import format_status

    f = Feeder(engine(k=1, n=1, clear=2))
    f.feed(0.3, flat=("temp",))
    text = format_status({"running": True, "open_episodes": f.engine.open_episodes()})
    assert "pump-1/pump warning (flat line on temp)" in text


def test_status_says_whether_the_flat_line_check_is_on_and_what_it_watches() -> None:
    from edge_agent.commands import format_status

    def line(flatline: dict) -> str:
        text = format_status({"running": True, "flatline": flatline})
        return next(part for part in text.splitlines() if part.startswith("flat-line check:"))

    assert line({"enabled": True, "models": {"pump": ["flow", "pressure"], "fan": []}}) == (
        "flat-line check: on (pump: flow, pressure; fan: no channel)")
    assert line({"enabled": True, "models": {"pump": None}}) == (
        "flat-line check: on (pump: none (manifest schema 1))")
    assert line({"enabled": False, "models": {"pump": ["flow"]}}) == (
        "flat-line check: off ([decisions] flatline = false)")
