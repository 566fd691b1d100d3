"""Pieces of the agent's pipeline the supervisor wires together: bundle loading, provider settings, the
restart budget, and the alert writer (decisions -> outbox) that never loses an alert to a failed write.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_agent.bundle import Bundle, SigningKeyError, read_bundle
from edge_agent.config import AgentConfig, check_against_manifest
from edge_agent.configtools import ConfigError
from edge_agent.inference import ProviderSettings
from edge_agent.logtools import RateLimitedLog
from edge_agent.sinks.console import ConsoleSink
from edge_agent.sinks.mqtt import MqttUpstream
from edge_agent.sinks.payload import alert_payload
from edge_agent.storage import FULL_OR_READ_ONLY_ERRNOS, StorageError, Store
from edge_agent.types import AlertEvent, GatewayIdentity
from edge_agent.windows import Windower, specs_for

log = logging.getLogger(__name__)

RESTARTS_ALLOWED = 5
RESTART_WINDOW_S = 60.0


class FatalTaskError(RuntimeError):
    """A task exceeded its restart budget; the process exits non-zero."""


class RestartBudget:
    """At most `allowed` restarts within `window_s` seconds (Frigate: 5 in 60 s)."""

    def __init__(self, allowed: int = RESTARTS_ALLOWED, window_s: float = RESTART_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = allowed
        self.window_s = window_s
        self.clock = clock
        self._times: collections.deque[float] = collections.deque()

    def spend(self) -> bool:
        """Record one restart; False when the budget is exhausted."""
        now = self.clock()
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.allowed


def find_fatal(exc: BaseException) -> FatalTaskError | None:
    """The `FatalTaskError` inside (possibly nested) task-group exception groups, if any."""
    if isinstance(exc, FatalTaskError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = find_fatal(inner)
        if found is not None:
            return found
    return None


def load_bundle(config: AgentConfig, extract_root: Path) -> Bundle:
    """Read (and verify) the active bundle into a fresh directory under `extract_root`.

    The path is resolved first (`bundles/active` is a link), so `Bundle.source` names the real file and a
    later re-activation is seen as a change."""
    path = config.bundle_path().resolve()
    keys = config.bundle.verify_keys
    target: Path | None = None
    try:
        extract_root.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix="bundle-", dir=extract_root))
        bundle = read_bundle(path, trusted_keys=keys, extract_to=target)
        check_against_manifest(config, bundle.manifest)
    except BaseException as exc:
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, SigningKeyError):  # the configured keys, not the bundle: name the key
            raise ConfigError("bundle -> trusted_keys", str(exc), str(keys), config.source) from exc
        if isinstance(exc, OSError) and exc.errno in FULL_OR_READ_ONLY_ERRNOS:
            # a full or read-only state disk outside systemd (whose RuntimeDirectory= puts this in RAM)
            raise OSError(exc.errno, f"cannot extract the bundle to {extract_root}: {exc.strerror}; free "
                          "space there, or set $RUNTIME_DIRECTORY to a directory in RAM (the systemd unit's "
                          "RuntimeDirectory= does)") from exc
        raise
    return bundle


def provider_settings(config: AgentConfig) -> ProviderSettings:
    """The device profile's providers and threads, else ONNX Runtime's CPU provider on one thread."""
    if config.device_profile is None:
        return ProviderSettings()
    import onnxruntime as ort

    from edge_agent.profiles import load_profile

    return load_profile(config.device_profile).provider_settings(available=ort.get_available_providers())


def build_windower(config: AgentConfig, bundle: Bundle) -> Windower:
    """The windower for the configured assets, shaped by the bundle's model inputs."""
    inputs = {model.name: model.input for model in bundle.manifest.models}
    rows = [(a.name, a.model, [(a.channels[c].source, a.channels[c].field) for c in inputs[a.model].channels],
             a.staleness_s) for a in config.assets.values()]
    return Windower(specs_for(rows, inputs, {a.name: a.max_jump_s for a in config.assets.values()}))


def build_sink(config: AgentConfig, store: Store, health: Callable[[], dict[str, Any]]) -> Any:
    """The upstream MQTT sink, or the console sink when the config has no `[mqtt]`."""
    if config.mqtt is None:
        return ConsoleSink(config.identity, store)
    return MqttUpstream(config.mqtt, config.identity, store, health=health)


def sink_name(config: AgentConfig) -> str:
    """The sink task's name (shown in logs)."""
    mqtt = config.mqtt
    return f"sink[mqtt:{mqtt.host}:{mqtt.port}]" if mqtt is not None else "sink[console]"


Rendered = tuple[AlertEvent, str, bytes]
FAILURE_LOG_INTERVAL_S = 60.0  # a failing outbox write is logged at its first try, then at most this often


