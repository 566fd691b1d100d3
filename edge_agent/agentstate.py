"""What the running agent reports about itself: the status file `edge-agent status` reads, the MQTT health
summary, and the counters persisted in the state database.

The status file (`<state_dir>/status.json`) is rewritten atomically every `status_interval_s` and at exit:

    {"schema_version": 1, "pid": 1234, "updated_at": ..., "started_at": ..., "bundle": {"name", "version",
     "path"}, "bundle_version": "...", "sink": {"kind", "state"}, "outbox_backlog": 0,
     "assets": {"pump-3": {"model", "last_score", "threshold", "last_window_end", "state", "severity",
                           "windows", "stale_windows", "last_window_age_s", "silent"}},
     "open_episodes": [...], "sources": {"line1": {"type", "state", "received", "invalid", "dropped", ...}},
     "storage": {"in_memory", "recovered_from", "windows_failed", "prune_failures", "alerts_in_memory",
                 "alerts_sent_unstored", "last_fault"},
     "counters": {"windows_scored", "windows_stale", "windows_dropped", "windows_nonfinite",
                  "readings_invalid", "readings_dropped", "readings_received", "readings_out_of_range"}}

An asset is **silent** when no window of it was scored for `silent_after_s` (its `staleness_s`, and at least
three window strides) by the gateway's monotonic clock, counted from one window's length after the
pipeline's start when it has not scored one since: its sensors stopped, or its readings arrive but are
stale. An open episode of a silent asset
is not evaluated (no window: no update, no close), so the health summary names silent assets
(`silent_assets`) and the status file marks them.
"""

from __future__ import annotations

import collections
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.bundle import Bundle
from edge_agent.types import ScoredWindow

STATUS_SCHEMA_VERSION = 1
# Counters kept by AgentState itself, which survive an in-process pipeline restart: its own counts plus what
# the windower, the sources and the engine had counted when they were retired (a restart rebuilds them from
# zero), so every total in status.json and the database grows without a dip across a reload
_SOURCE_COUNTERS = {"readings_invalid": "invalid", "readings_dropped": "dropped",
                    "readings_received": "received"}  # status/database counter -> `SourceStats` field


def silent_after_s(spec: Any) -> float:
    """How long an asset may go without a scored window before it counts as silent: its `staleness_s`, and
    at least three window strides (`AssetWindowSpec`)."""
    return max(spec.staleness_s, 3.0 * spec.stride * spec.sample_period_s)


