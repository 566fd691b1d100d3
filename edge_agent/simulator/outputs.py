"""Where simulated samples go: CSV files, MQTT, a serial port, in the line formats the agent reads.

    CSV file (per asset)  timestamp,speed,flow,...,label        trainer's CSV reader and the agent's replay
    serial  csv           ts,speed,flow,...  (header repeated every `header_every` lines)
            kv            ts=1767225600.000 speed=2950.1 flow=99.87 ...
            json          {"ts": 1767225600.0, "speed": 2950.1, ...}
    MQTT    json          plant/<asset>/telemetry  {"ts": 1767225600.0, "speed": 2950.1, ...}
            number        plant/<asset>/<channel>  99.87

Values are rounded per channel (`DECIMALS`) so the output is the same bytes for the same seed.
Pacing: `Pacer(period_s, speed)` holds each time step until `period / speed` seconds after the previous one
(deadlines from one monotonic start, so delays do not accumulate); `speed=0` means as fast as possible.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import paho.mqtt.client as mqtt

from edge_agent.simulator.plant import CHANNELS, Sample

log = logging.getLogger(__name__)

LINE_FORMATS = ("csv", "kv", "json")
MQTT_PAYLOADS = ("json", "number")
DECIMALS: dict[str, int] = {
    "speed": 1, "flow": 2, "suction_pressure": 4, "discharge_pressure": 4, "motor_current": 2,
    "vibration_rms": 3, "bearing_temp": 2,
}
CSV_TIMESTAMP = "timestamp"  # the timestamp column of CSV files
LINE_TIMESTAMP = "ts"  # the timestamp field of live lines and payloads


def rounded(sample: Sample, channels: Sequence[str] = CHANNELS) -> dict[str, float]:
    """The sample's values rounded to each channel's resolution."""
    return {c: round(sample.values[c], DECIMALS.get(c, 4)) for c in channels}


def _text(sample: Sample, channels: Sequence[str]) -> list[str]:
    return [f"{sample.values[c]:.{DECIMALS.get(c, 4)}f}" for c in channels]


def csv_header(channels: Sequence[str] = CHANNELS, ts_name: str = LINE_TIMESTAMP) -> str:
    return ",".join([ts_name, *channels])


def format_line(sample: Sample, fmt: str, channels: Sequence[str] = CHANNELS) -> str:
    """One line (no newline) in `fmt`: `csv` (data row; see `csv_header`), `kv` or `json`."""
    if fmt == "csv":
        return ",".join([f"{sample.ts:.3f}", *_text(sample, channels)])
    if fmt == "kv":
        return " ".join([f"{LINE_TIMESTAMP}={sample.ts:.3f}",
                         *(f"{c}={v}" for c, v in zip(channels, _text(sample, channels), strict=True))])
    if fmt == "json":
        return json.dumps({LINE_TIMESTAMP: round(sample.ts, 3), **rounded(sample, channels)})
    raise ValueError(f"unknown line format {fmt!r}, expected one of {', '.join(LINE_FORMATS)}")


class Pacer:
    """Holds time step `k` until `k * period_s / speed` s after the first one (`speed` 0: no waiting)."""

    def __init__(self, period_s: float, speed: float) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.interval = period_s / speed if speed else 0.0
        self._start: float | None = None

    def delay(self, step: int) -> float:
        """Seconds to wait before emitting time step `step` (0-based)."""
        if not self.interval:
            return 0.0
        now = time.monotonic()
        if self._start is None:
            self._start = now
        return max(0.0, self._start + step * self.interval - now)


class Sink(Protocol):
    """A destination for time steps (one sample per asset)."""

    def emit(self, tick: Sequence[Sample]) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    """One CSV file per asset, `<directory>/<asset>.csv`: `timestamp,<channels>,label` (label 1 = fault)."""

    def __init__(self, directory: str | Path, assets: Sequence[str], channels: Sequence[str] = CHANNELS,
                 label: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.channels = tuple(channels)
        self.label = label
        self.paths = {asset: self.directory / f"{asset}.csv" for asset in assets}
        self._files: dict[str, IO[str]] = {}
        try:
            for asset, path in self.paths.items():
                handle = path.open("w", encoding="utf-8", newline="")
                self._files[asset] = handle
                handle.write(csv_header(self.channels, CSV_TIMESTAMP) + (",label" if label else "") + "\n")
        except OSError:
            self.close()
            raise

    def emit(self, tick: Sequence[Sample]) -> None:
        for sample in tick:
            line = format_line(sample, "csv", self.channels)
            self._files[sample.asset].write(line + (f",{sample.label}\n" if self.label else "\n"))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


class SerialSink:
    """Lines for one asset written to a serial device (a pty, a USB adapter) or to stdout (`-`)."""

    def __init__(self, port: str, asset: str, *, fmt: str = "csv", baudrate: int = 115200,
                 header_every: int = 60, channels: Sequence[str] = CHANNELS) -> None:
        if fmt not in LINE_FORMATS:
            raise ValueError(f"unknown serial line format {fmt!r}, expected one of {', '.join(LINE_FORMATS)}")
        self.asset, self.format, self.channels = asset, fmt, tuple(channels)
        self.header_every = header_every
        self.lines = 0
        self.port = port
        self._serial = None
        if port != "-":
            import serial  # pyserial: a base dependency, imported here to keep `simulate --csv` light

            try:
                self._serial = serial.Serial(port, baudrate=baudrate, write_timeout=10)
            except (serial.SerialException, OSError) as exc:
                raise OSError(f"cannot open serial port {port}: {exc}") from exc

    def _write(self, text: str) -> None:
        if self._serial is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            try:
                self._serial.write(text.encode("ascii"))
            except OSError as exc:  # pyserial's SerialException (and its write timeout) are OSErrors
                raise OSError(f"serial port {self.port}: write failed ({exc}); is anything reading?") from exc

    def emit(self, tick: Sequence[Sample]) -> None:
        for sample in tick:
            if sample.asset != self.asset:
                continue
            chunk = ""
            repeat = bool(self.header_every) and self.lines % self.header_every == 0
            if self.format == "csv" and (self.lines == 0 or repeat):
                chunk = csv_header(self.channels) + "\n"
            chunk += format_line(sample, self.format, self.channels) + "\n"
            self._write(chunk)
            self.lines += 1

    def close(self) -> None:
        if self._serial is not None:
            self._serial.flush()
            self._serial.close()
            self._serial = None


@dataclass(frozen=True)
class MqttTarget:
    """Where and how to publish. `topic_template` has `{asset}` (and `{channel}` for the number payload)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_template: str | None = None  # default: plant/{asset}/telemetry (json), plant/{asset}/{channel}
    payload: str = "json"
    qos: int = 0
    client_id: str = ""
    connect_timeout_s: float = 10.0

    def topic(self, asset: str, channel: str | None = None) -> str:
        if self.topic_template is not None:
            return self.topic_template.format(asset=asset, channel=channel or "")
        return f"plant/{asset}/{channel}" if channel else f"plant/{asset}/telemetry"


