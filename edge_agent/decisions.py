"""From scored windows to alert episodes: debounce, hysteresis, severity, root cause.

Per (asset, model):

- **open**: `k` of the last `n` windows above the threshold (the manifest's `debounce`) open an episode.
  A window in which one of the manifest's `flatline` channels did not change at all (a stuck sensor; the
  bundle says that channel never held one value for over half a window in healthy data) counts as above
  whatever its score; an episode it opens says `reason: flatline`, and every message reporting such a
  window names the flat channels (`root_cause.flat`). `[decisions] flatline = false` turns this off.
- **update**: at most every `update_interval_s` while the episode lasts, and at once when the severity
  *rises*. A fall in severity is reported by the next periodic update (which reports the highest-scoring
  window since the previous message), so a score wandering around a level boundary does not flood SCADA.
  Once per silence, `reason: no_data` when no window of the asset comes any more (`silent`, called by the
  supervisor): the episode stays open but is not being evaluated.
- **close**: after `clear_windows` consecutive windows below the threshold (hysteresis). A sustained fault,
  even one that dips below the threshold for a few windows, is therefore ONE episode.

Every message's severity is the level of the score it reports: the highest manifest level whose
`min_score` that score reaches (levels ascend; below every `min_score`, the first level). Root cause:
channels ranked by their share of the window's excess reconstruction error (`channel_error / sum`), and the
peak time is the timestamp of `argmax(time_error)`; both are computed only for windows that open an episode or
fall inside one (most windows are normal and cost a deque append). Open episodes are stored in the
`episodes` table (through the outbox transaction), with the peak window the last message knew, and restored
after a restart or a reload (a close then still reports the episode's peak window). Each message names the
bundle that scored the window it reports (after a hot swap an episode's `update`/`close` carry the new
bundle; the `episodes` row keeps the bundle that opened it).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.configtools import ConfigError, Section
from edge_agent.types import AlertEvent, EpisodeState, GatewayIdentity, RootCauseEntry, ScoredWindow

log = logging.getLogger(__name__)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class _MonotonicUlids:
    """The last ULID this process made (as a 128-bit number), behind a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self, millis: int) -> int:
        with self._lock:
            if millis > self._last >> 80:
                self._last = (millis << 80) | int.from_bytes(os.urandom(10), "big")
            else:
                # an overflow of the 80 random bits carries into the time: still unique and ascending
                self._last += 1
            return self._last


_ULIDS = _MonotonicUlids()


def new_id(now: float | None = None) -> str:
    """A ULID: 26 Crockford base32 characters, 48-bit millisecond time + 80 random bits.

    Unique, and monotonic within this process (the ULID spec's monotonic mode): when the millisecond is
    not after the last id's (several ids in one millisecond, or the wall clock stepped back), the last id's
    time is kept and its random part incremented. So the ids of one agent process sort in creation order;
    their time part is then not always the creation time. Across a restart they sort by wall-clock time
    only: after the clock stepped back, a new process's ids may sort before the previous one's.
    Thread-safe."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = _ULIDS.next(millis)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclass(frozen=True)
class DecisionConfig:
    """The `[decisions]` table. Debounce values left out come from each model's manifest entry."""

    update_interval_s: float = 60.0
    debounce_k: int | None = None
    debounce_n: int | None = None
    clear_windows: int | None = None
    flatline: bool = True  # a window with a flat-lined channel (manifest `flatline`) counts as above

    @classmethod
    def from_section(cls, section: Section) -> DecisionConfig:
        """Parse `update_interval_s`, `flatline` (default true) and an optional `[decisions.debounce]` table
        (`k`, `n`, `clear_windows`) that overrides every model's manifest debounce."""
        update = section.number("update_interval_s", cls.update_interval_s, minimum=0.0,
                                exclusive_minimum=True)
        flatline = section.get("flatline", bool, cls.flatline)
        debounce = section.section("debounce", {})
        k = debounce.get("k", int, None)
        n = debounce.get("n", int, None)
        clear = debounce.get("clear_windows", int, None)
        debounce.finish()
        section.finish()
        for key, value in (("k", k), ("n", n), ("clear_windows", clear)):
            if value is not None and value < 1:
                raise ConfigError(debounce.key_path(key), "must be at least 1", value)
        if k is not None and n is not None and k > n:
            raise ConfigError(debounce.key_path("k"), f"must not exceed n ({n})", k)
        return cls(update_interval_s=update, debounce_k=k, debounce_n=n, clear_windows=clear,
                   flatline=flatline)

    def debounce(self, model_debounce: Any) -> tuple[int, int, int]:
        """`(k, n, clear_windows)` for a model: these overrides, the model's manifest values where left out
        (`config.check_against_manifest` refuses a combination with k > n)."""
        return (self.debounce_k or int(_field(model_debounce, "k")),
                self.debounce_n or int(_field(model_debounce, "n")),
                self.clear_windows or int(_field(model_debounce, "clear_windows")))


