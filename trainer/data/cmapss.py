"""NASA C-MAPSS turbofan run-to-failure data in its original text format.

Files per subset `FD00x` (x = 1..4): `train_FD00x.txt`, `test_FD00x.txt`, `RUL_FD00x.txt`. Each data
row has 26 space-separated numbers: `unit`, `cycle`, `op_setting_1..3`, `sensor_1..21` (NASA's files end
lines with two spaces). Train units run to failure, so RUL at a row is `last cycle - cycle`; test units stop
early and the RUL file gives the RUL after their last cycle, so RUL at a row is
`RUL_file[unit] + last cycle - cycle`.

Every unit becomes one `Series` named `FD00x/train/<unit>` or `FD00x/test/<unit>`: `values` are the 21
sensors, `conditions` the 3 operational settings, `timestamps` the cycle numbers, `rul` the remaining useful
life. Which sensors carry information is decided from the training data
(`trainer.data.series.informative_channels`, shared by every reader), per operating regime when there are
several (regimes from `trainer.data.windows.RegimeScaler`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.series import Series

log = logging.getLogger(__name__)

SUBSETS = ("FD001", "FD002", "FD003", "FD004")
CONDITION_NAMES = [f"op_setting_{i}" for i in range(1, 4)]
SENSOR_NAMES = [f"sensor_{i}" for i in range(1, 22)]
COLUMNS = ["unit", "cycle", *CONDITION_NAMES, *SENSOR_NAMES]


class CmapssFormatError(ValueError):
    """A C-MAPSS file is missing or malformed; the message names the file and the row."""


@dataclass
class CmapssSubset:
    """One subset: run-to-failure training units and truncated test units with their true RUL."""

    subset: str
    train: list[Series]
    test: list[Series]


def read_table(path: Path) -> np.ndarray:
    """The numeric `[rows, 26]` table of one data file, with row-numbered errors for malformed lines."""
    if not path.is_file():
        raise CmapssFormatError(f"{path}: file not found")
    rows: list[list[float]] = []
    with path.open(encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != len(COLUMNS):
                raise CmapssFormatError(
                    f"{path}: row {line_no}: expected {len(COLUMNS)} columns, got {len(fields)}"
                )
            try:
                row = [float(field) for field in fields]
            except ValueError as exc:
                raise CmapssFormatError(f"{path}: row {line_no}: non-numeric value ({exc})") from exc
            if not np.all(np.isfinite(row)):
                raise CmapssFormatError(f"{path}: row {line_no}: NaN or infinite value")
            rows.append(row)
    if not rows:
        raise CmapssFormatError(f"{path}: no data rows")
    return np.asarray(rows, dtype=np.float64)


def read_rul(path: Path) -> np.ndarray:
    """The RUL file: one integer per test unit, in unit order."""
    if not path.is_file():
        raise CmapssFormatError(f"{path}: file not found")
    values: list[float] = []
    with path.open(encoding="ascii", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError as exc:
                raise CmapssFormatError(f"{path}: row {line_no}: not a number: {text!r}") from exc
            if not math.isfinite(value) or value < 0 or value != int(value):
                raise CmapssFormatError(f"{path}: row {line_no}: a remaining useful life must be a whole "
                                        f"number of cycles >= 0, got {text!r}")
            values.append(value)
    return np.asarray(values, dtype=np.float64)


def split_units(
    table: np.ndarray, path: Path, subset: str, part: str, final_rul: dict[int, float] | None = None
) -> list[Series]:
    """One `Series` per unit, cycles checked to increase by one; RUL from the unit's end (+ `final_rul`)."""
    series: list[Series] = []
    units = table[:, 0].astype(int)
    for unit in np.unique(units):
        rows = table[units == unit]
        cycles = rows[:, 1]
        if np.any(np.diff(cycles) != 1):
            bad = int(np.flatnonzero(np.diff(cycles) != 1)[0])
            raise CmapssFormatError(
                f"{path}: unit {unit}: cycles not consecutive at cycle {cycles[bad]:g} -> {cycles[bad + 1]:g}"
            )
        offset = 0.0
        if final_rul is not None:
            if unit not in final_rul:
                raise CmapssFormatError(f"{path}: unit {unit} has no RUL line in the RUL file")
            offset = final_rul[unit]
        rul = offset + cycles[-1] - cycles
        series.append(
            Series(
                name=f"{subset}/{part}/{unit}",
                values=rows[:, 5:],
                channels=list(SENSOR_NAMES),
                timestamps=cycles,
                rul=rul,
                conditions=rows[:, 2:5].astype(np.float32),
                condition_names=list(CONDITION_NAMES),
            )
        )
    return series


def load_subset(data_dir: str | Path, subset: str) -> CmapssSubset:
    """Read `train_`, `test_` and `RUL_` files of `subset` (e.g. "FD001") from `data_dir`."""
    if subset not in SUBSETS:
        raise CmapssFormatError(f"unknown C-MAPSS subset {subset!r}; expected one of {', '.join(SUBSETS)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise CmapssFormatError(f"{root}: C-MAPSS data directory not found")
    train_path, test_path, rul_path = (root / f"{kind}_{subset}.txt" for kind in ("train", "test", "RUL"))
    train = split_units(read_table(train_path), train_path, subset, "train")
    test_table = read_table(test_path)
    rul = read_rul(rul_path)
    test_units = np.unique(test_table[:, 0].astype(int))
    if len(rul) != len(test_units):
        raise CmapssFormatError(
            f"{rul_path}: {len(rul)} RUL values for {len(test_units)} test units in {test_path}"
        )
    final = {int(unit): float(value) for unit, value in zip(test_units, rul, strict=True)}
    test = split_units(test_table, test_path, subset, "test", final)
    log.info(
        "C-MAPSS %s: %d train units (%d rows), %d test units (%d rows)",
        subset,
        len(train),
        sum(map(len, train)),
        len(test),
        len(test_table),
    )
    return CmapssSubset(subset, train, test)


def unit_number(series: Series) -> int:
    """The engine unit number from a series name `FD00x/<part>/<unit>`."""
    return int(series.name.rsplit("/", 1)[1])
