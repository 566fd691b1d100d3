"""Generic CSV reader for a user's own sensor data (`[data] source = "csv"`, options in `[data.csv]`).

Options (`CsvOptions.from_options`, strict: unknown keys are errors naming `data -> csv -> KEY`):
``paths`` (list of files), ``timestamp_column``, ``timestamp_format``, ``channels`` (list of numeric
columns), optional ``label_column`` (0/1), ``delimiter`` (default ``,``), ``max_gap`` (default 5 samples),
``sample_period_s`` (default: the median spacing of the timestamps).

Timestamps must increase strictly. ``timestamp_format`` takes the agent's names
(`edge_agent.sources.lineformats.TIMESTAMP_FORMATS`): ``unix_s``, ``unix_ms`` or ``iso8601`` (without a zone
it is read as UTC). Not set, a number is Unix seconds and text is ISO 8601. A number beyond the year 9999 as
seconds (``1772431200000``) is refused as milliseconds read as seconds, naming what to set.

Series names: a file's stem (``run04``); where stems collide (``day1/compressor.csv``,
``day2/compressor.csv``), the path relative to the colliding files' common folder, without the extension
(``day1/compressor``).

Gap and NaN policy (one rule for both, in samples of ``sample_period_s``):

- An empty cell or ``nan``/``NaN``/``NA`` in a channel is a missing value. A time step longer than one sample
  period means the samples in between are missing (missing rows are inserted on the sample grid).
- A run of at most ``max_gap`` missing samples (per channel) is filled by linear interpolation between the
  samples on either side.
- A longer run, or a run at the start or end of a file (nothing to interpolate from), splits the file: those
  rows are dropped and the file becomes several `Series` segments named ``stem#0``, ``stem#1``, ... so no
  window spans a long gap. A segment is kept whatever its length; windowing drops those shorter than a window.
- Inserted rows get the label of the larger neighbouring label (a gap inside an anomaly stays anomalous).

Anything else that is not a number (``12,5``, ``ok``) is an error naming the file, line, column and value.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.compat import parse_iso8601
from edge_agent.configtools import ConfigError, Section, unknown_key_error
from edge_agent.sources.lineformats import (
    MAX_TIMESTAMP_S,
    SECONDS_AS_MS,
    TIMESTAMP_FORMATS,
    other_delimiter,
)
from trainer.data.series import Series

log = logging.getLogger(__name__)

MISSING = {"", "nan", "na", "n/a", "null", "none"}
# A file cut at long gaps becomes series `name#0`, `name#1`, ...; a series name ending so is one of those.
SEGMENT_SUFFIX = re.compile(r"#\d+$")
STEP_TOLERANCE = 0.5  # a spacing over 1.5 sample periods means missing samples


class CsvFormatError(ValueError):
    """A CSV file cannot be read as configured; the message names the file, line, column and value."""


FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class CsvOptions:
    """How to read a user's CSV files (see the module docstring)."""

    timestamp_column: str
    channels: tuple[str, ...]
    label_column: str | None = None
    delimiter: str = ","
    max_gap: int = 5
    sample_period_s: float | None = None
    paths: tuple[str, ...] = ()
    timestamp_format: str | None = None  # None: numbers are unix_s, text is iso8601

    @classmethod
    def from_options(cls, raw: Mapping[str, Any], path: str = "data -> csv") -> CsvOptions:
        """Parse the `[data.csv]` table strictly (errors are `ConfigError` naming the key path). Unknown keys
        are refused first, so a misspelt required key is named as such, not reported as missing."""
        section = Section(dict(raw), path)
        known = [f.name for f in fields(cls)]
        unknown = [key for key in section if key not in known]
        if unknown:
            raise unknown_key_error(section, unknown, known, list_known=True)
        options = cls(
            timestamp_column=section.get("timestamp_column", str),
            channels=section.str_list("channels"),
            label_column=section.optional("label_column", str),
            delimiter=section.get("delimiter", str, ","),
            max_gap=section.integer("max_gap", 5, minimum=0),
            sample_period_s=section.number("sample_period_s", None, minimum=0, exclusive_minimum=True)
            if "sample_period_s" in section
            else None,
            paths=section.str_list("paths", ()),
            timestamp_format=section.choice("timestamp_format", TIMESTAMP_FORMATS)
            if "timestamp_format" in section
            else None,
        )
        section.finish()
        if len(options.delimiter) != 1:
            raise ConfigError(section.key_path("delimiter"), "must be one character", options.delimiter)
        if not options.channels:
            raise ConfigError(section.key_path("channels"), "must name at least one column", [])
        repeated = sorted({c for c in options.channels if options.channels.count(c) > 1})
        if repeated:
            raise ConfigError(section.key_path("channels"), f"names {repeated} more than once",
                              list(options.channels))
        for key, column in (("timestamp_column", options.timestamp_column),
                            ("label_column", options.label_column)):
            if column is not None and column in options.channels:
                raise ConfigError(section.key_path("channels"), f"holds the {key.replace('_', ' ')} "
                                  f"{column!r}: it would become a model input", list(options.channels))
        return options