@dataclass(frozen=True)
class ModelPolicy:
    """What the decision engine needs from one manifest model entry."""

    channels: tuple[str, ...]
    threshold: float
    severity: tuple[tuple[str, float], ...]  # (level, min_score), ascending
    k: int
    n: int
    clear_windows: int

    def severity_of(self, score: float) -> str:
        level = self.severity[0][0]
        for name, minimum in self.severity:
            if score >= minimum:
                level = name
        return level

    def rank(self, level: str) -> int:
        for index, (name, _minimum) in enumerate(self.severity):
            if name == level:
                return index
        return -1


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def policy_for(spec: Any, config: DecisionConfig) -> ModelPolicy:
    """Read threshold, severity levels, debounce and channel names from a manifest model entry."""
    threshold = float(_field(_field(spec, "threshold"), "value"))
    levels = tuple((str(_field(level, "level")), float(_field(level, "min_score")))
                   for level in _field(spec, "severity"))
    if not levels:
        levels = (("warning", threshold),)
    levels = tuple(sorted(levels, key=lambda item: item[1]))
    k, n, clear = config.debounce(_field(spec, "debounce"))
    channels = tuple(str(c) for c in _field(_field(spec, "input"), "channels"))
    return ModelPolicy(channels, threshold, levels, min(k, n), max(k, n), clear)


@dataclass
class _Summary:
    """The parts of one scored window an alert reports."""

    score: float
    severity: str  # the level of `score` on the ladder of the model that scored the window
    start_ts: float
    end_ts: float
    peak_ts: float
    root_cause: tuple[RootCauseEntry, ...]
    threshold: float
    bundle_name: str
    bundle_version: str
    flat: tuple[str, ...] = ()  # the window's flat-lined channels (alert `root_cause.flat`)


@dataclass
class _Episode:
    episode_id: str
    asset: str
    model: str
    bundle_name: str
    bundle_version: str
    start_ts: float
    severity: str  # the level of the score the last message reported: a higher one sends `reason: severity`
    last_event_ts: float
    peak_score: float
    threshold: float
    below: int = 0
    interval_best: _Summary | None = None
    episode_best: _Summary | None = None
    last: _Summary | None = None
    restored: _Summary | None = None  # restored after a restart: what a close reports before any window
    restored_peak: _Summary | None = None  # restored: the peak window before the restart, when it was kept
    silent: bool = False  # `reason: no_data` sent; a new window of the asset clears it


@dataclass
class _Track:
    history: deque[bool]
    episode: _Episode | None = None
    last_score: float | None = None


def root_cause(channel_error: np.ndarray, channels: Sequence[str]) -> tuple[RootCauseEntry, ...]:
    """Channels ranked by share of `channel_error` (shares sum to 1; ties keep channel order; all equal when
    every channel reads 0)."""
    errors = np.clip(np.asarray(channel_error, dtype=np.float64).reshape(-1), 0.0, None)
    total = float(errors.sum())
    shares = errors / total if total > 0 else np.full(errors.shape, 1.0 / max(len(errors), 1))
    order = np.argsort(-shares, kind="stable").tolist()  # stable: ties keep channel order
    values = shares.tolist()
    names = list(channels) if len(channels) == len(errors) else [f"ch{i}" for i in range(len(errors))]
    return tuple(RootCauseEntry(names[i], round(values[i], 6)) for i in order)


def peak_time(scored: ScoredWindow) -> float:
    """Timestamp of the time step with the largest reconstruction error inside the window."""
    time_error = np.asarray(scored.time_error).reshape(-1)
    window = scored.window
    if time_error.size == 0:
        return window.end_ts
    index = int(np.argmax(time_error))
    if window.timestamps is not None and len(window.timestamps) == time_error.size:
        return float(window.timestamps[index])
    if time_error.size == 1:
        return window.end_ts
    return window.start_ts + index * (window.end_ts - window.start_ts) / (time_error.size - 1)


def _summary(scored: ScoredWindow, policy: ModelPolicy, flat: Sequence[str] = ()) -> _Summary:
    """What an alert would report about this window (with its flat-lined channels `flat`, when the check is
    on); only built for windows an episode may report."""
    window = scored.window
    return _Summary(scored.score, policy.severity_of(scored.score), window.start_ts, window.end_ts,
                    peak_time(scored), root_cause(scored.channel_error, policy.channels), scored.threshold,
                    scored.bundle_name, scored.bundle_version, tuple(flat))


