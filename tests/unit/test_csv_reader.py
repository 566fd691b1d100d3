"""Generic CSV reader: columns, bad values, and the documented gap/NaN policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from trainer.data.csv_reader import CsvFormatError, CsvOptions, read_csv_file, read_csv_files

OPTIONS = CsvOptions(timestamp_column="time", channels=("flow", "temp"), label_column="fault", max_gap=2)


def write(tmp_path: Path, lines: list[str], name: str = "pump.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rows(times: list[float], flow: list[str] | None = None) -> list[str]:
    flows = flow or [str(float(i)) for i in range(len(times))]
    return ["time,flow,temp,fault"] + [
        f"{t},{f},{20 + i},{int(i >= 3)}" for i, (t, f) in enumerate(zip(times, flows, strict=True))
    ]


def test_reads_channels_labels_and_iso_times(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            "time,temp,flow,fault,extra",
            "2024-05-01T12:00:00,20.5,1.0,0,x",
            "2024-05-01T12:00:01,21.5,2.0,1,y",
        ],
    )
    [series] = read_csv_file(path, OPTIONS)
    assert series.name == "pump"
    assert series.channels == ["flow", "temp"]
    np.testing.assert_allclose(series.values, [[1.0, 20.5], [2.0, 21.5]])
    np.testing.assert_array_equal(series.labels, [0, 1])
    assert series.timestamps[1] - series.timestamps[0] == 1.0


def test_short_nan_run_is_interpolated(tmp_path: Path) -> None:
    path = write(tmp_path, rows([0, 1, 2, 3, 4, 5], ["0", "", "nan", "3", "4", "5"]))
    [series] = read_csv_file(path, OPTIONS)
    np.testing.assert_allclose(series.values[:, 0], [0, 1, 2, 3, 4, 5])


def test_short_time_gap_gets_interpolated_rows(tmp_path: Path) -> None:
    # samples at 2 and 3 are missing from a 1 s grid: two rows inserted, values interpolated
    path = write(tmp_path, rows([0, 1, 4, 5, 6, 7]))
    [series] = read_csv_file(path, OPTIONS)
    np.testing.assert_allclose(series.timestamps, np.arange(8))
    np.testing.assert_allclose(series.values[:, 0], [0, 1, 4 / 3, 5 / 3, 2, 3, 4, 5])
    np.testing.assert_array_equal(series.labels, [0, 0, 0, 0, 0, 1, 1, 1])


def test_long_gap_splits_into_segments(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    times = [0, 1, 2, 3, 10, 11, 12, 1000, 1001]  # 6 missing samples > max_gap 2, then 987
    path = write(tmp_path, rows(times))
    first, second, _third = read_csv_file(path, OPTIONS)
    # what is left out, in sample periods (not the few placeholder rows a long gap gets on the grid)
    expected = f"{path}: 2 gap(s) longer than 2 samples (missing or NaN), 993 sample periods in all, left out"
    assert f"{expected}; 3 segment(s)" in caplog.text
    assert (first.name, second.name) == ("pump#0", "pump#1")
    np.testing.assert_allclose(first.timestamps, [0, 1, 2, 3])
    np.testing.assert_allclose(second.timestamps, [10, 11, 12])


def test_long_nan_run_and_edge_nans_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flows = ["", "1", "2", "nan", "nan", "nan", "6", "7"]
    [a, b] = read_csv_file(write(tmp_path, rows(list(range(8)), flows)), OPTIONS)
    assert "2 gap(s) longer than 2 samples (missing or NaN), 4 sample periods in all" in caplog.text
    np.testing.assert_allclose(a.values[:, 0], [1, 2])
    np.testing.assert_allclose(b.values[:, 0], [6, 7])


def test_gap_inside_an_anomaly_stays_anomalous(tmp_path: Path) -> None:
    path = write(tmp_path, ["time,flow,temp,fault", "0,1,1,0", "1,1,1,1", "3,1,1,1", "4,1,1,0"])
    [series] = read_csv_file(path, OPTIONS)
    np.testing.assert_array_equal(series.labels, [0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["time,flow,fault", "0,1,0"], r"line 1: missing column\(s\) \['temp'\]"),
        (["time,flow,temp,fault", "0,1,2,0", "1,12;5,2,0"], r"line 3, column 'flow': not a number: '12;5'"),
        (["time,flow,temp,fault", "0,1,2,0", "1,1,2,yes"], r"line 3, column 'fault': expected a 0/1 label"),
        (["time,flow,temp,fault", "5,1,2,0", "4,1,2,0"], r"line 3, column 'time': timestamp '4' does not"),
        (["time,flow,temp,fault", "yesterday,1,2,0"], r"line 2, column 'time': not a timestamp"),
        (["time,flow,temp,fault", "0,1,2"], r"line 2: 3 fields, the header has 4"),
        (["time,flow,temp,fault", "0,inf,2,0"], r"line 2, column 'flow': value 'inf' is out of range"),
        (["time,flow,temp,fault", "0,1e40,2,0"], r"line 2, column 'flow': value '1e40' is out of range"),
        (["time,flow,temp,fault", "0,1,2,0", "nan,1,2,0"], r"line 3, column 'time': not a finite timestamp"),
        (["time,flow,temp,fault", "0,1,2,0", "1,1,2,0", "2,1,2,0", "2.2,1,2,0"],
         r"line 5: timestamp less than half a sample period \(1 s\) after the previous row's"),
    ],
)
def test_bad_files_name_file_line_and_column(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write(tmp_path, lines)
    with pytest.raises(CsvFormatError, match=message) as info:
        read_csv_file(path, OPTIONS)
    assert str(path) in str(info.value)


def test_options_from_config_table_are_strict() -> None:
    options = CsvOptions.from_options(
        {"timestamp_column": "t", "channels": ["a", "b"], "paths": ["x.csv"], "max_gap": 3}
    )
    assert options.channels == ("a", "b")
    assert options.max_gap == 3
    assert options.label_column is None
    with pytest.raises(ConfigError, match="data -> csv -> chanels: unknown key"):
        CsvOptions.from_options({"timestamp_column": "t", "channels": ["a"], "chanels": ["a"]})
    with pytest.raises(ConfigError, match="data -> csv -> timestamp_column: is required"):
        CsvOptions.from_options({"channels": ["a"]})
    for bad, message in (
        ({"channels": []}, r"data -> csv -> channels: must name at least one column"),
        ({"channels": ["a", "a", "b"]}, r"data -> csv -> channels: names \['a'\] more than once"),
        ({"channels": ["t", "a"]}, r"channels: holds the timestamp column 't': it would become a model"),
        ({"channels": ["a", "y"], "label_column": "y"}, r"channels: holds the label column 'y'"),
        ({"channels": ["a"], "delimiter": ";;"}, r"data -> csv -> delimiter: must be one character"),
        ({"channels": ["a"], "delimiter": ""}, r"data -> csv -> delimiter: must be one character"),
    ):
        with pytest.raises(ConfigError, match=message):
            CsvOptions.from_options({"timestamp_column": "t", **bad})


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(["time,flow,temp,fault", "0,1,2,0", "1,1,2,0"]).encode())
    [series] = read_csv_file(path, OPTIONS)
    assert len(series) == 2


def test_text_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("time,flow,temp,fault\n0,1,2,0\n1,1,2,0 # 20 \xb0C\n".encode("latin-1"))
    with pytest.raises(CsvFormatError, match=rf"{path}: line 3: not UTF-8 text \(byte b'\\xb0'\); save the "
                                             "file as UTF-8"):
        read_csv_file(path, OPTIONS)


def test_missing_file_and_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CsvFormatError, match=r"absent\.csv: no such CSV file$"):
        read_csv_file(tmp_path / "absent.csv", OPTIONS)
    monkeypatch.chdir(tmp_path)  # a relative path: the message says where it was looked for
    with pytest.raises(CsvFormatError, match=rf"^data/absent.csv: no such CSV file \(relative paths in a "
                                             rf"training config are taken from the working directory, here "
                                             rf"{tmp_path}\)$"):
        read_csv_file(Path("data/absent.csv"), OPTIONS)
    with pytest.raises(CsvFormatError, match="no CSV files given"):
        read_csv_files([], OPTIONS)


def test_gap_of_decades_is_split_without_filling_it(tmp_path: Path) -> None:
    times = [0, 1, 2, 3, 1_000_000_000, 1_000_000_001]
    first, second = read_csv_file(write(tmp_path, rows(times)), OPTIONS)
    assert len(first) == 4
    np.testing.assert_allclose(second.timestamps, [1e9, 1e9 + 1])
