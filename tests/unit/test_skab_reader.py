"""SKAB reader on small files written in the real format (`;`-separated, SKAB's header)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data.skab import CHANNELS, SkabFormatError, labelled_files, load_skab, read_skab_file

HEADER = "datetime;" + ";".join(CHANNELS) + ";anomaly;changepoint"


def row(second: int, base: float, anomaly: int) -> str:
    values = ";".join(f"{base + i:.4f}" for i in range(len(CHANNELS)))
    return f"2020-03-09 10:14:{second:02d};{values};{float(anomaly)};0.0"


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_skab(root: Path) -> Path:
    data = root / "skab" / "data"
    for folder, stems in (("valve1", ["0", "1", "10", "2"]), ("valve2", ["0"]), ("other", ["1"])):
        for stem in stems:
            write(data / folder / f"{stem}.csv", [HEADER] + [row(s, s, int(s >= 3)) for s in range(5)])
    free_header = "datetime;" + ";".join(CHANNELS)
    write(
        data / "anomaly-free" / "anomaly-free.csv",
        [free_header] + [row(s, 0, 0).rsplit(";", 2)[0] for s in range(4)],
    )
    return root / "skab"


def test_reads_values_labels_and_times(tmp_path: Path) -> None:
    path = write(tmp_path / "valve1" / "3.csv", [HEADER, row(0, 1.0, 0), row(1, 2.0, 1)])
    series = read_skab_file(path)
    assert series.name == "valve1/3"
    assert series.channels == list(CHANNELS)
    assert series.values.shape == (2, 8)
    assert series.values[1, 0] == pytest.approx(2.0)
    assert series.values[1, 7] == pytest.approx(9.0)
    np.testing.assert_array_equal(series.labels, [0, 1])
    assert series.timestamps[1] - series.timestamps[0] == 1.0


def test_files_in_folder_then_numeric_order_and_anomaly_free(tmp_path: Path) -> None:
    root = make_skab(tmp_path)
    names = [f"{p.parent.name}/{p.stem}" for p in labelled_files(root)]
    assert names == ["valve1/0", "valve1/1", "valve1/2", "valve1/10", "valve2/0", "other/1"]
    experiments, free = load_skab(root / "data", limit=2)
    assert [s.name for s in experiments] == ["valve1/0", "valve1/1"]
    assert free is not None
    assert free.labels is None
    assert len(free) == 4


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (
            row(1, 1.0, 0).replace("2.0000", "abc", 1),
            r"line 3, column 'Accelerometer2RMS': not a number: 'abc'",
        ),
        (row(1, 1.0, 0).replace(";0.0;0.0", ";2.0;0.0"), r"line 3, column 'anomaly': expected 0 or 1, got 2"),
        ("2020-03-09 10:14;1;2;3;4;5;6;7;8;0;0", r"line 3, column 'datetime': not a 'YYYY-MM-DD hh:mm:ss'"),
        ("2020-03-09 10:14:01;1;2;3", r"line 3: 4 fields, the header has 11"),
        (row(1, 1.0, 0).replace("1.0000", "nan", 1), r"line 3, column 'Accelerometer1RMS': non-finite"),
        # rows out of time order: the protocol's first 400 rows would not be the earliest
        (row(0, 1.0, 0), r"line 3, column 'datetime': '2020-03-09 10:14:00' does not increase"),
    ],
)
def test_malformed_rows_name_file_line_and_column(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write(tmp_path / "other" / "5.csv", [HEADER, row(0, 0.0, 0), bad_line])
    with pytest.raises(SkabFormatError, match=message) as info:
        read_skab_file(path)
    assert str(path) in str(info.value)


def test_missing_column_and_missing_dir(tmp_path: Path) -> None:
    path = write(
        tmp_path / "x.csv", [HEADER.replace(";Current", ""), "2020-03-09 10:14:00;1;2;4;5;6;7;8;0;0"]
    )
    with pytest.raises(SkabFormatError, match=r"missing column\(s\) \['Current'\]"):
        read_skab_file(path)
    with pytest.raises(SkabFormatError, match="no valve1/, valve2/, other/ folders"):
        load_skab(tmp_path / "nowhere")