def _restored_summary(policy: ModelPolicy | None, row: dict[str, Any], threshold: float) -> _Summary:
    """What the close of a restored episode reports when no window of its model was scored since the restart:
    the peak score at its level on the model's ladder; when the model has left the bundle (no ladder to rate
    the peak), the score and severity of the episode's last message. The window is the episode's span on the
    gateway clock (start to last message)."""
    if policy is not None:
        score, severity = float(row["peak_score"]), policy.severity_of(float(row["peak_score"]))
    else:
        score, severity = float(row["last_score"]), str(row["severity"])
    return _Summary(score, severity, row["start_ts"], row["last_event_ts"], row["last_event_ts"], (),
                    threshold, row["bundle_name"], row["bundle_version"])


def _restored_threshold(policy: ModelPolicy | None, row: dict[str, Any]) -> float:
    """A restored episode's threshold: its model's in the bundle now, else the one it was opened against
    (kept with the episode), else NaN (an episode from before that was kept, whose model is gone: its close
    alert says null)."""
    if policy is not None:
        return policy.threshold
    stored = row.get("threshold")
    return float(stored) if stored is not None else float("nan")


def _summary_record(summary: _Summary) -> dict[str, Any]:
    """`summary` as JSON-able data, kept with the episode (`episodes.peak_window`) so that a close after a
    restart or a reload reports the episode's peak window, not the best one since."""
    return {"score": summary.score, "severity": summary.severity, "start_ts": summary.start_ts,
            "end_ts": summary.end_ts, "peak_ts": summary.peak_ts,
            "root_cause": [[entry.channel, entry.share] for entry in summary.root_cause],
            "threshold": summary.threshold if math.isfinite(summary.threshold) else None,
            "bundle_name": summary.bundle_name, "bundle_version": summary.bundle_version,
            "flat": list(summary.flat)}


def _summary_from_record(record: Any, policy: ModelPolicy | None) -> _Summary | None:
    """The peak window kept with a restored episode (`_summary_record`); its severity is re-rated on the
    model's ladder when the model is still in the bundle. None when there is none or it cannot be read (a
    database from before the column, or a damaged value: the close then falls back as before)."""
    if not isinstance(record, dict):
        return None
    try:
        score = float(record["score"])
        threshold = record["threshold"]
        return _Summary(
            score, policy.severity_of(score) if policy is not None else str(record["severity"]),
            float(record["start_ts"]), float(record["end_ts"]), float(record["peak_ts"]),
            tuple(RootCauseEntry(str(channel), float(share)) for channel, share in record["root_cause"]),
            float(threshold) if threshold is not None else float("nan"), str(record["bundle_name"]),
            str(record["bundle_version"]), tuple(str(channel) for channel in record.get("flat", ())))
    except (KeyError, TypeError, ValueError):
        log.warning("the kept peak window of a restored episode cannot be read (%.200r): its close reports "
                    "the best window since the restart", record)
        return None


def _peak(episode: _Episode) -> _Summary | None:
    """The episode's peak window as known now: the best scored since it opened (or since a restart), or the
    one kept from before the restart when that scored higher."""
    candidates = [s for s in (episode.episode_best, episode.restored_peak) if s is not None]
    return max(candidates, key=lambda s: s.score) if candidates else None


