"""C-MAPSS reader on small files written in NASA's format: columns, RUL, errors, constant channels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from trainer.data.cmapss import CmapssFormatError, load_subset, unit_number
from trainer.data.series import informative_channels


def _row(
    unit: int, cycle: int, sensors: list[float], settings: tuple[float, float, float] = (0.0, 0.0, 100.0)
) -> str:
    # NASA's lines end with two spaces.
    return " ".join(f"{v:g}" for v in (unit, cycle, *settings, *sensors)) + "  \n"


def _sensors(rng: np.random.Generator) -> list[float]:
    values = list(rng.normal(500.0, 5.0, 21))
    values[0] = 518.67  # constant channel
    values[5] = 21.61  # near-constant handled below
    return values


def write_subset(
    root: Path, train_lengths: list[int], test_lengths: list[int], rul: list[int], subset: str = "FD001"
) -> None:
    rng = np.random.default_rng(0)
    with (root / f"train_{subset}.txt").open("w") as f:
        for unit, n in enumerate(train_lengths, start=1):
            for cycle in range(1, n + 1):
                f.write(_row(unit, cycle, _sensors(rng)))
    with (root / f"test_{subset}.txt").open("w") as f:
        for unit, n in enumerate(test_lengths, start=1):
            for cycle in range(1, n + 1):
                f.write(_row(unit, cycle, _sensors(rng)))
    (root / f"RUL_{subset}.txt").write_text("".join(f"{r} \n" for r in rul))


def test_reads_units_channels_and_rul(tmp_path: Path) -> None:
    write_subset(tmp_path, [5, 7], [3, 4], [10, 20])
    data = load_subset(tmp_path, "FD001")
    assert [s.name for s in data.train] == ["FD001/train/1", "FD001/train/2"]
    first = data.train[0]
    assert first.channels == [f"sensor_{i}" for i in range(1, 22)]
    assert first.condition_names == ["op_setting_1", "op_setting_2", "op_setting_3"]
    assert first.values.shape == (5, 21)
    assert first.conditions is not None
    assert first.conditions.shape == (5, 3)
    np.testing.assert_array_equal(first.timestamps, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(first.rul, [4, 3, 2, 1, 0])  # run to failure: last cycle - cycle
    # test: RUL file value after the last cycle + remaining cycles in the file
    np.testing.assert_array_equal(data.test[1].rul, [23, 22, 21, 20])
    assert unit_number(data.test[1]) == 2


def test_malformed_row_names_file_and_row(tmp_path: Path) -> None:
    write_subset(tmp_path, [3], [3], [5])
    path = tmp_path / "train_FD001.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("518.67", "abc", 1)
    path.write_text("".join(lines))
    with pytest.raises(CmapssFormatError, match=r"train_FD001.txt: row 2: non-numeric"):
        load_subset(tmp_path, "FD001")


def test_wrong_column_count_and_missing_files(tmp_path: Path) -> None:
    write_subset(tmp_path, [3], [3], [5])
    with (tmp_path / "test_FD001.txt").open("a") as f:
        f.write("1 4 0 0\n")
    with pytest.raises(CmapssFormatError, match=r"test_FD001\.txt: row 4: expected 26 columns, got 4"):
        load_subset(tmp_path, "FD001")
    with pytest.raises(CmapssFormatError, match=r"train_FD002\.txt: file not found"):
        load_subset(tmp_path, "FD002")
    with pytest.raises(CmapssFormatError, match="unknown C-MAPSS subset"):
        load_subset(tmp_path, "FD009")


def test_rul_count_must_match_test_units(tmp_path: Path) -> None:
    write_subset(tmp_path, [3], [3, 3], [5])
    with pytest.raises(CmapssFormatError, match="1 RUL values for 2 test units"):
        load_subset(tmp_path, "FD001")


@pytest.mark.parametrize("bad", ["nan", "-50", "12.5", "inf"])
def test_a_rul_value_that_is_not_a_cycle_count_names_its_row(tmp_path: Path, bad: str) -> None:
    write_subset(tmp_path, [3], [3, 3], [5, 7])
    (tmp_path / "RUL_FD001.txt").write_text(f"5 \n{bad} \n")
    with pytest.raises(CmapssFormatError, match=rf"RUL_FD001\.txt: row 2: a remaining useful life must be a "
                                               rf"whole number of cycles >= 0, got '{re.escape(bad)}'"):
        load_subset(tmp_path, "FD001")


def test_non_consecutive_cycles_are_an_error(tmp_path: Path) -> None:
    write_subset(tmp_path, [4], [3], [5])
    path = tmp_path / "train_FD001.txt"
    lines = path.read_text().splitlines(keepends=True)
    del lines[2]
    path.write_text("".join(lines))
    with pytest.raises(CmapssFormatError, match="unit 1: cycles not consecutive at cycle 2 -> 4"):
        load_subset(tmp_path, "FD001")


def test_informative_channels_drop_constant_and_near_constant(tmp_path: Path) -> None:
    write_subset(tmp_path, [50, 50], [3], [5])
    data = load_subset(tmp_path, "FD001")
    data.train[0].values[3, 5] = 21.60  # a single quantisation blip keeps sensor_6 near constant
    kept = informative_channels(data.train)
    assert "sensor_1" not in kept
    assert "sensor_6" not in kept
    assert "sensor_2" in kept
    assert len(kept) == 19


def test_channel_constant_within_every_regime_is_dropped() -> None:
    from trainer.data.series import Series

    rng = np.random.default_rng(1)
    regimes = np.repeat([0, 1], 100)
    level = np.where(regimes == 0, 10.0, 50.0)  # varies across regimes, constant within each
    values = np.stack([level, rng.normal(0, 1, 200)], axis=1)
    series = [Series("s", values, ["regime_only", "noisy"])]
    assert informative_channels(series) == ["regime_only", "noisy"]
    assert informative_channels(series, [regimes]) == ["noisy"]
