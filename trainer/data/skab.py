"""SKAB (Skoltech Anomaly Benchmark v0.9) reader.

Layout (``DIR`` is the ``skab`` folder or its ``data`` sub-folder): ``anomaly-free/anomaly-free.csv`` (normal
only) and 34 labelled experiments ``valve1/0..15.csv``, ``valve2/0..3.csv``, ``other/1..14.csv``. Files are
``;``-separated with a header: ``datetime`` (``YYYY-MM-DD hh:mm:ss``, read as UTC), eight sensor channels,
then
``anomaly`` and ``changepoint`` (0/1; absent in the anomaly-free file). Each file becomes one `Series` named
``folder/stem`` (``valve1/0``) with `labels` from the ``anomaly`` column (None for the anomaly-free file).
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from trainer.data.csv_reader import table_rows
from trainer.data.series import Series

log = logging.getLogger(__name__)

CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
LABEL_COLUMNS = ("anomaly", "changepoint")
LABELLED_FOLDERS = ("valve1", "valve2", "other")
ANOMALY_FREE = Path("anomaly-free") / "anomaly-free.csv"
EXPECTED_LABELLED_FILES = 34


class SkabFormatError(ValueError):
    """A SKAB file is missing or malformed; the message names the file, line and column."""


def data_root(data_dir: str | Path) -> Path:
    """The folder holding ``valve1/``, ``valve2/``, ``other/`` (the ``skab`` folder or ``skab/data``)."""
    base = Path(data_dir)
    for candidate in (base, base / "data"):
        if all((candidate / folder).is_dir() for folder in LABELLED_FOLDERS):
            return candidate
    raise SkabFormatError(
        f"SKAB data dir {base}: no {', '.join(f + '/' for f in LABELLED_FOLDERS)} folders in it or in "
        f"{base / 'data'}"
    )


def labelled_files(data_dir: str | Path) -> list[Path]:
    """The labelled experiment files in a stable order: folder, then file number."""
    root = data_root(data_dir)
    files: list[Path] = []
    for folder in LABELLED_FOLDERS:
        found = sorted(
            (root / folder).glob("*.csv"), key=lambda p: (not p.stem.isdigit(), _number(p.stem), p.stem)
        )
        files.extend(found)
    if len(files) != EXPECTED_LABELLED_FILES:
        log.warning(
            "SKAB data dir %s holds %d labelled files, the benchmark has %d",
            root,
            len(files),
            EXPECTED_LABELLED_FILES,
        )
    return files


def _number(stem: str) -> int:
    return int(stem) if stem.isdigit() else 0


def series_name(path: Path) -> str:
    """``valve1/0`` for ``.../valve1/0.csv``."""
    return f"{path.parent.name}/{path.stem}"


def _parse_time(text: str, path: Path, line: int) -> float:
    try:
        stamp = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise SkabFormatError(
            f"{path}: line {line}, column 'datetime': not a 'YYYY-MM-DD hh:mm:ss' time: {text!r}"
        ) from exc
    return stamp.replace(tzinfo=timezone.utc).timestamp()


def _parse_number(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise SkabFormatError(f"{path}: line {line}, column {column!r}: not a number: {text!r}") from exc
    if not math.isfinite(value):
        raise SkabFormatError(f"{path}: line {line}, column {column!r}: non-finite value {text!r}")
    return value


def read_skab_file(path: str | Path, labelled: bool = True) -> Series:
    """One SKAB csv as a `Series` (channels in the order of `CHANNELS`)."""
    path = Path(path)
    if not path.is_file():
        raise SkabFormatError(f"{path}: no such SKAB file")
    expected = ["datetime", *CHANNELS, *(LABEL_COLUMNS if labelled else ())]
    times: list[float] = []
    rows: list[list[float]] = []
    labels: list[int] = []
    with table_rows(path, ";", expected, SkabFormatError) as (index, records):
        for line, cells in records:
            stamp = _parse_time(cells[index["datetime"]], path, line)
            if times and stamp <= times[-1]:  # the protocol's "first 400 rows" must be the earliest
                raise SkabFormatError(f"{path}: line {line}, column 'datetime': "
                                      f"{cells[index['datetime']]!r} does not increase")
            times.append(stamp)
            rows.append([_parse_number(cells[index[c]], path, line, c) for c in CHANNELS])
            if labelled:
                label = _parse_number(cells[index["anomaly"]], path, line, "anomaly")
                if label not in (0.0, 1.0):
                    raise SkabFormatError(
                        f"{path}: line {line}, column 'anomaly': expected 0 or 1, got {label:g}"
                    )
                labels.append(int(label))
    if not rows:
        raise SkabFormatError(f"{path}: no data rows")
    return Series(
        name=series_name(path),
        values=np.asarray(rows, dtype=np.float32),
        channels=list(CHANNELS),
        timestamps=np.asarray(times, dtype=np.float64),
        labels=np.asarray(labels, dtype=np.int8) if labelled else None,
    )


def load_skab(data_dir: str | Path, limit: int | None = None) -> tuple[list[Series], Series | None]:
    """The labelled experiments (the first `limit` of them when given) and the anomaly-free run (None when
    the file is absent)."""
    files = labelled_files(data_dir)
    if limit is not None:
        files = files[:limit]
    experiments = [read_skab_file(p) for p in files]
    free_path = data_root(data_dir) / ANOMALY_FREE
    free = read_skab_file(free_path, labelled=False) if free_path.is_file() else None
    return experiments, free