class DecisionEngine:
    """Turns scored windows into `AlertEvent`s. Not thread-safe: call it from the event loop."""

    def __init__(self, config: DecisionConfig, identity: GatewayIdentity, store: Any,
                 bundle_manifest: Any) -> None:
        self.config = config
        self.identity = identity
        self._store = store
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._set_manifest(bundle_manifest)
        self._restore()

    def _set_manifest(self, manifest: Any) -> None:
        self._manifest = manifest
        self._policies = {str(_field(spec, "name")): policy_for(spec, self.config)
                          for spec in _field(manifest, "models")}

    def _restore(self) -> None:
        if self._store is None:
            return
        for row in self._store.open_episodes():
            policy = self._policies.get(row["model"])
            threshold = _restored_threshold(policy, row)
            episode = _Episode(
                episode_id=row["episode_id"], asset=row["asset"], model=row["model"],
                bundle_name=row["bundle_name"], bundle_version=row["bundle_version"],
                start_ts=row["start_ts"],
                severity=row["severity"], last_event_ts=row["last_event_ts"], peak_score=row["peak_score"],
                threshold=threshold, restored=_restored_summary(policy, row, threshold),
                restored_peak=_summary_from_record(row.get("peak_window"), policy))
            track = self._track(row["asset"], row["model"], policy)
            track.episode = episode
            log.info("restored open episode %s for %s/%s", episode.episode_id, episode.asset, episode.model)

    def _track(self, asset: str, model: str, policy: ModelPolicy | None) -> _Track:
        key = (asset, model)
        track = self._tracks.get(key)
        if track is None:
            track = _Track(history=deque(maxlen=policy.n if policy else 1))
            self._tracks[key] = track
        return track

    def policy(self, model: str) -> ModelPolicy:
        try:
            return self._policies[model]
        except KeyError:
            raise KeyError(f"model {model!r} is not in bundle {_field(self._manifest, 'name')!r}") from None

    def process(self, scored: ScoredWindow, now: float) -> list[AlertEvent]:
        """Feed one scored window; returns the alert messages it causes (usually none)."""
        window = scored.window
        policy = self._policies.get(window.model) or self.policy(window.model)
        track = self._tracks.get((window.asset, window.model)) or self._track(window.asset, window.model,
                                                                               policy)
        if track.history.maxlen != policy.n:
            track.history = deque(track.history, maxlen=policy.n)
        flat = scored.flat if self.config.flatline else ()
        above = scored.score > scored.threshold or bool(flat)  # a flat-lined channel counts as above
        track.history.append(above)
        track.last_score = scored.score
        episode = track.episode
        if episode is None:
            if above and sum(track.history) >= policy.k:
                return [self._open(track, scored, _summary(scored, policy, flat), now,
                                   "flatline" if flat else "debounce")]
            return []  # the common case: no root cause or peak time to compute
        summary = _summary(scored, policy, flat)
        episode.last = summary
        episode.silent = False
        if above:
            episode.below = 0
            self._note_peak(episode, summary)
            if policy.rank(summary.severity) > policy.rank(episode.severity):
                return [self._emit(episode, "update", summary, now, reason="severity")]
        else:
            episode.below += 1
            if episode.below >= policy.clear_windows:
                track.episode = None
                track.history.clear()
                best = _peak(episode) or summary
                return [self._emit(episode, "close", best, now, reason="cleared", current=summary)]
        elapsed = now - episode.last_event_ts
        # a wall clock stepped back (NTP on a gateway without a real-time clock) makes the elapsed time
        # negative: the update is due then, and its time is the new reference, rather than waiting the step
        if elapsed >= self.config.update_interval_s or elapsed < 0:
            best = episode.interval_best or summary
            return [self._emit(episode, "update", best, now, reason="periodic", current=summary)]
        return []

    def process_batch(self, scored: Iterable[ScoredWindow], now: float) -> list[AlertEvent]:
        """`process` for each window in order; the alert messages of the whole batch."""
        events: list[AlertEvent] = []
        for item in scored:
            found = self.process(item, now)
            if found:
                events.extend(found)
        return events

    def _note_peak(self, episode: _Episode, summary: _Summary) -> None:
        if episode.interval_best is None or summary.score > episode.interval_best.score:
            episode.interval_best = summary
        if episode.episode_best is None or summary.score > episode.episode_best.score:
            episode.episode_best = summary
        episode.peak_score = max(episode.peak_score, summary.score)

    def _open(self, track: _Track, scored: ScoredWindow, summary: _Summary, now: float,
              reason: str) -> AlertEvent:
        episode = _Episode(
            episode_id=new_id(now), asset=scored.window.asset, model=scored.window.model,
            bundle_name=scored.bundle_name, bundle_version=scored.bundle_version, start_ts=now,
            severity=summary.severity, last_event_ts=now, peak_score=scored.score, threshold=scored.threshold)
        self._note_peak(episode, summary)
        episode.last = summary
        track.episode = episode
        if reason == "flatline":
            log.info("episode %s opened: %s/%s flat line on %s (score %.4g, threshold %.4g)",
                     episode.episode_id, episode.asset, episode.model, ", ".join(scored.flat), scored.score,
                     scored.threshold)
        else:
            log.info("episode %s opened: %s/%s score %.4g > %.4g (%s)", episode.episode_id, episode.asset,
                     episode.model, scored.score, scored.threshold, summary.severity)
        return self._emit(episode, "open", summary, now, reason=reason)

    def _emit(self, episode: _Episode, state: EpisodeState, summary: _Summary, now: float, *, reason: str,
              current: _Summary | None = None) -> AlertEvent:
        episode.last_event_ts = now
        episode.severity = summary.severity  # every message's severity is the level of the score it reports
        episode.interval_best = None
        if state == "close":
            log.info("episode %s closed (%s): %s/%s peak %.4g", episode.episode_id, reason, episode.asset,
                     episode.model, episode.peak_score)
        extra: dict[str, Any] = {"reason": reason, "peak_score": episode.peak_score}
        if current is not None:
            extra["last_score"] = current.score
        peak = _peak(episode)
        if peak is not None:  # kept with the episode row (not in the payload)
            extra["peak_window"] = _summary_record(peak)
        return AlertEvent(
            alert_id=new_id(now), episode_id=episode.episode_id, state=state, ts=now,
            episode_start_ts=episode.start_ts, asset=episode.asset, model=episode.model,
            bundle_name=summary.bundle_name, bundle_version=summary.bundle_version, score=summary.score,
            threshold=summary.threshold, severity=summary.severity, window_start_ts=summary.start_ts,
            window_end_ts=summary.end_ts, peak_ts=summary.peak_ts, root_cause=summary.root_cause, extra=extra,
            flat=summary.flat)

    def silent(self, asset: str, now: float) -> list[AlertEvent]:
        """The asset's windows stopped (`agentstate` "silent"): an `update` with `reason: no_data` for each
        of its open episodes, once per silence, reporting the last window scored (or, for an episode
        restored without a window since, its restored peak). The episode stays open: it is not being
        evaluated, and SCADA hears so rather than see a frozen alarm."""
        events = []
        for (name, _model), track in sorted(self._tracks.items()):
            episode = track.episode
            if name != asset or episode is None or episode.silent:
                continue
            episode.silent = True
            last = episode.last or episode.restored
            assert last is not None  # an episode is either opened on a window or restored
            log.warning("episode %s (%s/%s): no window scored for a while, the episode is not being "
                        "evaluated", episode.episode_id, episode.asset, episode.model)
            events.append(self._emit(episode, "update", last, now, reason="no_data"))
        return events

    def close_models(self, model_names: Iterable[str], now: float, reason: str) -> list[AlertEvent]:
        """Close the open episodes of these models (e.g. they vanished from a newly activated bundle)."""
        names = set(model_names)
        return self._close_tracks([key for key in self._tracks if key[1] in names], now, reason)

    def _close_tracks(self, keys: Iterable[tuple[str, str]], now: float, reason: str) -> list[AlertEvent]:
        events = []
        for key in keys:
            track = self._tracks.pop(key)
            episode = track.episode
            if episode is None:
                continue
            # the peak window (kept across a restart or reload); without a kept one, the best since the
            # restart, or the restored peak score if no window came since
            last = _peak(episode) or episode.last or episode.restored
            assert last is not None  # an episode is either opened on a window or restored
            events.append(self._emit(episode, "close", last, now, reason=reason))
        return events

    def swap_manifest(self, bundle_manifest: Any, now: float) -> list[AlertEvent]:
        """Adopt a new bundle's manifest; episodes of models it no longer has are closed."""
        self._set_manifest(bundle_manifest)
        gone = {model for (_asset, model) in self._tracks if model not in self._policies}
        return self.close_models(gone, now, reason="model_removed")

    def orphaned_episodes(self, now: float,
                          assets: Iterable[tuple[str, str]] | None = None) -> list[AlertEvent]:
        """Close episodes restored from the database whose model is not in the current bundle and, when
        the configured `(asset, model)` pairs are given, those of assets removed from the config or
        mapped to another model (reason `asset_removed`)."""
        gone = {model for (_asset, model) in self._tracks if model not in self._policies}
        events = self.close_models(gone, now, reason="model_removed")
        if assets is not None:
            wanted = set(assets)
            events.extend(self._close_tracks([key for key in self._tracks if key not in wanted], now,
                                             reason="asset_removed"))
        return events

    def open_episodes(self) -> list[dict[str, Any]]:
        """Open episodes, for `edge-agent status`."""
        out = []
        for (asset, model), track in sorted(self._tracks.items()):
            episode = track.episode
            if episode is None:
                continue
            out.append({"episode_id": episode.episode_id, "asset": asset, "model": model,
                        "severity": episode.severity, "start_ts": episode.start_ts,
                        "peak_score": episode.peak_score, "last_score": track.last_score,
                        "windows_below": episode.below,
                        # the latest window's flat-lined channels: a stuck sensor still stuck
                        "flat": list(episode.last.flat) if episode.last is not None else []})
        return out

    def asset_states(self) -> list[dict[str, Any]]:
        """Per (asset, model): last score and whether an episode is open, for status."""
        return [{"asset": asset, "model": model, "last_score": track.last_score,
                 "state": "alert" if track.episode else "normal",
                 "severity": track.episode.severity if track.episode else None}
                for (asset, model), track in sorted(self._tracks.items())]
