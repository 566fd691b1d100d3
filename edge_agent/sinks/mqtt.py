"""Upstream MQTT: alerts from the SQLite outbox at QoS 1, gateway status with a Last Will, health summaries.

Delivery is at-least-once and in order. Alerts are rendered into the outbox before anyone tries to send
them (`Store.add_alerts`); this sink publishes the oldest undelivered rows, up to `max_inflight` at a time,
and marks a row delivered only when its PUBACK arrived *and* every older row in flight was acknowledged
too (ordered marking). After a lost connection the unacknowledged rows go out again, oldest first, so a
receiver sees first occurrences in order and drops repeats by `alert_id`.

Each connection uses a fresh paho client (VERSION2 callbacks, no paho auto-reconnect) driven by the event
loop itself (paho's external-loop API): its socket is watched with `add_reader`/`add_writer`, keepalive runs
from a 1 s timer, and a publish is written to the socket at once by the loop that decided the alert, with no
hand-off to a network thread. Only the blocking TCP/TLS connect runs in a worker thread. Reconnects are paced
by `edge_agent.backoff`. The status topic is retained: `online` on every connect and
every `health_interval_s` (with a health summary), `offline` as the Last Will and at a clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge_agent.backoff import Reconnects, backoff_delays
from edge_agent.configtools import ConfigError, Section
from edge_agent.logtools import RateLimitedLog
from edge_agent.mqttloop import (
    BufferedClient,
    ConnectRefusedError,
    Login,
    LoopIO,
    close_connection,
    connect_failure,
    connect_on_loop,
    password_text,
    settle_connack,
)
from edge_agent.sinks.payload import alert_topic, status_payload
from edge_agent.sources.base import SecretRef, broker_login, read_secret
from edge_agent.storage import Store
from edge_agent.types import AlertEvent, GatewayIdentity

log = logging.getLogger(__name__)


class MemoryOutbox(Protocol):
    """Alerts decided but not yet in the outbox (its write failed: disk full, database damaged); the sink
    sends them after the outbox's rows, so detection still reaches SCADA (`pipeline.AlertWriter`)."""

    def pending(self) -> list[tuple[str, str, bytes]]:
        """`(alert_id, topic, payload)` not yet answered, in decision order."""
        ...

    def acknowledged(self, outcomes: dict[str, str | None]) -> dict[str, str | None]:
        """The broker answered these (None: delivered, else the rejection); returns the outcomes of those
        no longer held in memory (already in the outbox), for the sink to mark there."""
        ...


DEFAULT_ALERT_TOPIC = "{site}/{area}/{line}/{asset}/anomaly/alert"
DEFAULT_STATUS_TOPIC = "{site}/{area}/{line}/{gateway_id}/status"
_ALERT_FIELDS = {"site": "s", "area": "a", "line": "l", "gateway_id": "g", "asset": "x", "model": "m"}
_STATUS_FIELDS = {"site": "s", "area": "a", "line": "l", "gateway_id": "g"}
# PUBACK reason codes that sending again cannot fix: 0x87 not authorized, 0x90 topic name invalid,
# 0x99 payload format invalid. Other failure codes (0x80, 0x83, 0x91, 0x97 quota exceeded) are retried.
PERMANENT_PUBACK_CODES = frozenset({0x87, 0x90, 0x99})
MARK_RETRY_S = 1.0