def _parse_time(text: str, path: Path, line: int, column: str, fmt: str | None = None) -> float:
    """A timestamp cell as Unix seconds (UTC) by `fmt` (`CsvOptions.timestamp_format`; None: a number is
    unix_s, text is iso8601). Errors name the file, line, column and value."""
    where = f"{path}: line {line}, column {column!r}"
    if fmt != "iso8601":
        try:
            value = float(text)
        except ValueError as exc:
            if fmt is not None:
                raise CsvFormatError(f"{where}: not a number ({fmt} timestamp): {text!r}") from exc
        else:
            if not math.isfinite(value):
                raise CsvFormatError(f"{where}: not a finite timestamp: {text!r}")
            return _epoch_seconds(value, text, where, fmt or "unix_s")
    try:
        stamp = parse_iso8601(text)
    except ValueError as exc:
        expected = "ISO 8601" if fmt == "iso8601" else "Unix seconds or ISO 8601"
        raise CsvFormatError(f"{where}: not a timestamp ({expected}): {text!r}") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _epoch_seconds(value: float, text: str, where: str, fmt: str) -> float:
    """An epoch number in `fmt` (unix_s or unix_ms) as seconds. A value past the year 9999 in its unit (the
    agent's bound, `MAX_TIMESTAMP_S`) is refused: milliseconds read as seconds would make every sample
    period 1000 times too long."""
    seconds = value / 1000.0 if fmt == "unix_ms" else value
    if seconds <= MAX_TIMESTAMP_S:
        return seconds
    if fmt == "unix_s" and value / 1000.0 <= MAX_TIMESTAMP_S:
        hint = (f"it looks like Unix milliseconds ({_utc(value / 1000.0)}): set data -> csv -> "
                'timestamp_format = "unix_ms"')
    else:
        hint = "a finer unit (microseconds?): write Unix seconds or milliseconds"
    unit = "Unix milliseconds" if fmt == "unix_ms" else "Unix seconds"
    raise CsvFormatError(f"{where}: timestamp {text!r} is past the year 9999 as {unit}; {hint}")


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _parse_value(text: str, path: Path, line: int, column: str) -> float:
    if text.strip().lower() in MISSING:
        return math.nan
    try:
        value = float(text)
    except ValueError as exc:
        hint = ""
        if re.fullmatch(r"\s*[-+]?\d*,\d+\s*", text):
            hint = (" (a decimal comma? write numbers with a decimal point, e.g. "
                    f"{text.strip().replace(',', '.')!r})")
        raise CsvFormatError(f"{path}: line {line}, column {column!r}: not a number: {text!r}{hint}") from exc
    if not abs(value) <= FLOAT32_MAX:  # inf, or a value the float32 model inputs cannot hold
        raise CsvFormatError(f"{path}: line {line}, column {column!r}: value {text!r} is out of range "
                             "(a glitch or sentinel value? mark missing samples empty or NaN)")
    return value