class AlertWriter:
    """Renders the decision engine's alerts and commits them to the outbox; an alert whose transaction
    fails (database locked, disk full) stays in memory, in order, and is written with the next batch or
    by `retry()` (the status loop calls it). The decision engine's state is never rolled back: an episode
    it opened is real, and its `open` alert reaches the outbox as soon as the database takes it.
    Meanwhile the MQTT sink sends the alerts held here too (`pending`, `acknowledged`: the sink's
    `MemoryOutbox`), so a full or broken disk does not silence detection; one the broker answered stays
    here, not sent again, and is written delivered (or parked as rejected) with its episode row once the
    database takes writes (`sent_unstored` counts those delivered from memory).

    Rendering cannot fail for readings the sources accept (their timestamps lie in 1970..9999); should a
    window time still be out of range, the alert is sent with the decision time in its place (logged)
    rather than crash the detector."""

    def __init__(self, store: Store, identity: GatewayIdentity, topic_for: Callable[[AlertEvent], str],
                 wake: Callable[[], None]) -> None:
        self.store = store
        self.identity = identity
        self.topic_for = topic_for
        self.wake = wake
        self.unstored: list[Rendered] = []
        self.failures = 0
        self.sent_unstored = 0  # acknowledged by the broker while not in the outbox
        self.answered: dict[str, str | None] = {}  # in `unstored` and answered by the broker (`acknowledged`)
        self._failure_log = RateLimitedLog(log, FAILURE_LOG_INTERVAL_S)

    def pending(self) -> list[tuple[str, str, bytes]]:
        """The alerts still in memory that the broker has not answered, as `(alert_id, topic, payload)`, in
        decision order."""
        return [(event.alert_id, topic, payload) for event, topic, payload in self.unstored
                if event.alert_id not in self.answered]

    def acknowledged(self, outcomes: dict[str, str | None]) -> dict[str, str | None]:
        """The broker answered these alerts (by id: None delivered, else why it rejected them for good).
        Those still in memory stay there, not sent again, until the outbox takes them with their outcome
        (delivered, or parked as rejected) and their episode rows; the outcomes of the others (already in
        the outbox) are returned, for the sink to mark there."""
        held = {event.alert_id for event, _topic, _payload in self.unstored}
        mine = {alert_id: reason for alert_id, reason in outcomes.items() if alert_id in held}
        delivered = sum(1 for reason in mine.values() if reason is None)
        if delivered:
            log.warning("%d alerts delivered from memory; the outbox records them once it takes writes again",
                        delivered)
            self.sent_unstored += delivered
        # counted before they show as answered: this runs on the sink's thread while others read both
        self.answered.update(mine)
        return {alert_id: reason for alert_id, reason in outcomes.items() if alert_id not in held}

    def _render(self, event: AlertEvent) -> Rendered:
        try:
            return event, self.topic_for(event), alert_payload(event, self.identity)
        except (ValueError, OverflowError, OSError) as exc:
            log.error("alert %s (%s/%s): window times cannot be rendered (%s); sending the decision time "
                      "instead", event.alert_id, event.asset, event.model, exc)
            fixed = dataclasses.replace(event, window_start_ts=event.ts, window_end_ts=event.ts,
                                        peak_ts=event.ts)
            return fixed, self.topic_for(fixed), alert_payload(fixed, self.identity)

    def write(self, events: Sequence[AlertEvent]) -> bool:
        """Render `events` and commit them after any still unstored; False when the write failed (kept)."""
        self.unstored.extend(self._render(event) for event in events)
        return self.retry()

    def retry(self) -> bool:
        """Commit the alerts still in memory; True when none is left."""
        if not self.unstored:
            return True
        pending = self.unstored
        payloads = {event.alert_id: payload for event, _topic, payload in pending}
        topics = {event.alert_id: topic for event, topic, _payload in pending}
        try:
            self.store.add_alerts([event for event, _t, _p in pending], lambda e: topics[e.alert_id],
                                  lambda e: payloads[e.alert_id], outcomes=self.answered)
        except (sqlite3.Error, StorageError, OSError) as exc:
            self.failures += 1
            self._failure_log.error("%s: %d alerts not written to the outbox yet (kept in memory, retried, "
                                    "and sent from memory meanwhile): %s; %d failed tries so far",
                                    self.store.path, len(pending), exc, self.failures)
            self.wake()  # the sink sends them from memory (`pending`)
            return False
        if self._failure_log.active:
            log.info("%s: the outbox takes alerts again (%d written)", self.store.path, len(pending))
            self._failure_log.reset()
        self.unstored = []
        self.answered = {}
        self.wake()
        return True