@dataclass(frozen=True)
class TlsConfig:
    """CA bundle to verify the broker, and an optional client certificate + key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class MqttUpstreamConfig:
    """The `[mqtt]` table. The password is read from `password_file` at each connect, never stored here."""

    host: str
    port: int = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | SecretRef | None = field(default=None, repr=False)
    client_id: str = ""
    keepalive: int = 30
    protocol: str = "3.1.1"
    alert_topic_template: str = DEFAULT_ALERT_TOPIC
    status_topic_template: str = DEFAULT_STATUS_TOPIC
    health_interval_s: float = 60.0
    max_inflight: int = 10
    drain_timeout_s: float = 5.0

    @classmethod
    def from_section(cls, section: Section, base_dir: Path) -> MqttUpstreamConfig:
        """Parse `[mqtt]`; relative paths are resolved against `base_dir` (the config file's folder) and
        `${VAR}` is expanded. `password_file` also takes `credential:NAME` (systemd `LoadCredential=`), as
        sources do (`edge_agent.sources.base.secret_file`)."""

        def path_of(sec: Section, key: str) -> Path | None:
            value = sec.optional(key, str)
            if value is None:
                return None
            expanded = os.path.expandvars(value)
            if "$" in expanded:
                raise ConfigError(sec.key_path(key), "names an environment variable that is not set", value)
            path = Path(expanded)
            path = path if path.is_absolute() else base_dir / path
            if not path.is_file():
                raise ConfigError(sec.key_path(key), f"file not found: {path}", value)
            return path

        host = section.get("host", str)
        port = section.integer("port", 1883, minimum=1, maximum=65535)
        tls: TlsConfig | None = None
        if "tls" in section:
            tls_section = section.section("tls")
            tls = TlsConfig(path_of(tls_section, "ca"), path_of(tls_section, "cert"),
                            path_of(tls_section, "key"))
            if (tls.cert is None) != (tls.key is None):
                raise ConfigError(tls_section.path, "cert and key must be given together")
            tls_section.finish()
        # `credential:NAME` or a path; under `${CREDENTIALS_DIRECTORY}` it is located when connecting if that
        # variable is unset now (status, doctor, bundle install run from a shell)
        username, password_file = broker_login(section, base_dir)
        config = cls(
            host=host, port=port, tls=tls, username=username, password_file=password_file,
            client_id=section.get("client_id", str, ""),
            keepalive=section.integer("keepalive", 30, minimum=5, maximum=65535),
            protocol=section.choice("protocol", ("3.1.1", "5"), "3.1.1"),
            alert_topic_template=_template(section, "alert_topic_template", DEFAULT_ALERT_TOPIC,
                                           _ALERT_FIELDS),
            status_topic_template=_template(section, "status_topic_template", DEFAULT_STATUS_TOPIC,
                                            _STATUS_FIELDS),
            health_interval_s=section.number("health_interval_s", 60.0, minimum=1.0),
            max_inflight=section.integer("max_inflight", 10, minimum=1, maximum=1000),
            drain_timeout_s=section.number("drain_timeout_s", 5.0, minimum=0.0),
        )
        section.finish()
        return config


def upstream_client_id(config: MqttUpstreamConfig, identity: GatewayIdentity) -> str:
    """The upstream connection's client id: `client_id`, else `edge-agent-<gateway id>`."""
    return config.client_id or f"edge-agent-{identity.gateway_id}"


def upstream_login(config: MqttUpstreamConfig) -> Login:
    """The `[mqtt]` login, its password read from `password_file` now (a `ConfigError` when it cannot be)."""
    password = None
    if config.username is not None and config.password_file is not None:
        password = password_text(read_secret(config.password_file, "mqtt -> password_file"))
    tls = config.tls
    return Login(config.username, password, tls is not None, tls.ca if tls else None,
                 tls.cert if tls else None, tls.key if tls else None)


def _template(section: Section, key: str, default: str, fields: dict[str, str]) -> str:
    """A topic template: text with plain `{name}` placeholders of `fields` (no attributes, indexes, format
    specs or conversions, which would render unexpected topics or fail when an alert is sent)."""
    value = section.get(key, str, default)
    allowed = ", ".join("{" + name + "}" for name in fields)
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:  # an unmatched { or }
        raise ConfigError(section.key_path(key), f"{exc} (placeholders: {allowed}; {{{{ for a brace)",
                          value) from exc
    for _text, name, spec, conversion in parts:
        if name is not None and (name not in fields or spec or conversion):
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(section.key_path(key), f"bad placeholder {shown} (allowed: {allowed})", value)
    rendered = value.format(**fields)
    if any(ch in rendered for ch in "+#\0") or not rendered:
        raise ConfigError(section.key_path(key), "a topic must not be empty or contain + # or NUL", value)
    return value


class MqttUpstream:
    """Publishes the outbox to the upstream broker; `run()` until `aclose()`."""

    def __init__(self, config: MqttUpstreamConfig, identity: GatewayIdentity, store: Store,
                 health: Callable[[], dict[str, Any]],
                 delays: Callable[[], Iterator[float]] = backoff_delays) -> None:
        self.config = config
        self.identity = identity
        self._store = store
        self._health = health
        self._delays = delays
        self._kick = asyncio.Event()
        self._closing = False
        self._restarting = False  # closing for a pipeline restart: no `offline`
        self._done = asyncio.Event()
        self._running = False
        self._state = "disconnected"
        self.last_error: str | None = None  # why the last connect failed or the connection was lost
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._io: LoopIO | None = None  # the client's socket, watched by the loop
        self._connected = False
        self._inflight: dict[int, tuple[int, str]] = {}  # mid -> (seq, alert_id); seq -1: from `memory`
        self._unmarked: dict[str, str | None] = {}  # acknowledged, not yet marked: alert_id -> rejection
        self.memory: MemoryOutbox | None = None  # alerts the outbox could not take (disk full): sent too
        self._order: list[int] = []  # mids in publish order
        self._acked: set[int] = set()
        self._rejected: dict[int, str] = {}  # mid -> why the broker refused it for good
        self._reject_delays: Iterator[float] | None = None  # backoff while the broker refuses alerts
        self._hold_s = 0.0  # pause before reconnecting after a transient refusal
        self._mark_retry_at = 0.0  # after a failed outbox write
        self._read_error_log = RateLimitedLog(log, 60.0)  # a failed outbox read
        self.delivered = 0
        self.connects = 0
        self.status_topic = config.status_topic_template.format(
            site=identity.site, area=identity.area, line=identity.line, gateway_id=identity.gateway_id)

    # rendering ------------------------------------------------------------------------------------------
    def alert_topic(self, event: AlertEvent) -> str:
        """The topic of one alert, from `alert_topic_template`."""
        return alert_topic(self.config.alert_topic_template, event, self.identity)

    @property
    def state(self) -> str:
        """`connecting`, `connected`, `disconnected` or `closed`."""
        return self._state

    def wake(self) -> None:
        """New alerts are in the outbox: publish them now when connected (an event alone costs a few loop
        turns of latency), and let the serve loop take over the rest."""
        if self._connected and not self._closing and self._client is not None:
            self._fill()
        self._kick.set()

    # lifecycle ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect (retrying with backoff), then deliver until `aclose()`; reconnect after any loss."""
        self._loop = asyncio.get_running_loop()
        self._running = True
        reconnects = Reconnects(self._delays)
        try:
            while not self._closing:
                self._state = "connecting"
                try:
                    await self._connect()
                except (OSError, ConnectRefusedError, ConfigError, asyncio.TimeoutError) as exc:
                    await self._teardown()
                    self._state = "disconnected"
                    delay = reconnects.failed()
                    self.last_error = connect_failure(exc, self.config.host, self.config.port,
                                                      self.config.tls is not None)
                    log.warning("upstream %s; retrying in %.1f s", self.last_error, delay)
                    await self._pause(delay)
                    continue
                reconnects.connected()
                try:
                    await self._serve()
                finally:
                    await self._teardown()
                hold, self._hold_s = self._hold_s, 0.0
                if hold > 0:  # closed here: the broker refused an alert for now (quota, ...), own backoff
                    reconnects.closed()
                    delay, why = hold, ""
                else:
                    held = reconnects.held()
                    delay = reconnects.lost()
                    why = "" if held else (" right after connecting (another client with the same client_id? "
                                           "see [mqtt] client_id)")
                if not self._closing:
                    self._state = "disconnected"
                    self.last_error = f"broker {self.config.host}:{self.config.port}: connection lost{why}"
                    log.warning("upstream broker connection lost%s; %s alerts waiting; reconnecting in "
                                "%.1f s", why, self._backlog(), delay)
                await self._pause(delay)
        finally:
            self._state = "closed"
            self._running = False
            self._done.set()

    async def aclose(self, restarting: bool = False) -> None:
        """Let in-flight alerts be acknowledged (at most `drain_timeout_s`), publish `offline`, disconnect.
        `restarting`: the pipeline restarts at once with the same upstream; the retained status stays
        `online` (a clean DISCONNECT, so no Last Will either) until the next connection says `online`."""
        self._closing = True
        self._restarting = restarting
        self._kick.set()
        if self._running:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._done.wait(), self.config.drain_timeout_s + 5.0)

    async def _pause(self, seconds: float) -> None:
        self._kick.clear()
        end = time.monotonic() + seconds
        while not self._closing and (remaining := end - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), remaining)
            self._kick.clear()

    # connection -----------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        v5 = cfg.protocol == "5"
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2,
                                client_id=upstream_client_id(cfg, self.identity),
                                protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                clean_session=None if v5 else True, reconnect_on_failure=False)
        upstream_login(cfg).apply(client)
        client.will_set(self.status_topic, status_payload(self.identity, "offline"), qos=1, retain=True)
        client.max_inflight_messages_set(cfg.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    async def _connect(self) -> None:
        assert self._loop is not None
        client = self._make_client()
        self._client = client
        self._connack = self._loop.create_future()
        self._inflight.clear()
        self._order.clear()
        self._acked.clear()
        self._rejected.clear()
        kwargs: dict[str, Any] = {"clean_start": True} if self.config.protocol == "5" else {}
        self._io = await connect_on_loop(self._loop, client, self.config.host, self.config.port,
                                         self.config.keepalive, **kwargs)
        await asyncio.wait_for(self._connack, timeout=max(10.0, float(self.config.keepalive)))
        # `_connected` was set by the CONNACK handler; a loss handled between CONNACK and this point has
        # cleared it again (and paho knows): do not report a dead client as connected.
        if not self._connected or not client.is_connected():
            raise ConnectRefusedError("connection lost right after CONNACK")
        self._state = "connected"
        self.connects += 1
        log.info("connected to upstream broker %s:%d (%s)", self.config.host, self.config.port,
                 "TLS" if self.config.tls else "plain")

    async def _teardown(self) -> None:
        client, self._client = self._client, None
        io, self._io = self._io, None
        self._connected = False
        close_connection(client, io)

    def _flush(self) -> None:
        """Write what the current client has queued (nothing when not connected)."""
        if self._io is not None:
            self._io.flush()

    # paho callbacks: inside paho's reads and writes on the loop, or in the worker thread of the connect when
    # the CONNECT cannot be written; `call_soon_threadsafe` serves both, and they are handled next loop turn
    # Each handler gets the client it came from: a late callback of an earlier connection's client must
    # not touch the current one (message ids restart with every client).
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connack_result, client, reason)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._lost, client, reason)

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._ack, client, mid, reason)

    # loop-side handlers ---------------------------------------------------------------------------------
    def _connack_result(self, client: mqtt.Client, reason: Any) -> None:
        fut = self._connack
        if client is not self._client or fut is None or fut.done():
            return
        if settle_connack(fut, reason):
            self._connected = True  # here, so a `_lost` queued right behind this CONNACK clears it

    def _lost(self, client: mqtt.Client, reason: Any) -> None:
        if client is not self._client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectRefusedError(f"disconnected before CONNACK: {reason}"))
        self._connected = False
        self._kick.set()

    def _ack(self, client: mqtt.Client, mid: int, reason: Any) -> None:
        if client is not self._client or mid not in self._inflight:
            return  # status messages, or a message of an earlier connection
        try:
            if getattr(reason, "is_failure", False) and not self._refused(mid, reason):
                return
            self._acked.add(mid)
            self._mark_acked()
        finally:
            self._kick.set()

    def _refused(self, mid: int, reason: Any) -> bool:
        """A PUBACK with a failure code. Permanent (not authorised, bad topic, bad payload): the alert is
        parked as `rejected` in the outbox (True: treat as acknowledged). Anything else (quota exceeded,
        unspecified, ...) is transient: drop the connection, pause with backoff, send again (False)."""
        _seq, alert_id = self._inflight[mid]
        code = getattr(reason, "value", None)
        if code in PERMANENT_PUBACK_CODES:
            log.error("broker rejected alert %s (%s); parked as rejected in the outbox", alert_id, reason)
            self._rejected[mid] = f"0x{code:02X} {reason}"
            return True
        if self._reject_delays is None:
            self._reject_delays = self._delays()
        self._hold_s = next(self._reject_delays)
        log.warning("broker refused alert %s for now (%s); sending it again in %.1f s", alert_id, reason,
                    self._hold_s)
        self._connected = False
        return False

    def _mark_acked(self) -> None:
        """Take the acknowledged prefix of the messages in flight out of flight (ordered), then write it to
        the outbox. Alerts sent from `memory` are handed back to it with their outcome. On a database error (a
        full disk, a database held by another process) the marks wait in `_unmarked`, retried later; those
        alerts are not sent again meanwhile, and publishing goes on."""
        count = 0
        while count < len(self._order) and self._order[count] in self._acked:
            count += 1
        from_memory: dict[str, str | None] = {}
        for mid in self._order[:count]:
            seq, alert_id = self._inflight.pop(mid)
            self._acked.discard(mid)
            reason = self._rejected.pop(mid, None)
            if seq < 0:
                from_memory[alert_id] = reason
            else:
                self._unmarked[alert_id] = reason
            if reason is None:
                self.delivered += 1
                self._reject_delays = None
        del self._order[:count]
        if from_memory and self.memory is not None:  # those the outbox took meanwhile are marked there
            self._unmarked.update(self.memory.acknowledged(from_memory))
        if not self._unmarked or time.monotonic() < self._mark_retry_at:
            return
        delivered = [alert_id for alert_id, reason in self._unmarked.items() if reason is None]
        rejected = [(alert_id, reason) for alert_id, reason in self._unmarked.items() if reason is not None]
        try:
            self._store.mark_delivered(delivered)
            if rejected:
                self._store.mark_rejected(rejected)  # counts them in `alerts_rejected` too
        except Exception:
            log.exception("cannot mark %d acknowledged alerts in the outbox; retrying in %.0f s",
                          len(self._unmarked), MARK_RETRY_S)
            self._mark_retry_at = time.monotonic() + MARK_RETRY_S
            if self._loop is not None:
                self._loop.call_later(MARK_RETRY_S, self._kick.set)
            return
        self._unmarked.clear()

    def _backlog(self) -> int | str:
        """The outbox's undelivered rows, for a log line ('unknown' when the database cannot be read)."""
        try:
            return self._store.backlog()
        except sqlite3.Error:
            return "unknown"

    # serving --------------------------------------------------------------------------------------------
    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo | None:
        if self._client is None:
            return None
        health: dict[str, Any] | None = None
        if state == "online":
            try:
                health = dict(self._health())
            except Exception:
                log.exception("health summary failed; publishing status without it")
                health = {}
            if "outbox_backlog" not in health or "outbox_rejected" not in health:
                with contextlib.suppress(sqlite3.Error):
                    health.setdefault("outbox_backlog", self._store.backlog())
                    health.setdefault("outbox_rejected", self._store.rejected())
        payload = status_payload(self.identity, state, time.time(), health)
        info = self._client.publish(self.status_topic, payload, qos=1, retain=True)
        self._flush()
        return info

    def _fill(self) -> None:
        """Publish undelivered rows (oldest first), then alerts the outbox could not take (`memory`), until
        `max_inflight` are in flight."""
        assert self._client is not None
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        skip = {alert_id for _seq, alert_id in self._inflight.values()} | set(self._unmarked)
        try:
            rows = [(row.seq, row.alert_id, row.topic, row.payload)
                    for row in self._store.pending(limit=len(skip) + room)]
        except sqlite3.Error as exc:  # a damaged or unreadable database: what is in memory still goes out
            self._read_error_log.error("cannot read the outbox (%s); sending only the alerts held in memory",
                                       exc)
            rows = []
        if self.memory is not None:
            rows += [(-1, alert_id, topic, payload) for alert_id, topic, payload in self.memory.pending()]
        for seq, alert_id, topic, payload in rows:
            if room <= 0:
                break
            if alert_id in skip:
                continue
            info = self._client.publish(topic, payload, qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._connected = False
                return
            self._inflight[info.mid] = (seq, alert_id)
            self._order.append(info.mid)
            skip.add(alert_id)
            room -= 1
        self._flush()

    async def _serve(self) -> None:
        self._publish_status("online")
        next_health = time.monotonic() + self.config.health_interval_s
        drain_deadline: float | None = None
        while self._connected:
            self._kick.clear()
            if self._closing:
                drain_deadline = drain_deadline or time.monotonic() + self.config.drain_timeout_s
                if not self._inflight or time.monotonic() >= drain_deadline:
                    await self._say_goodbye()
                    return
            else:
                self._mark_acked()
                self._fill()
                if time.monotonic() >= next_health:
                    self._publish_status("online")
                    next_health = time.monotonic() + self.config.health_interval_s
            wake_at = drain_deadline if drain_deadline is not None else next_health
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), max(0.0, wake_at - time.monotonic()))

    async def _say_goodbye(self) -> None:
        if self._inflight:
            log.warning("%d alerts still unacknowledged at shutdown; they stay in the outbox",
                        len(self._inflight))
        if self._restarting:
            log.info("disconnecting from upstream broker for a pipeline restart (status stays online)")
            return
        info = self._publish_status("offline")
        if info is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(info.wait_for_publish, 2.0)
        log.info("disconnecting from upstream broker (offline published)")
