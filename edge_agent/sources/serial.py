"""Serial instruments (pyserial): lines of CSV, JSON or `key=value`, read without blocking the event loop.

The port is opened with `timeout=0` and watched with `loop.add_reader`. A read error or end of file (the USB
adapter was unplugged) closes the port and reopens it with capped exponential backoff, so a replugged device
resumes on its own. Partial lines wait in a buffer; a line longer than `max_line_bytes` without a newline is
garbage and discarded; bytes that are not UTF-8 and lines that do not parse are counted and logged
rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serial

from edge_agent.backoff import Reconnects
from edge_agent.configtools import ConfigError, Section
from edge_agent.sources.base import Source
from edge_agent.sources.lineformats import LineFormat, LineFormatError, LineParser, line_format_from_section
from edge_agent.types import Reading

log = logging.getLogger(__name__)

PARITIES = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
            "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}
STOP_BITS = {1.0: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2.0: serial.STOPBITS_TWO}


@dataclass(frozen=True)
class SerialConfig:
    """`[sources.NAME]` with `type = "serial"`."""

    device: str
    line_format: LineFormat
    baud: int = 9600
    parity: str = "none"
    stop_bits: float = 1.0
    data_bits: int = 8
    queue_size: int = 1000
    max_line_bytes: int = 4096

    @classmethod
    def from_section(cls, section: Section, base_dir: Path) -> SerialConfig:
        device = section.get("device", str)
        baud = section.integer("baud", 9600, minimum=50, maximum=4_000_000)
        parity = section.choice("parity", PARITIES, "none")
        stop_bits = section.number("stop_bits", 1.0)
        if stop_bits not in STOP_BITS:
            raise ConfigError(section.key_path("stop_bits"), "must be 1, 1.5 or 2", stop_bits)
        data_bits = section.integer("data_bits", 8, minimum=5, maximum=8)
        queue_size = section.integer("queue_size", 1000, minimum=1)
        max_line = section.integer("max_line_bytes", 4096, minimum=16)
        line_format = line_format_from_section(section)
        return cls(device=device, line_format=line_format, baud=baud, parity=parity, stop_bits=stop_bits,
                   data_bits=data_bits, queue_size=queue_size, max_line_bytes=max_line)

    def field_names(self) -> tuple[str, ...]:
        return self.line_format.field_names()


class SerialSource(Source):
    """Reads lines from a serial device and yields `Reading`s; survives unplug and replug."""

    kind = "serial"

    def __init__(self, name: str, config: SerialConfig) -> None:
        super().__init__(name, config.queue_size)
        self.config = config
        self._parser = LineParser(config.line_format, name)
        self._port: serial.Serial | None = None
        self._buffer = b""

    @property
    def task_name(self) -> str:
        return f"source[serial:{self.config.device}]"

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        reconnects = Reconnects()
        while True:
            try:
                self._port = self._open()
            except (OSError, serial.SerialException) as exc:
                self.stats.state = "disconnected"
                self.stats.last_error = f"cannot open {self.config.device}: {exc}"
                delay = reconnects.failed()
                log.warning("source %s: cannot open %s (%s); retrying in %.1f s", self.name,
                            self.config.device, exc, delay)
                await asyncio.sleep(delay)
                continue
            reconnects.connected()
            self.stats.state = "connected"
            log.info("source %s: opened %s", self.name, self.config.device)
            lost: asyncio.Future[Exception] = loop.create_future()
            loop.add_reader(self._port.fileno(), self._on_readable, lost)
            try:
                error = await lost
            finally:
                self._close_port(loop)
            self.stats.state = "disconnected"
            self.stats.last_error = f"lost {self.config.device}: {error}"
            self.stats.reconnects += 1
            delay = reconnects.lost()  # a port lost again right after opening waits longer each time
            log.warning("source %s: lost %s (%s); reopening in %.1f s", self.name, self.config.device, error,
                        delay)
            await asyncio.sleep(delay)

    def _open(self) -> serial.Serial:
        cfg = self.config
        port = serial.Serial(cfg.device, baudrate=cfg.baud, parity=PARITIES[cfg.parity],
                             stopbits=STOP_BITS[cfg.stop_bits], bytesize=cfg.data_bits, timeout=0,
                             exclusive=True)
        self._buffer = b""
        self._parser.reset()
        return port

    def _close_port(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        if loop is not None:
            try:
                loop.remove_reader(port.fileno())
            except (OSError, ValueError, serial.SerialException):
                log.debug("source %s: reader already gone", self.name)
        try:
            port.close()
        except (OSError, serial.SerialException) as exc:
            log.debug("source %s: close failed: %s", self.name, exc)

    async def _cleanup(self) -> None:
        loop = asyncio.get_running_loop()
        self._close_port(loop)

    def _on_readable(self, lost: asyncio.Future[Exception]) -> None:
        if lost.done() or self._port is None:
            return
        try:
            chunk = self._port.read(65536)
        except (OSError, serial.SerialException) as exc:
            lost.set_result(exc)
            return
        if not chunk:
            lost.set_result(OSError("end of file"))
            return
        self.feed(chunk, time.time())

    def feed(self, chunk: bytes, arrival: float) -> None:
        """Split `chunk` (appended to any partial line) into lines and parse each complete one."""
        data = self._buffer + chunk
        *lines, rest = data.split(b"\n")
        if len(rest) > self.config.max_line_bytes:
            self._invalid("line", LineFormatError(f"{len(rest)} bytes without a newline, discarded"))
            rest = b""
        self._buffer = rest
        for raw in lines:
            self.handle_line(raw, arrival)

    def handle_line(self, raw: bytes, arrival: float) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            why = f"not UTF-8 text: {raw[:40]!r} (a wrong baud rate, parity or data bits?)"
            self._invalid("line", LineFormatError(why))
            log.debug("decode error: %s", exc)
            return
        try:
            parsed = self._parser.parse(text)
        except LineFormatError as exc:
            self._invalid("line", exc)
            return
        except Exception as exc:  # noqa: BLE001 - one bad line must never stop the rest of the chunk
            self._invalid("line", LineFormatError(f"{type(exc).__name__}: {exc}"))
            return
        if parsed is None:
            return
        ts, values = parsed
        self._emit(Reading(self.name, ts if ts is not None else arrival, values))

    def describe(self) -> dict[str, Any]:
        return {"type": "serial", "device": self.config.device, **self.stats.as_dict()}
