"""Replay a CSV file at real or accelerated speed, for commissioning and tests.

The file has a header; `delimiter` separates the cells (default `,`; SKAB's files use `;`). Timestamps
come from `timestamp_field` (else one row every `sample_period_s`). With `rebase = true` (the default) the
first row is played at the current time and the others keep their spacing, so alerts carry today's
timestamps. `speed = 2.0` plays twice as fast; `speed = 0` as fast as the pipeline takes it. At the end of
the file the source finishes (or starts again with `loop = true`).
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from edge_agent.configtools import ConfigError, Section, join
from edge_agent.sources.base import Source
from edge_agent.sources.lineformats import (
    TIMESTAMP_FORMATS,
    LineFormatError,
    field_map,
    other_delimiter,
    parse_timestamp,
    to_number,
)
from edge_agent.types import Reading

log = logging.getLogger(__name__)

REPLAY_CHUNK = 32


@dataclass(frozen=True)
class ReplayConfig:
    """`[sources.NAME]` with `type = "replay"`."""

    path: Path
    fields: dict[str, str]
    delimiter: str = ","
    timestamp_field: str | None = None
    timestamp_format: str = "unix_s"
    sample_period_s: float = 1.0
    speed: float = 1.0
    rebase: bool = True
    loop: bool = False
    queue_size: int = 1000

    @classmethod
    def from_section(cls, section: Section, base_dir: Path) -> ReplayConfig:
        raw_path = Path(section.get("path", str))
        path = raw_path if raw_path.is_absolute() else base_dir / raw_path
        delimiter = section.get("delimiter", str, ",")
        if len(delimiter) != 1 or delimiter in '\r\n"':
            raise ConfigError(section.key_path("delimiter"), "must be a single character, not a line break "
                              "or the quote character '\"'", delimiter)
        timestamp_field = section.optional("timestamp_field", str)
        if "fields" in section:
            raw = section.raw("fields")
            if isinstance(raw, list):
                fields = field_map(section.str_list("fields"))
            else:
                table = section.section("fields")
                fields = {key: table.get(key, str) for key in list(table.keys())}
                table.finish()
        else:
            header = read_header(path, section.key_path("path"), delimiter)
            if len(header) == 1:  # every cell of each row would go into one field that is never a number
                hint = delimiter_hint(path, delimiter, section.key_path("delimiter"))
                if hint:
                    raise ConfigError(section.key_path("path"), f"the header is one column, "
                                      f"{header[0]!r}{hint}", str(path))
            fields = field_map([c for c in header if c != timestamp_field])
        if not fields:
            raise ConfigError(section.key_path("fields"), "must name at least one field")
        return cls(
            path=path, fields=fields, delimiter=delimiter, timestamp_field=timestamp_field,
            timestamp_format=section.choice("timestamp_format", TIMESTAMP_FORMATS, "unix_s"),
            sample_period_s=section.number("sample_period_s", 1.0, minimum=0, exclusive_minimum=True),
            speed=section.number("speed", 1.0, minimum=0),
            rebase=section.get("rebase", bool, True), loop=section.get("loop", bool, False),
            queue_size=section.integer("queue_size", 1000, minimum=1),
        )

    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def check_file(self, key_path: str) -> None:
        """The file can be read and has every column the config names (`check-config` runs this; loading
        the config reads the header only when `fields` is left out)."""
        header = read_header(self.path, join(key_path, "path"), self.delimiter)
        delimiter_key = join(key_path, "delimiter")
        if self.timestamp_field is not None and self.timestamp_field not in header:
            hint = delimiter_hint(self.path, self.delimiter, delimiter_key, [self.timestamp_field])
            raise ConfigError(join(key_path, "timestamp_field"),
                              f"no such column in {self.path} (columns: {', '.join(header)}){hint}",
                              self.timestamp_field)
        missing = [column for column in self.fields.values() if column not in header]
        if missing:
            hint = delimiter_hint(self.path, self.delimiter, delimiter_key, missing)
            raise ConfigError(join(key_path, "fields"),
                              f"column(s) not in {self.path} (columns: {', '.join(header)}){hint}", missing)


def open_recording(path: Path) -> TextIO:
    """A replay file for `csv.reader`: UTF-8 with or without a byte order mark (Excel's "CSV UTF-8", whose
    mark would otherwise stick to a quoted first column name); bytes that are not UTF-8 read as U+FFFD, so
    a header naming them does not match and a row holding them is an invalid row, not a crash."""
    return path.open(newline="", encoding="utf-8-sig", errors="replace")


def read_header(path: Path, key_path: str, delimiter: str = ",") -> list[str]:
    """The column names of a replay file (a clear config error when it is missing or empty)."""
    try:
        with open_recording(path) as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read replay file: {exc.strerror}", str(path)) from exc
    if not header:
        raise ConfigError(key_path, "replay file is empty (a header row is required)", str(path))
    return [name.strip() for name in header]


def delimiter_hint(path: Path, delimiter: str, delimiter_key: str, wanted: Sequence[str] = ()) -> str:
    """Which delimiter to set when another common one splits the header into several columns, `wanted`
    among them (`lineformats.other_delimiter` on the file's first two lines, worded as the trainer's CSV
    reader words it); empty when none does or the file cannot be read."""
    try:
        with open_recording(path) as handle:
            lines = list(itertools.islice(handle, 2))
    except OSError:
        return ""
    other = other_delimiter(lines, delimiter, wanted)
    if other is None:
        return ""
    return (f" (the file looks {other!r}-separated, not {delimiter!r}-separated; set {delimiter_key} "
            f"= {json.dumps(other)})")


class ReplaySource(Source):
    """Plays the rows of a CSV file as `Reading`s, paced by their timestamps."""

    kind = "replay"
    lossless = True

    def __init__(self, name: str, config: ReplayConfig) -> None:
        # A replay must not lose rows to its own pace: the reader waits for room instead of dropping.
        super().__init__(name, config.queue_size)
        self.config = config

    @property
    def task_name(self) -> str:
        return f"source[replay:{self.config.path.name}]"

    async def _run(self) -> None:
        self.stats.state = "connected"
        offset = 0.0
        wall0 = time.time()
        while True:
            last_rel = await self._play_once(wall0, offset)
            if not self.config.loop or last_rel is None:
                break
            offset = last_rel + self.config.sample_period_s
        self.stats.state = "finished"
        log.info("source %s: replay of %s finished (%d rows)", self.name, self.config.path,
                 self.stats.received)

    async def _play_once(self, wall0: float, offset: float) -> float | None:
        """Play the file once; returns the last row's time relative to the start of the replay."""
        cfg = self.config
        key_path = f"sources -> {self.name}"
        header = read_header(cfg.path, join(key_path, "path"), cfg.delimiter)
        missing = [key for key in cfg.fields.values() if key not in header]
        if cfg.timestamp_field is not None and cfg.timestamp_field not in header:
            missing.append(cfg.timestamp_field)
        if missing:
            hint = delimiter_hint(cfg.path, cfg.delimiter, join(key_path, "delimiter"), missing)
            raise ConfigError(join(key_path, "fields"),
                              f"columns {', '.join(missing)} are not in {cfg.path}{hint}")
        first_ts: float | None = None
        rel: float | None = None
        with open_recording(cfg.path) as handle:
            reader = csv.reader(handle, delimiter=cfg.delimiter)
            next(reader)
            for row_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    file_ts, values = self._parse_row(header, row, row_no)
                except LineFormatError as exc:
                    self._invalid(f"row {row_no} of {cfg.path.name}", exc)
                    continue
                if first_ts is None:
                    first_ts = file_ts
                rel = offset + file_ts - first_ts
                ts = (wall0 if cfg.rebase else first_ts) + rel
                if cfg.speed > 0:
                    due = wall0 + rel / cfg.speed
                    delay = due - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._wait_for_room(row_no)
                self._emit(Reading(self.name, ts, values))
        return rel

    def _parse_row(self, header: list[str], row: list[str], row_no: int) -> tuple[float, dict[str, float]]:
        if len(row) != len(header):
            raise LineFormatError(f"expected {len(header)} fields, got {len(row)}")
        cells = dict(zip(header, row, strict=True))
        if self.config.timestamp_field is not None:
            ts = parse_timestamp(cells[self.config.timestamp_field], self.config.timestamp_format, self.name)
        else:
            ts = (row_no - 2) * self.config.sample_period_s
        try:  # the fast path; anything odd goes through to_number for a precise message
            values = {name: float(cells[key]) for name, key in self.config.fields.items()}
            if all(map(math.isfinite, values.values())):
                return ts, values
        except ValueError:
            pass
        values = {name: to_number(cells[key], key) for name, key in self.config.fields.items()}
        return ts, values

    async def _wait_for_room(self, row_no: int) -> None:
        if self._queue is not None:
            await self._queue.wait_for_room()
        # Paced replays yield at every row anyway; a replay at full speed lets the consumer run every
        # REPLAY_CHUNK rows, so windows reach the detector in micro-batches rather than one by one.
        if self.config.speed > 0 or row_no % REPLAY_CHUNK == 0:
            await asyncio.sleep(0)

    def describe(self) -> dict[str, Any]:
        return {"type": "replay", "path": str(self.config.path), **self.stats.as_dict()}
