"""Sensors published on a plant MQTT broker (paho-mqtt 2.x).

Two payload shapes:

- `payload = "json"`: each message is a JSON object; `fields` picks its numeric keys. `topics` is a list of
  filters (wildcards allowed) or a table `{filter = "prefix"}`: a message on a topic matching a filter with a
  prefix produces fields named `prefix.field`, so one source can carry many assets with the same field names.
- `payload = "number"`: each message is one number; `topics` is a table `{exact topic = "field"}`.

Timestamps come from `timestamp_field` of a JSON payload, else arrival time. The paho client is driven by the
event loop (`edge_agent.mqttloop`), with no network thread: a message is parsed in the loop turn that read
it, and the reading goes straight to the windowing (`Source.deliver`; the reading queue, bounded and
drop-oldest, only holds readings while the pipeline (re)starts). While the broker is away (also at start)
the source reconnects with `edge_agent.backoff` delays; each connection subscribes afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent.backoff import Reconnects, backoff_delays
from edge_agent.configtools import ConfigError, Section, join
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
from edge_agent.sources.base import (
    SecretRef,
    Source,
    broker_login,
    existing_secret,
    read_secret,
    secret_path,
)
from edge_agent.sources.lineformats import (
    TIMESTAMP_FORMATS,
    LineFormatError,
    field_map,
    parse_timestamp,
    to_number,
)
from edge_agent.types import Reading

log = logging.getLogger(__name__)

PAYLOADS = ("json", "number")


def check_topic_filter(topic: str, path: str) -> None:
    """An MQTT topic filter the broker accepts (MQTT 3.1.1 section 4.7): not empty, at most 65535 bytes of
    UTF-8 without NUL, `+` a whole level, `#` the whole last level. paho refuses anything else only when
    subscribing, which would fail the source at every connect instead of in `check-config`."""
    if not topic:
        raise ConfigError(path, "a topic filter cannot be empty", topic)
    if "\x00" in topic or len(topic.encode("utf-8", "surrogatepass")) > 65535:
        shown = topic if len(topic) <= 100 else topic[:100] + "..."
        raise ConfigError(path, "a topic filter is at most 65535 bytes of UTF-8, without NUL", shown)
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(path, "'#' must be a whole level and the last one (e.g. plant/#)", topic)
        if "+" in level and level != "+":
            raise ConfigError(path, "'+' must be a whole level (e.g. plant/+/telemetry)", topic)


@dataclass(frozen=True)
class MqttSourceConfig:
    """`[sources.NAME]` with `type = "mqtt"`."""

    host: str
    topics: Mapping[str, str]  # filter -> prefix (json) or exact topic -> field (number)
    payload: str = "json"
    fields: Mapping[str, str] = field(default_factory=dict)  # output name -> JSON key (json payloads)
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password_file: Path | SecretRef | None = None
    tls: bool = False  # a [sources.NAME.tls] table is present: TLS (system CAs unless `ca`)
    tls_ca: Path | SecretRef | None = None
    tls_cert: Path | SecretRef | None = None
    tls_key: Path | SecretRef | None = None
    keepalive: int = 30
    qos: int = 0
    timestamp_field: str | None = None
    timestamp_format: str = "unix_s"
    queue_size: int = 1000

    def login(self, name: str) -> Login:
        """This source's login, the password read from `password_file` and the TLS files located now (a
        `ConfigError` naming the key when one cannot be)."""
        password = None
        if self.username is not None and self.password_file is not None:
            password = password_text(read_secret(self.password_file, f"sources -> {name} -> password_file"))

        def located(secret: Path | SecretRef | None) -> Path | None:
            return None if secret is None else secret_path(secret)

        return Login(self.username, password, self.tls or self.tls_ca is not None, located(self.tls_ca),
                     located(self.tls_cert), located(self.tls_key))

    @classmethod
    def from_section(cls, section: Section, base_dir: Path) -> MqttSourceConfig:
        payload = section.choice("payload", PAYLOADS, "json")
        raw_topics = section.raw("topics")
        topics: dict[str, str]
        if isinstance(raw_topics, list):
            if payload == "number":
                raise ConfigError(section.key_path("topics"), "with payload = \"number\" must be a table "
                                  "{\"exact/topic\" = \"field\"}", raw_topics)
            topics = dict.fromkeys(section.str_list("topics"), "")
        else:
            table = section.section("topics")
            topics = {key: table.get(key, str) for key in list(table.keys())}
            table.finish()
        if not topics:
            raise ConfigError(section.key_path("topics"), "must name at least one topic", raw_topics)
        for topic, target in topics.items():
            path = join(section.key_path("topics"), topic)
            check_topic_filter(topic, path)
            if payload == "number" and ("+" in topic or "#" in topic):
                raise ConfigError(path, "wildcards cannot map to one field; list exact topics", topic)
            if payload == "number" and not target:
                raise ConfigError(path, "needs a field name", target)
            if "." in target and payload == "json":
                raise ConfigError(path, "a prefix cannot contain '.'", target)
        for json_only in ("timestamp_field", "timestamp_format", "fields"):
            if payload == "number" and json_only in section:
                raise ConfigError(section.key_path(json_only), "only applies to payload = \"json\" (a "
                                  "number payload carries no timestamp: its arrival time is used)",
                                  section.raw(json_only))
        fields: dict[str, str] = {}
        if payload == "json":
            raw_fields = section.raw("fields")
            if isinstance(raw_fields, list):
                fields = field_map(section.str_list("fields"))
            else:
                table = section.section("fields")
                fields = {key: table.get(key, str) for key in list(table.keys())}
                table.finish()
            if not fields:
                raise ConfigError(section.key_path("fields"), "must name at least one field", raw_fields)
        use_tls = "tls" in section
        tls = section.section("tls", None)
        ca, cert, key = (tls.optional(name, str) for name in ("ca", "cert", "key"))
        tls.finish()
        if (cert is None) != (key is None):
            raise ConfigError(tls.path, "cert and key must be given together")

        def resolve(value: str | None, path: str) -> Path | SecretRef | None:
            return None if value is None else existing_secret(value, path, base_dir)

        username, password_file = broker_login(section, base_dir)
        return cls(
            host=section.get("host", str), topics=topics, payload=payload, fields=fields,
            port=section.integer("port", 1883, minimum=1, maximum=65535),
            client_id=section.get("client_id", str, ""), username=username,
            password_file=password_file,
            tls=use_tls, tls_ca=resolve(ca, join(tls.path, "ca")),
            tls_cert=resolve(cert, join(tls.path, "cert")),
            tls_key=resolve(key, join(tls.path, "key")),
            keepalive=section.integer("keepalive", 30, minimum=5, maximum=3600),
            qos=section.integer("qos", 0, minimum=0, maximum=1),
            timestamp_field=section.optional("timestamp_field", str),
            timestamp_format=section.choice("timestamp_format", TIMESTAMP_FORMATS, "unix_s"),
            queue_size=section.integer("queue_size", 1000, minimum=1),
        )

    def field_names(self) -> tuple[str, ...]:
        if self.payload == "number":
            return tuple(self.topics.values())
        names: list[str] = []
        for prefix in dict.fromkeys(self.topics.values()):
            names.extend(f"{prefix}.{name}" if prefix else name for name in self.fields)
        return tuple(names)


class MqttSource(Source):
    """Subscribes to the configured topics and yields one `Reading` per valid message."""

    kind = "mqtt"
    produces_on_loop = True

    def __init__(self, name: str, config: MqttSourceConfig,
                 delays: Callable[[], Iterator[float]] = backoff_delays) -> None:
        super().__init__(name, config.queue_size)
        self.config = config
        self._delays = delays
        self._client: mqtt.Client | None = None
        self._io: LoopIO | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[None] | None = None
        self._lost = asyncio.Event()
        self._subscription: tuple[mqtt.Client, int | None] | None = None  # the client, mid of its SUBSCRIBE
        self._route_cache: dict[str, str | None] = {}
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}  # prefix -> (output name, JSON key)
        self._unreachable_log = RateLimitedLog(log, interval_s=60.0)

    @property
    def task_name(self) -> str:
        return f"source[mqtt:{self.name}@{self.config.host}:{self.config.port}]"

    def _make_client(self) -> mqtt.Client:
        cfg = self.config
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                reconnect_on_failure=False)
        cfg.login(self.name).apply(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message  # what `read_publishes` leaves to paho (QoS 2, properties)
        client.fast_message = self._on_fast_message
        client.on_subscribe = self._on_subscribe
        return client

    async def _run(self) -> None:
        """Connect (retrying with backoff while the broker is away), subscribe, read until the connection is
        lost; again. Messages are handled inside the loop's reads (`_on_message`)."""
        self._loop = asyncio.get_running_loop()
        self.stats.state = "disconnected"
        reconnects = Reconnects(self._delays)
        while True:
            try:
                await self._connect()
            except (OSError, ConfigError, asyncio.TimeoutError) as exc:  # ConnectRefusedError is an OSError
                self._teardown()
                delay = reconnects.failed()
                self.stats.last_error = connect_failure(exc, self.config.host, self.config.port,
                                                        self.config.tls)
                self._unreachable_log.warning("source %s: %s; retrying in %.1f s", self.name,
                                              self.stats.last_error, delay)
                await asyncio.sleep(delay)
                continue
            reconnects.connected()
            self._unreachable_log = RateLimitedLog(log, interval_s=60.0)
            try:
                await self._lost.wait()
            finally:
                self._teardown()
            self._set_state("disconnected")
            held = reconnects.held()
            delay = reconnects.lost()
            self.stats.last_error = f"broker {self.config.host}:{self.config.port}: connection lost"
            if not held:
                self.stats.last_error += (" right after it was accepted (another client with the same "
                                          "client_id?)")
                self._unreachable_log.warning("source %s: %s; reconnecting in %.1f s", self.name,
                                              self.stats.last_error, delay)
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        assert self._loop is not None
        client = self._client = self._make_client()
        self._connack = self._loop.create_future()
        self._lost.clear()
        self._io = await connect_on_loop(self._loop, client, self.config.host, self.config.port,
                                         self.config.keepalive)
        await asyncio.wait_for(self._connack, timeout=max(10.0, float(self.config.keepalive)))
        if self._lost.is_set() or not client.is_connected():
            raise ConnectRefusedError("connection lost right after CONNACK")
        sock = client.socket()
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # small sensor messages: no Nagle delay on what we send (subscriptions, PUBACKs)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _rc, mid = client.subscribe([(topic, self.config.qos) for topic in self.config.topics])
        self._subscription = (client, mid)
        self._io.flush()
        self._set_state("connected")

    def _teardown(self) -> None:
        client, self._client = self._client, None
        io, self._io = self._io, None
        close_connection(client, io)

    async def _cleanup(self) -> None:
        self._teardown()

    # paho callbacks. `on_message` and `on_connect` run inside the loop's reads; `on_disconnect` may also come
    # from the connect worker thread (the CONNECT could not be written), so it is handed over thread-safely.
    # Each handler checks the client it came from: a late callback of an earlier client must not count.
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        fut = self._connack
        if client is self._client and fut is not None and not fut.done():
            settle_connack(fut, reason)

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._connection_lost, client, reason)

    def _connection_lost(self, client: mqtt.Client, reason: Any) -> None:
        if client is not self._client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectRefusedError(f"disconnected before CONNACK: {reason}"))
        self._lost.set()

    def _on_subscribe(self, client: mqtt.Client, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        """SUBACK: a filter the broker refused (its ACL, a bad filter) would never deliver data; say which."""
        if (client, mid) != self._subscription:
            return
        for topic, reason in zip(self.config.topics, reasons, strict=False):
            if getattr(reason, "is_failure", False):
                log.error("source %s: the broker %s:%d refused the subscription to %r (%s): no data will "
                          "arrive from it; check the broker's ACL for this client", self.name,
                          self.config.host, self.config.port, topic, reason)

    def _on_message(self, _client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # raised inside paho's read, it would stall the connection on this packet
            self._invalid("topic", LineFormatError(f"topic is not UTF-8: {msg._topic[:60]!r}"))
            return
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self.handle_message(topic, payload, time.time())

    def _on_fast_message(self, topic: str, payload: bytes) -> None:
        self.handle_message(topic, payload, time.time())

    def _set_state(self, state: str) -> None:
        if state == "connected" and self.stats.state == "disconnected" and self.stats.received:
            self.stats.reconnects += 1
        if state != self.stats.state:
            log.info("source %s: %s %s:%d", self.name, "connected to" if state == "connected" else
                     f"{state} from", self.config.host, self.config.port)
        self.stats.state = state

    def route(self, topic: str) -> str | None:
        """The prefix (json) or field (number) for a topic, None when no configured topic matches."""
        if topic in self._route_cache:
            return self._route_cache[topic]
        target = self.config.topics.get(topic)
        if target is None:
            for pattern, value in self.config.topics.items():
                if mqtt.topic_matches_sub(pattern, topic):
                    target = value
                    break
        if len(self._route_cache) < 10_000:
            self._route_cache[topic] = target
        return target

    def handle_message(self, topic: str, payload: bytes, arrival: float) -> None:
        """Parse one message into a `Reading` (invalid payloads are counted and logged rate-limited)."""
        target = self.route(topic)
        if target is None:
            self._invalid("topic", LineFormatError(f"no configured topic matches {topic!r}"))
            return
        try:
            if self.config.payload == "number":
                value = to_number(payload.decode("utf-8"), topic)
                self._emit(Reading(self.name, arrival, {target: value}))
                return
            ts, values = self._parse_json(payload, target)
        except (LineFormatError, UnicodeDecodeError) as exc:
            self._invalid(f"payload on {topic}", exc)
            return
        except Exception as exc:  # noqa: BLE001 - one bad message must never stop the others
            self._invalid(f"payload on {topic}", LineFormatError(f"{type(exc).__name__}: {exc}"))
            return
        self._emit(Reading(self.name, ts if ts is not None else arrival, values))

    def _parse_json(self, payload: bytes, prefix: str) -> tuple[float | None, dict[str, float]]:
        try:
            obj = json.loads(payload)
        except ValueError as exc:
            raise LineFormatError(f"not valid JSON: {payload[:60]!r}") from exc
        if not isinstance(obj, dict):
            raise LineFormatError(f"expected a JSON object, got {type(obj).__name__}")
        fast = self._parse_plain(obj, prefix)
        if fast is not None:
            return fast
        ts = None
        if self.config.timestamp_field is not None:
            if self.config.timestamp_field not in obj:
                raise LineFormatError(f"timestamp field {self.config.timestamp_field!r} missing")
            ts = parse_timestamp(obj[self.config.timestamp_field], self.config.timestamp_format, self.name)
        values = {}
        for name, key in self.config.fields.items():
            if key not in obj:
                raise LineFormatError(f"field {key!r} missing")
            values[f"{prefix}.{name}" if prefix else name] = to_number(obj[key], key)
        return ts, values

    def _parse_plain(self, obj: dict[str, Any], prefix: str) -> tuple[float | None, dict[str, float]] | None:
        """The common case cheaply: every field a finite JSON float and the timestamp a number. None for
        anything else, which `_parse_json` then checks field by field for a precise error."""
        keys = self._keys.get(prefix)
        if keys is None:
            keys = self._keys[prefix] = tuple((f"{prefix}.{name}" if prefix else name, key)
                                              for name, key in self.config.fields.items())
        try:
            values = {name: obj[key] for name, key in keys}
        except KeyError:
            return None
        if not all(type(v) is float and math.isfinite(v) for v in values.values()):
            return None
        ts_field = self.config.timestamp_field
        if ts_field is None:
            return None, values
        raw = obj.get(ts_field)
        if self.config.timestamp_format == "iso8601" or type(raw) not in (float, int):
            return None
        try:
            return parse_timestamp(raw, self.config.timestamp_format, self.name), values
        except LineFormatError:
            return None

    def describe(self) -> dict[str, Any]:
        return {"type": "mqtt", "broker": f"{self.config.host}:{self.config.port}", **self.stats.as_dict()}