def _flocked(path: Path) -> bool | None:
    """Whether another process holds an exclusive `flock` on `path` (a file or a directory); None when it
    cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # also releases the shared lock when it was taken
    return False


def agent_lock_held(lock_path: Path) -> bool:
    """Whether an agent holds the instance lock (`supervisor._hold_instance_lock`): on its state directory
    (`lock_path.parent`) or on the lock file (agents from before the directory lock). Tells a running agent
    that could write no pid file (a read-only or full state disk)."""
    return bool(_flocked(lock_path.parent)) or bool(_flocked(lock_path))


def agent_lock_says_stopped(lock_path: Path) -> bool:
    """Whether the instance lock shows that no agent runs: the lock file exists (an agent that takes it ran
    here) and neither it nor the state directory is locked. A pid file alone can outlive its agent and name
    a process that reused the pid. No lock file, or one that cannot be probed: unknown (an agent from before
    the lock may be running), so False."""
    return _flocked(lock_path) is False and not _flocked(lock_path.parent)


def write_status_file(path: Path, document: dict[str, Any], *, indent: int | None = None) -> None:
    """Write `document` as JSON to `path` atomically (temp file + rename), so readers never see half.
    Compact by default: json's C encoder (an `indent` falls back to the pure-Python one, 2.7x slower to
    encode, bench/micro_timings.py); `edge-agent status` prints it readably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(document, sort_keys=True, default=float, indent=indent))
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AgentState:
    """Counters and last scores kept by the supervisor, turned into status documents on demand."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.started_at = time.time()
        self.bundle: dict[str, str] | None = None
        self.last: dict[str, dict[str, Any]] = {}
        self.scored_at: dict[str, float] = {}  # asset -> monotonic time of its last scored window
        self.pipeline_at = time.monotonic()  # when the current pipeline started
        self._persisted: dict[str, int] = {}
        # the last reload refused (the config file or its bundle does not load), until one is applied
        self.reload_rejected: dict[str, str] | None = None

    def reload_outcome(self, error: str | None) -> None:
        """A reload was refused for `error` (the running config stays), or went through (None)."""
        self.reload_rejected = None if error is None else {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "error": error}

    def sources_retired(self, sources: Sequence[Any]) -> None:
        """Keep the reading counts of sources being replaced (a pipeline restart on reload)."""
        for source in sources:
            for counter, stat in _SOURCE_COUNTERS.items():
                self.counters[counter] += getattr(source.stats, stat)

    def windower_retired(self, windower: Any) -> None:
        """Keep the counts of a windower being replaced (swap to other window shapes, restart)."""
        if windower is not None:
            self.counters["windows_stale"] += windower.counters()["stale_windows"]
            self.counters["readings_out_of_range"] += windower.out_of_range()

    def engine_retired(self, engine: Any) -> None:
        """Keep the count of an inference engine being replaced (swap or restart)."""
        self.counters["windows_nonfinite"] += int(getattr(engine, "dropped_nonfinite", 0))

    def started(self, bundle: Bundle) -> None:
        self.pipeline_at = time.monotonic()
        self.bundle_swapped(bundle)

    def bundle_swapped(self, bundle: Bundle) -> None:
        self.bundle = {"name": bundle.manifest.name, "version": bundle.manifest.version,
                       "path": str(bundle.source)}

    def scored_batch(self, items: Sequence[ScoredWindow]) -> None:
        """A scored batch: the count, and the last window of each asset in it."""
        self.counters["windows_scored"] += len(items)
        latest = {item.window.asset: item for item in items}
        now = time.monotonic()
        for asset, item in latest.items():
            self.scored_at[asset] = now
            self.last[asset] = {"model": item.window.model, "last_score": float(item.score),
                                "threshold": float(item.threshold), "last_window_end": item.window.end_ts}

    def totals(self, supervisor: Any) -> dict[str, int]:
        """Counters of this process's life: windows scored/stale/dropped, readings invalid/dropped."""
        engine = supervisor.engine
        totals = {"windows_scored": self.counters["windows_scored"],
                  "windows_dropped": self.counters["windows_dropped"],
                  "windows_nonfinite": self.counters["windows_nonfinite"]
                  + int(getattr(engine, "dropped_nonfinite", 0) if engine is not None else 0),
                  "windows_stale": self.counters["windows_stale"],
                  **{counter: self.counters[counter] for counter in _SOURCE_COUNTERS},
                  "readings_out_of_range": self.counters["readings_out_of_range"]}
        if supervisor.windower is not None:
            totals["windows_stale"] += supervisor.windower.counters()["stale_windows"]
            totals["readings_out_of_range"] += supervisor.windower.out_of_range()
        for source in supervisor.sources:
            for counter, stat in _SOURCE_COUNTERS.items():
                totals[counter] += getattr(source.stats, stat)
        return totals

    def take_counter_deltas(self, supervisor: Any) -> dict[str, int]:
        """What grew since the last call (for `Store.incr_counters`, which keeps totals across restarts)."""
        totals = self.totals(supervisor)
        deltas = {key: value - self._persisted.get(key, 0) for key, value in totals.items()
                  if value > self._persisted.get(key, 0)}
        self._persisted = totals
        return deltas

    def unpersist(self, deltas: dict[str, int]) -> None:
        """`deltas` from `take_counter_deltas` could not be stored: the next call returns them again."""
        for key, value in deltas.items():
            self._persisted[key] = self._persisted.get(key, 0) - value

    def snapshot(self, supervisor: Any) -> dict[str, Any]:
        assets: dict[str, dict[str, Any]] = {}
        for name, asset in supervisor.config.assets.items():
            entry: dict[str, Any] = {"model": asset.model, "last_score": None, "threshold": None,
                                     "last_window_end": None, "state": "normal", "severity": None}
            entry.update(self.last.get(name, {}))
            if supervisor.windower is not None and name in supervisor.windower.aligners:
                stats = supervisor.windower.aligners[name].stats
                entry.update(windows=stats.windows, stale_windows=stats.stale_windows)
            entry.update(self.freshness(supervisor, name))
            assets[name] = entry
        episodes: list[dict[str, Any]] = []
        if supervisor.decisions is not None:
            for row in supervisor.decisions.asset_states():
                if row["asset"] in assets:
                    assets[row["asset"]].update(state=row["state"], severity=row["severity"])
            episodes = supervisor.decisions.open_episodes()
        backlog = None
        if supervisor.store is not None:
            try:
                backlog = supervisor.store.backlog()
            except Exception:  # a closed store at exit: the status still gets written  # noqa: BLE001
                backlog = None
        sink = supervisor.sink
        return {
            "schema_version": STATUS_SCHEMA_VERSION, "pid": os.getpid(), "updated_at": time.time(),
            "started_at": self.started_at, "bundle": self.bundle,
            "bundle_version": self.bundle["version"] if self.bundle else None,
            "sink": {"kind": type(sink).__name__ if sink is not None else None,
                     "state": sink.state if sink is not None else None,
                     "last_error": getattr(sink, "last_error", None)},
            "outbox_backlog": backlog, "assets": assets, "open_episodes": episodes,
            "flatline": self.flatline(supervisor),
            "storage": self.storage(supervisor), "reload_rejected": self.reload_rejected,
            "sources": {source.name: source.describe() for source in supervisor.sources},
            "counters": self.totals(supervisor),
        }

    @staticmethod
    def flatline(supervisor: Any) -> dict[str, Any] | None:
        """The flat-line check: whether `[decisions] flatline` has it on, and per model of the active bundle
        the channels it watches (None: a schema 1 bundle, no list)."""
        decisions, bundle = supervisor.decisions, supervisor.bundle
        if decisions is None or bundle is None:
            return None
        return {"enabled": bool(decisions.config.flatline),
                "models": {model.name: list(model.flatline.channels) if model.flatline is not None else None
                           for model in bundle.manifest.models}}

    def storage(self, supervisor: Any) -> dict[str, Any]:
        """The state database's faults in this process: running on a database in memory because the file
        could not be opened (`in_memory`: a full or read-only disk at start), a damaged file moved aside at
        start (`recovered_from`), windows the ring buffer could not take and retention passes stopped by a
        disk fault, alerts waiting in memory because the outbox refused them (sent from there meanwhile) and
        how many of those the broker acknowledged, and the latest error."""
        store, recorder, alerts = supervisor.store, supervisor.recorder, supervisor.alerts
        faults = sorted(((getattr(part, "last_fault_at", 0.0), part.last_fault) for part in (recorder, store)
                         if getattr(part, "last_fault", None)), reverse=True)  # the newest first
        moved = getattr(store, "recovered_from", None)
        return {"in_memory": bool(getattr(store, "in_memory", False)),
                "recovered_from": str(moved) if moved is not None else None,
                "windows_failed": int(getattr(recorder, "failed_windows", 0)),
                "prune_failures": int(getattr(store, "prune_failures", 0)),
                "alerts_in_memory": len(alerts.unstored) if alerts is not None else 0,
                "alerts_sent_unstored": alerts.sent_unstored if alerts is not None else 0,
                "last_fault": faults[0][1] if faults else None}

    def freshness(self, supervisor: Any, asset: str) -> dict[str, Any]:
        """`last_window_age_s` (None before the first scored window) and `silent` for one asset."""
        now = time.monotonic()
        at = self.scored_at.get(asset)
        age = None if at is None else round(now - at, 1)
        windower = supervisor.windower
        aligner = windower.aligners.get(asset) if windower is not None else None
        if aligner is None:  # no pipeline running: nothing is scored, nothing to judge
            return {"last_window_age_s": age, "silent": False}
        spec = aligner.spec  # a new pipeline needs one window's length of readings before it scores
        since = max(at if at is not None else -math.inf,
                    self.pipeline_at + spec.window_length * spec.sample_period_s)
        return {"last_window_age_s": age, "silent": now - since > silent_after_s(spec)}

    def health(self, supervisor: Any) -> dict[str, Any]:
        episodes = supervisor.decisions.open_episodes() if supervisor.decisions is not None else []
        bundle = {"name": self.bundle["name"], "version": self.bundle["version"]} if self.bundle else None
        return {
            "uptime_s": round(time.time() - self.started_at, 1), "bundle": bundle,
            "outbox_backlog": supervisor.store.backlog() if supervisor.store is not None else 0,
            "open_episodes": len(episodes), "counters": self.totals(supervisor),
            "sources": {source.name: source.stats.state for source in supervisor.sources},
            "silent_assets": sorted(name for name in supervisor.config.assets
                                    if self.freshness(supervisor, name)["silent"]),
            "storage": self.storage(supervisor),
            "reload_rejected": self.reload_rejected,
        }
