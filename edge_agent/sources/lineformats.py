"""Text line formats shared by the serial source and the replay source: CSV, JSON lines, `key=value`.

A `LineParser` turns one line into `(timestamp or None, {field: value})` or raises `LineFormatError` with a
message that says what is wrong with that line. Timestamps come from a named field when configured, else the
caller uses the arrival time.

    csv (header)   ts,flow,pressure          the first line that names every configured field sets the order
                   1700000000.1,12.5,3.1
    csv (columns)  columns = ["ts", "flow", "pressure"]: positional, no header expected (a line naming the
                   configured fields, as a device may print at power-up, is skipped as a header)
    json           {"ts": 1700000000.1, "flow": 12.5, "pressure": 3.1}
    kv             ts=1700000000.1 flow=12.5 pressure=3.1     (separated by spaces, commas or semicolons)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timezone

from edge_agent.compat import parse_iso8601
from edge_agent.configtools import ConfigError, Section
from edge_agent.logtools import RateLimitedLog

LINE_FORMATS = ("csv", "json", "kv")
TIMESTAMP_FORMATS = ("unix_s", "unix_ms", "iso8601")

_KV_SPLIT = re.compile(r"[\s,;]+")


class LineFormatError(ValueError):
    """One line could not be parsed; the message names the problem (field, value, expected count)."""


@dataclass(frozen=True)
class LineFormat:
    """How a source's lines are laid out.

    `fields` maps the output field name (what assets refer to) to the key in the line (CSV header name or
    column name, JSON key, `key=value` key). `columns` set means CSV without a header.
    """

    kind: str = "csv"
    fields: Mapping[str, str] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    delimiter: str = ","
    timestamp_field: str | None = None
    timestamp_format: str = "unix_s"

    def field_names(self) -> tuple[str, ...]:
        """Names of the fields this format produces (what an asset's channel may refer to)."""
        if self.fields:
            return tuple(self.fields)
        return tuple(c for c in self.columns if c != self.timestamp_field)


# Unix seconds a reading may carry: 1970-01-01 .. 9999-12-31 (what an RFC 3339 alert time can show). A
# device sending milliseconds under `timestamp_format = "unix_s"` (1.7e12) is rejected here, as invalid.
MIN_TIMESTAMP_S = 0.0
MAX_TIMESTAMP_S = 253_402_300_799.0
# unix_ms values from 1e9 to 1e11 read as 1970-01-12 .. 1973-03-03, and as seconds as 2001 .. 5138: most
# likely a device sending seconds. Still accepted (a millisecond uptime counter looks the same), with a
# warning.
SECONDS_AS_MS = (1e9, 1e11)

# Delimiters a CSV file may use instead of the configured one (the replay source's and the trainer's hints)
OTHER_DELIMITERS = (";", "\t", ",", "|")


def other_delimiter(lines: Sequence[str], delimiter: str, wanted: Sequence[str] = ()) -> str | None:
    """Another common delimiter than `delimiter` that splits the first of `lines` (a header) into several
    columns, `wanted` among them, and the second (a data row, when given) into as many: a one-column file
    named "Pressure, bar" is no two-column CSV. None when no delimiter does."""
    for other in OTHER_DELIMITERS:
        if other == delimiter:
            continue
        rows = list(csv.reader(lines, delimiter=other))
        columns = [name.strip() for name in rows[0]] if rows else []
        agrees = len(rows) < 2 or len(rows[1]) == len(columns)
        if len(columns) > 1 and agrees and all(name in columns for name in wanted):
            return other
    return None
log = logging.getLogger(__name__)
_seconds_as_ms_logs: dict[str, RateLimitedLog] = {}  # per source: one line an hour each


def parse_timestamp(raw: object, fmt: str, source: str = "") -> float:
    """A timestamp value from a line of `source` as Unix seconds (UTC). Naive ISO 8601 times are taken
    as UTC."""
    if fmt == "iso8601":
        if not isinstance(raw, str):
            raise LineFormatError(f"timestamp {raw!r} is not an ISO 8601 string")
        try:
            parsed = parse_iso8601(raw)
        except ValueError as exc:
            raise LineFormatError(f"timestamp {raw!r} is not ISO 8601") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            stamp = parsed.timestamp()
        except (OverflowError, ValueError) as exc:  # year 1 with an offset east of UTC, or 9999 west
            raise LineFormatError(f"timestamp {raw!r} is outside 1970..9999") from exc
        if not MIN_TIMESTAMP_S <= stamp <= MAX_TIMESTAMP_S:  # as for Unix times: alerts must render it
            raise LineFormatError(f"timestamp {raw!r} is outside 1970..9999")
        return stamp
    value = to_number(raw, "timestamp")
    seconds = value / 1000.0 if fmt == "unix_ms" else value
    if fmt == "unix_ms" and SECONDS_AS_MS[0] <= value < SECONDS_AS_MS[1]:
        limiter = _seconds_as_ms_logs.setdefault(source, RateLimitedLog(log, interval_s=3600.0))
        limiter.warning("source %s: timestamp %r read as unix_ms is in %s: if the device sends seconds, set "
                        "timestamp_format = \"unix_s\"", source or "?", raw,
                        time.strftime("%Y-%m-%d", time.gmtime(seconds)))
    if not MIN_TIMESTAMP_S <= seconds <= MAX_TIMESTAMP_S:
        hint = " (milliseconds? set timestamp_format = \"unix_ms\")" if seconds > MAX_TIMESTAMP_S else ""
        raise LineFormatError(f"timestamp {raw!r} ({fmt}) is outside 1970..9999{hint}")
    return seconds


def to_number(raw: object, name: str) -> float:
    """A finite float from a JSON number or a numeric string; anything else is a `LineFormatError`."""
    if isinstance(raw, bool):
        raise LineFormatError(f"field {name!r}: expected a number, got {raw!r}")
    if isinstance(raw, int | float):
        try:
            value = float(raw)
        except OverflowError as exc:  # an int beyond the float range, e.g. 10**400
            raise LineFormatError(f"field {name!r}: {str(raw)[:40]!r} is out of range") from exc
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError as exc:
            raise LineFormatError(f"field {name!r}: {raw[:60]!r} is not a number") from exc
    else:
        raise LineFormatError(f"field {name!r}: expected a number, got {raw!r}")
    if not math.isfinite(value):
        raise LineFormatError(f"field {name!r}: {raw!r} is not finite")
    return value


class LineParser:
    """Parses lines of one `LineFormat`. Stateful only for CSV with a header (the column order)."""

    def __init__(self, fmt: LineFormat, source: str = "") -> None:
        self.format = fmt
        self.source = source  # named in warnings
        self._columns: tuple[str, ...] | None = fmt.columns or None
        self._wanted = set(fmt.fields.values()) | ({fmt.timestamp_field} if fmt.timestamp_field else set())

    def reset(self) -> None:
        """Forget a learned CSV header (after a device reconnect the header may come again or change)."""
        self._columns = self.format.columns or None

    def parse(self, line: str) -> tuple[float | None, dict[str, float]] | None:
        """`(ts or None, values)` for a data line, `None` for a blank or header line."""
        text = line.strip().lstrip("\ufeff")
        if not text:
            return None
        if self.format.kind == "json":
            return self._from_mapping(self._json(text))
        if self.format.kind == "kv":
            return self._from_mapping(self._kv(text))
        return self._csv(text)

    def _json(self, text: str) -> Mapping[str, object]:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise LineFormatError(f"not valid JSON: {text[:60]!r}") from exc
        if not isinstance(obj, dict):
            raise LineFormatError(f"expected a JSON object, got {type(obj).__name__}")
        return obj

    @staticmethod
    def _kv(text: str) -> Mapping[str, object]:
        pairs: dict[str, object] = {}
        for token in _KV_SPLIT.split(text):
            if not token:
                continue
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise LineFormatError(f"{token[:40]!r} is not key=value")
            pairs[key] = value
        return pairs

    def _csv(self, text: str) -> tuple[float | None, dict[str, float]] | None:
        cells = [cell.strip() for cell in text.split(self.format.delimiter)]
        if self._columns is None or (not self.format.columns and self._wanted <= set(cells)):
            if self._wanted <= set(cells):
                self._columns = tuple(cells)
                return None
            raise LineFormatError(f"no CSV header naming {sorted(self._wanted)} seen yet")
        if self.format.columns and self._wanted <= set(cells):
            return None  # a header line (a device that prints one at power-up) although `columns` is set
        if len(cells) != len(self._columns):
            raise LineFormatError(f"expected {len(self._columns)} fields, got {len(cells)}")
        return self._from_mapping(dict(zip(self._columns, cells, strict=True)))

    def _from_mapping(self, row: Mapping[str, object]) -> tuple[float | None, dict[str, float]]:
        fmt = self.format
        ts: float | None = None
        if fmt.timestamp_field is not None:
            if fmt.timestamp_field not in row:
                raise LineFormatError(f"timestamp field {fmt.timestamp_field!r} missing")
            ts = parse_timestamp(row[fmt.timestamp_field], fmt.timestamp_format, self.source)
        mapping = fmt.fields or {name: name for name in fmt.field_names()}
        values: dict[str, float] = {}
        for name, key in mapping.items():
            if key not in row:
                raise LineFormatError(f"field {key!r} missing")
            values[name] = to_number(row[key], key)
        return ts, values


def field_map(names: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """A config's `fields` as `{output name: key in the line}` (a list means the names are the keys)."""
    if isinstance(names, Mapping):
        return dict(names)
    return {name: name for name in names}


def line_format_from_section(section: Section, *, require_fields: bool = True) -> LineFormat:
    """Read `format`, `fields`, `columns`, `delimiter`, `timestamp_field`, `timestamp_format` of a source."""
    kind = section.choice("format", LINE_FORMATS, "csv")
    columns = section.str_list("columns", ())
    raw_fields = section.raw("fields", None)
    fields: dict[str, str] = {}
    if raw_fields is not None:
        if isinstance(raw_fields, list):
            names = section.str_list("fields")
            fields = field_map(names)
        elif isinstance(raw_fields, dict):
            table = section.section("fields")
            fields = {name: table.get(name, str) for name in list(table.keys())}
            table.finish()
        else:
            raise ConfigError(section.key_path("fields"), "expected a list of names or a table "
                              "{field = \"key in the line\"}", raw_fields)
        if not fields:
            raise ConfigError(section.key_path("fields"), "must name at least one field", raw_fields)
    timestamp_field = section.optional("timestamp_field", str)
    timestamp_format = section.choice("timestamp_format", TIMESTAMP_FORMATS, "unix_s")
    delimiter = section.get("delimiter", str, ",")
    if len(delimiter) != 1:
        raise ConfigError(section.key_path("delimiter"), "must be a single character", delimiter)
    if columns and kind != "csv":
        raise ConfigError(section.key_path("columns"), f"only applies to format = \"csv\", not {kind!r}",
                          list(columns))
    if len(set(columns)) != len(columns):
        raise ConfigError(section.key_path("columns"), "names a column twice", list(columns))
    if not fields and not columns and require_fields:
        raise ConfigError(section.key_path("fields"), "is required (which fields of each line feed assets) "
                          "unless format = \"csv\" with a `columns` list")
    if columns:
        missing = [key for key in fields.values() if key not in columns]
        if timestamp_field is not None and timestamp_field not in columns:
            missing.append(timestamp_field)
        if missing:
            raise ConfigError(section.key_path("columns"), f"does not contain {', '.join(missing)}",
                              list(columns))
    return LineFormat(kind=kind, fields=fields, columns=columns, delimiter=delimiter,
                      timestamp_field=timestamp_field, timestamp_format=timestamp_format)