@contextmanager
def table_rows(path: Path, delimiter: str, wanted: Sequence[str], error: type[ValueError],
               delimiter_key: str = "delimiter",
               ) -> Iterator[tuple[dict[str, int], Iterator[tuple[int, list[str]]]]]:
    """Open a delimited text file with a header line: `(column index of each wanted name, (line number,
    cells) of every non-blank row)`. A missing column or a row with the wrong field count raises `error`
    naming the file and line; the caller parses the cells. A header read as one column that holds another
    delimiter says so, naming the option `delimiter_key` to set."""
    with path.open("rb") as handle:
        lines = _decoded(handle, path, error)
        reader = csv.reader(lines, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header:
            raise error(f"{path}: empty file (no header line)")
        missing = [name for name in wanted if name not in header]
        if missing:
            raise error(f"{path}: line 1: missing column(s) {missing}; the header has {header}"
                        + _delimiter_hint(header, delimiter, delimiter_key))

        def records() -> Iterator[tuple[int, list[str]]]:
            for line, cells in enumerate(reader, start=2):
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    raise error(f"{path}: line {line}: {len(cells)} fields, the header has {len(header)}")
                yield line, cells

        yield {name: header.index(name) for name in wanted}, records()


def _delimiter_hint(header: list[str], delimiter: str, key: str) -> str:
    """For a header that came out as one column holding another delimiter: what to set."""
    other = other_delimiter(header[:1], delimiter) if len(header) == 1 else None
    if other is None:
        return ""
    return (f" (one column that holds {other!r}: the file looks {other!r}-separated, not "
            f"{delimiter!r}-separated; set {key} = {json.dumps(other)})")


def _decoded(handle: Any, path: Path, error: type[ValueError]) -> Iterator[str]:
    """The lines of a file opened in binary, decoded as UTF-8; a leading byte order mark (Excel's "CSV
    UTF-8") is dropped, and a line that is not UTF-8 (a Latin-1 export, say) is an `error` naming it."""
    for number, raw in enumerate(handle, start=1):
        data = raw[3:] if number == 1 and raw.startswith(b"\xef\xbb\xbf") else raw
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{path}: line {number}: not UTF-8 text (byte {data[exc.start:exc.start + 1]!r}); "
                        "save the file as UTF-8") from exc


def _read_table(path: Path, options: CsvOptions,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[int]]:
    """Times, channel values, labels and the file line of each row."""
    if not path.is_file():
        where = "" if path.is_absolute() else (f" (relative paths in a training config are taken from the "
                                               f"working directory, here {Path.cwd()})")
        raise CsvFormatError(f"{path}: no such CSV file{where}")
    wanted = [options.timestamp_column, *options.channels]
    if options.label_column is not None:
        wanted.append(options.label_column)
    times: list[float] = []
    line_numbers: list[int] = []
    rows: list[list[float]] = []
    labels: list[int] = []
    with table_rows(path, options.delimiter, wanted, CsvFormatError, "data -> csv -> delimiter") as (
            index, records):
        for line, cells in records:
            ts = _parse_time(cells[index[options.timestamp_column]], path, line, options.timestamp_column,
                             options.timestamp_format)
            if times and ts <= times[-1]:
                raise CsvFormatError(
                    f"{path}: line {line}, column {options.timestamp_column!r}: timestamp "
                    f"{cells[index[options.timestamp_column]]!r} does not increase"
                )
            times.append(ts)
            line_numbers.append(line)
            rows.append([_parse_value(cells[index[c]], path, line, c) for c in options.channels])
            if options.label_column is not None:
                text = cells[index[options.label_column]].strip()
                try:
                    label = float(text)
                except ValueError:
                    label = math.nan
                if label not in (0.0, 1.0):
                    raise CsvFormatError(
                        f"{path}: line {line}, column {options.label_column!r}: expected a 0/1 "
                        f"label, got {text!r}"
                    )
                labels.append(int(label))
    if not rows:
        raise CsvFormatError(f"{path}: no data rows")
    if options.timestamp_format == "unix_ms" and SECONDS_AS_MS[0] <= times[0] * 1000.0 < SECONDS_AS_MS[1]:
        # as the agent warns: most likely seconds written under unix_ms (a millisecond uptime counter looks
        # the same, so it is not an error)
        log.warning("%s: line %d: timestamp %.15g read as unix_ms is %s: if the file holds Unix seconds, set "
                    'data -> csv -> timestamp_format = "unix_s"', path, line_numbers[0], times[0] * 1000.0,
                    _utc(times[0]))
    label_array = np.asarray(labels, dtype=np.int8) if options.label_column is not None else None
    return np.asarray(times), np.asarray(rows, dtype=np.float64), label_array, line_numbers