class MqttSink:
    """Publishes every sample (a JSON object per asset, or one number per channel topic) with paho-mqtt.

    Connects at construction (error if the broker cannot be reached), reconnects by itself afterwards;
    samples produced while disconnected are dropped and counted in `dropped`.
    """

    def __init__(self, target: MqttTarget, channels: Sequence[str] = CHANNELS) -> None:
        if target.payload not in MQTT_PAYLOADS:
            raise ValueError(f"unknown MQTT payload {target.payload!r}, "
                             f"expected one of {', '.join(MQTT_PAYLOADS)}")
        if target.payload == "number" and target.topic_template and "{channel}" not in target.topic_template:
            raise ValueError(f"topic template {target.topic_template!r} needs {{channel}} "
                             "for number payloads")
        self.target, self.channels = target, tuple(channels)
        self.published = self.dropped = 0
        self._last: mqtt.MQTTMessageInfo | None = None
        self._connected = threading.Event()
        self._closing = False  # close() disconnects: not a lost broker
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=target.client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        try:
            self.client.connect(target.host, target.port, keepalive=30)
        except OSError as exc:
            raise OSError(f"cannot connect to MQTT broker {target.host}:{target.port}: {exc}") from exc
        self.client.loop_start()
        if not self._connected.wait(target.connect_timeout_s):
            self.client.loop_stop()
            raise OSError(f"MQTT broker {target.host}:{target.port} did not accept the connection "
                          f"within {target.connect_timeout_s} s")

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker right now."""
        return self._connected.is_set()

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode,
                    _p: object) -> None:
        if not reason.is_failure:
            log.info("simulator connected to MQTT broker %s:%d", self.target.host, self.target.port)
            self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        if self._connected.is_set() and not self._closing:
            log.warning("simulator lost the MQTT broker %s:%d", self.target.host, self.target.port)
        self._connected.clear()

    def _publish(self, topic: str, payload: str) -> None:
        info = self.client.publish(topic, payload, qos=self.target.qos)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
            self._last = info
        else:
            self.dropped += 1

    def emit(self, tick: Sequence[Sample]) -> None:
        for sample in tick:
            if self.target.payload == "json":
                self._publish(self.target.topic(sample.asset), format_line(sample, "json", self.channels))
            else:
                for channel, value in zip(self.channels, _text(sample, self.channels), strict=True):
                    self._publish(self.target.topic(sample.asset, channel), value)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the last message left the client (QoS 0) or was acknowledged (QoS 1/2)."""
        if self._last is not None and self._connected.is_set():
            try:
                self._last.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                log.warning("simulator: last MQTT message not confirmed: %s", exc)

    def close(self) -> None:
        self.flush()
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()