def _on_grid(
    times: np.ndarray, values: np.ndarray, labels: np.ndarray | None, period: float, max_gap: int, *,
    lines: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Insert NaN rows for samples missing from the time grid. A gap longer than `max_gap` samples gets only
    `max_gap + 1` placeholder rows (enough to be split off later) so a gap of days is not materialised.
    Returns times, values, labels and the file line of each grid row (0 for an inserted row)."""
    increments = np.rint(np.diff(times) / period).astype(np.int64)
    if np.any(increments < 1):
        bad = int(np.flatnonzero(increments < 1)[0]) + 1
        raise CsvFormatError(f"line {lines[bad]}: timestamp less than half a sample period ({period:g} s) "
                             "after the previous row's (set data -> csv -> sample_period_s if the median "
                             "spacing is not the sample period)")
    steps = np.concatenate([[0], np.cumsum(np.minimum(increments, max_gap + 2))])
    total = int(steps[-1]) + 1
    present = np.zeros(total, dtype=bool)
    present[steps] = True
    grid_values = np.full((total, values.shape[1]), np.nan)
    grid_values[steps] = values
    index = np.arange(total)
    previous = np.maximum.accumulate(np.where(present, index, 0))  # last present row at or before each row
    following = np.minimum.accumulate(np.where(present, index, total)[::-1])[::-1]  # first at or after
    grid_times = np.empty(total)
    grid_times[steps] = times
    grid_times = grid_times[previous] + period * (index - previous)
    grid_labels = None
    if labels is not None:
        grid_labels = np.zeros(total, dtype=np.int8)
        grid_labels[steps] = labels
        grid_labels = np.maximum(grid_labels[previous], grid_labels[following])
    grid_lines = np.zeros(total, dtype=np.int64)
    grid_lines[steps] = lines
    return grid_times, grid_values, grid_labels, grid_lines


def _fill_short_gaps(values: np.ndarray, max_gap: int) -> np.ndarray:
    """Interpolate interior NaN runs of at most `max_gap` per channel; returns which rows stay unusable."""
    unusable = np.zeros(len(values), dtype=bool)
    for c in range(values.shape[1]):
        column = values[:, c]
        missing = np.isnan(column)
        if not missing.any():
            continue
        edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
        for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            interior = start > 0 and stop < len(column)
            if interior and stop - start <= max_gap:
                left, right = column[start - 1], column[stop]
                fraction = np.arange(1, stop - start + 1) / (stop - start + 1)
                column[start:stop] = left + (right - left) * fraction
            else:
                unusable[start:stop] = True
    return unusable


def _missing_periods(times: np.ndarray, unusable: np.ndarray, period: float) -> int:
    """How many sample periods the unusable runs of grid rows span. A long time gap has only a few
    placeholder rows on the grid (`_on_grid`), so this is read from the times around each run."""
    edges = np.diff(np.concatenate([[0], unusable.astype(np.int8), [0]]))
    total = 0
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        before = times[start - 1] if start > 0 else times[start] - period
        after = times[stop] if stop < len(times) else times[stop - 1] + period
        total += round(float((after - before) / period)) - 1
    return total


@dataclass(frozen=True)
class CsvRecording:
    """One CSV file as read: its gap-free segments and, per segment, the file line of each row (0 for a row
    inserted on the time grid), so that a row of the data can be named by file and line."""

    path: Path
    segments: list[Series]
    lines: list[np.ndarray]


def read_csv_file(path: str | Path, options: CsvOptions, name: str | None = None) -> list[Series]:
    """One CSV file as one or more gap-free `Series` segments named `name` (default: the file's stem), see
    the module docstring."""
    return read_recording(path, options, name).segments


def read_recording(path: str | Path, options: CsvOptions, name: str | None = None) -> CsvRecording:
    """`read_csv_file` with the file line of every row."""
    path = Path(path)
    name = path.stem if name is None else name
    times, values, labels, lines = _read_table(path, options)
    period = options.sample_period_s
    if period is None:
        period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    try:
        times, values, labels, grid_lines = _on_grid(times, values, labels, period, options.max_gap,
                                                     lines=lines)
    except CsvFormatError as exc:
        raise CsvFormatError(f"{path}: {exc}") from exc
    unusable = _fill_short_gaps(values, options.max_gap)
    edges = np.diff(np.concatenate([[1], unusable.astype(np.int8), [1]]))
    starts, stops = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)
    if not len(starts):
        raise CsvFormatError(
            f"{path}: no usable rows (every row lies in a gap longer than max_gap={options.max_gap})"
        )
    if int(unusable.sum()):
        gaps = np.flatnonzero(np.diff(np.concatenate([[0], unusable.astype(np.int8), [0]])) == 1)
        log.warning(
            "%s: %d gap(s) longer than %d samples (missing or NaN), %d sample periods in all, left out; "
            "%d segment(s)",
            path,
            len(gaps),
            options.max_gap,
            _missing_periods(times, unusable, period),
            len(starts),
        )
    single = len(starts) == 1
    segments = [
        Series(
            name=name if single else f"{name}#{i}",
            values=values[start:stop].astype(np.float32),
            channels=list(options.channels),
            timestamps=times[start:stop],
            labels=None if labels is None else labels[start:stop],
        )
        for i, (start, stop) in enumerate(zip(starts, stops, strict=True))
    ]
    return CsvRecording(path, segments, [grid_lines[start:stop] for start, stop in zip(starts, stops,
                                                                                        strict=True)])


def series_names(paths: Sequence[str | Path]) -> list[str]:
    """A unique series name per file: its stem, or, for files whose stems collide, the path relative to
    their common folder without the extension, '/'-separated (`day1/compressor`; with the extension when
    that still collides). A name that would end like a segment's (`pump#2`) keeps the file's extension
    (`pump#2.csv`). A file listed twice is an error: it would be read, split and counted twice."""
    # abspath: normalises `..` without following symlinks (resolve() would name files by their link targets)
    absolute = [Path(os.path.abspath(p)) for p in paths]  # noqa: PTH100
    seen: dict[Path, str | Path] = {}
    for given, full in zip(paths, absolute, strict=True):
        if full in seen:
            raise CsvFormatError(f"{given}: listed twice in data -> csv -> paths (also as {seen[full]})")
        seen[full] = given
    names = [p.stem for p in absolute]
    for stem in sorted(set(names)):
        group = [i for i, p in enumerate(absolute) if p.stem == stem]
        if len(group) < 2:
            continue
        parent = Path(os.path.commonpath([absolute[i].parent for i in group]))
        relative = [absolute[i].relative_to(parent) for i in group]
        stripped = [r.with_suffix("").as_posix() for r in relative]
        unique = len(set(stripped)) == len(stripped)
        for i, short, whole in zip(group, stripped, relative, strict=True):
            names[i] = short if unique else whole.as_posix()
    # `pump#2.csv` keeps its extension, so its name cannot pass for a segment of `pump.csv` (SEGMENT_SUFFIX)
    names = [f"{name}{absolute[i].suffix or '.'}" if SEGMENT_SUFFIX.search(name) else name
             for i, name in enumerate(names)]
    seen_name: dict[str, str | Path] = {}
    for given, name in zip(paths, names, strict=True):
        if name in seen_name:  # only a file named like another's kept extension (`x/pump#2.csv.csv`)
            raise CsvFormatError(f"{given}: its series name {name!r} is also that of {seen_name[name]}; "
                                 "rename one of the files")
        seen_name[name] = given
    return names


def read_recordings(paths: Sequence[str | Path], options: CsvOptions) -> list[CsvRecording]:
    """Each file's recording, in file order, under unique series names (`series_names`)."""
    if not paths:
        raise CsvFormatError("no CSV files given (data -> csv -> paths is empty)")
    names = series_names(paths)
    renamed = [f"{path} as {name}" for path, name in zip(paths, names, strict=True)
               if name != Path(path).stem]
    if renamed:
        log.info("files named by their path (same name in different folders) or with their extension (a "
                 "name ending like a segment's, #N): %s", ", ".join(renamed))
    # the names are unique and none ends like a segment's, so segment names are unique too
    return [read_recording(path, options, name) for path, name in zip(paths, names, strict=True)]


def read_csv_files(paths: Sequence[str | Path], options: CsvOptions) -> list[list[Series]]:
    """Each file's segments, in file order, under unique series names (`series_names`)."""
    return [recording.segments for recording in read_recordings(paths, options)]