async def run_sinks(ticks: Iterable[Sequence[Sample]], sinks: Sequence[Sink], pacer: Pacer | None = None,
                    stop: asyncio.Event | None = None) -> int:
    """Feed every time step to every sink, paced; returns the number of time steps emitted.

    Stops early when `stop` is set. Sinks are not closed here (the caller owns them).
    """
    steps = 0
    for tick in ticks:
        if stop is not None and stop.is_set():
            break
        delay = pacer.delay(steps) if pacer else 0.0
        if delay > 0:
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except asyncio.TimeoutError:  # the builtin TimeoutError only from 3.11
                    pass
        for sink in sinks:
            sink.emit(tick)
        steps += 1
        if steps % 256 == 0:
            await asyncio.sleep(0)  # as-fast-as-possible runs still let other tasks (and signals) in
    return steps


def write_csv(samples: Iterable[Sample], directory: str | Path, assets: Sequence[str] | None = None,
              channels: Sequence[str] = CHANNELS, label: bool = True) -> dict[str, Path]:
    """Write samples (as fast as possible) to `<directory>/<asset>.csv`; returns the paths per asset.

    `assets` defaults to the assets of the samples, in order of appearance.
    """
    rows = list(samples) if assets is None else samples
    names = assets if assets is not None else list(dict.fromkeys(s.asset for s in rows))
    sink = CsvSink(directory, names, channels, label)
    try:
        for sample in rows:
            sink.emit((sample,))
    finally:
        sink.close()
    return sink.paths


async def publish_mqtt(ticks: Iterable[Sequence[Sample]], target: MqttTarget, pacer: Pacer | None = None,
                       stop: asyncio.Event | None = None) -> int:
    """Publish every time step to MQTT (paced by `pacer`); returns the number of messages published."""
    sink = await asyncio.to_thread(MqttSink, target)
    try:
        await run_sinks(ticks, [sink], pacer, stop)
    finally:
        await asyncio.to_thread(sink.close)
    return sink.published


def write_serial(ticks: Iterable[Sequence[Sample]], port: str, asset: str, *, fmt: str = "csv",
                 baudrate: int = 115200, pacer: Pacer | None = None, header_every: int = 60) -> int:
    """Write one asset's samples as lines to a serial device (blocking, paced); returns lines written."""
    sink = SerialSink(port, asset, fmt=fmt, baudrate=baudrate, header_every=header_every)
    try:
        for step, tick in enumerate(ticks):
            delay = pacer.delay(step) if pacer else 0.0
            if delay > 0:
                time.sleep(delay)
            sink.emit(tick)
    finally:
        sink.close()
    return sink.lines
