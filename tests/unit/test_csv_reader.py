"""Generic CSV reader: columns, bad values, and the documented gap/NaN policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.configtools import ConfigError
from trainer.data.csv_reader import (
    CsvFormatError,
    CsvOptions,
    read_csv_file,
    read_csv_files,
    read_recording,
    series_names,
)

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
        (["time,flow,temp,fault", '0,"12,5",2,0'],  # a ;-separated file's decimal comma, quoted here
         (r"line 2, column 'flow': not a number: '12,5' \(a decimal comma\? write numbers with a decimal "
          r"point, e.g. '12.5'\)")),
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


MS_OPTIONS = CsvOptions(timestamp_column="time", channels=("flow", "temp"), label_column="fault")


def epoch_rows(stamps: list[str]) -> list[str]:
    return ["time,flow,temp,fault"] + [f"{t},{i},{20 + i},0" for i, t in enumerate(stamps)]


def test_unix_milliseconds_read_as_seconds_are_refused_naming_what_to_set(tmp_path: Path) -> None:
    """1772431200000 as seconds is the year 58000: the periods would be 1000 s, and a model trained to that
    would never be scored by an agent that reads the same file as unix_ms."""
    path = write(tmp_path, epoch_rows(["1772431200000", "1772431201000", "1772431202000"]))
    with pytest.raises(CsvFormatError) as info:
        read_csv_file(path, MS_OPTIONS)
    assert str(info.value) == (
        f"{path}: line 2, column 'time': timestamp '1772431200000' is past the year 9999 as Unix seconds; it "
        "looks like Unix milliseconds (2026-03-02 06:00:00 UTC): set data -> csv -> timestamp_format = "
        '"unix_ms"')
    for fmt in ("unix_s", None):  # the same whether unix_s is written or implied
        with pytest.raises(CsvFormatError, match="timestamp_format = \"unix_ms\""):
            read_csv_file(path, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format=fmt))


def test_unix_milliseconds_with_the_agents_format_name(tmp_path: Path) -> None:
    path = write(tmp_path, epoch_rows(["1772431200000", "1772431201000", "1772431202500"]))
    [series] = read_csv_file(path, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format="unix_ms"))
    np.testing.assert_allclose(series.timestamps[[0, 1, -1]], [1772431200.0, 1772431201.0, 1772431202.5])


def test_timestamp_format_is_strict_and_names_the_line(tmp_path: Path) -> None:
    iso = write(tmp_path, epoch_rows(["2026-03-02T06:00:00Z", "2026-03-02T06:00:01Z"]), "iso.csv")
    with pytest.raises(CsvFormatError, match=rf"{iso}: line 2, column 'time': not a number \(unix_ms "
                                             r"timestamp\): '2026-03-02T06:00:00Z'"):
        read_csv_file(iso, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format="unix_ms"))
    numbers = write(tmp_path, epoch_rows(["1772431200", "1772431201"]), "numbers.csv")
    with pytest.raises(CsvFormatError, match=r"line 2, column 'time': not a timestamp \(ISO 8601\)"):
        read_csv_file(numbers, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format="iso8601"))
    micro = write(tmp_path, epoch_rows(["1772431200000000", "1772431200001000"]), "micro.csv")
    with pytest.raises(CsvFormatError, match=r"past the year 9999 as Unix milliseconds; a finer unit "
                                             r"\(microseconds\?\)"):
        read_csv_file(micro, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format="unix_ms"))


def test_seconds_under_unix_ms_are_kept_with_a_warning(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """As the agent does: 1.7e9 read as milliseconds is January 1970, most likely seconds; kept (a
    millisecond uptime counter looks the same), with a warning naming the file and what to set."""
    path = write(tmp_path, epoch_rows(["1772431200", "1772431201"]))
    [series] = read_csv_file(path, CsvOptions("time", ("flow", "temp"), "fault", timestamp_format="unix_ms"))
    assert series.timestamps[1] - series.timestamps[0] == pytest.approx(0.001)
    assert (f"{path}: line 2: timestamp 1772431200 read as unix_ms is 1970-01-21 12:20:31 UTC: if the file "
            'holds Unix seconds, set data -> csv -> timestamp_format = "unix_s"') in caplog.text


def test_timestamp_format_option_takes_the_agents_names() -> None:
    from edge_agent.sources.lineformats import TIMESTAMP_FORMATS

    for fmt in TIMESTAMP_FORMATS:
        assert CsvOptions.from_options({"timestamp_column": "t", "channels": ["a"],
                                        "timestamp_format": fmt}).timestamp_format == fmt
    assert CsvOptions.from_options({"timestamp_column": "t", "channels": ["a"]}).timestamp_format is None
    with pytest.raises(ConfigError, match=r"data -> csv -> timestamp_format: must be one of unix_s, unix_ms, "
                                          r"iso8601 \(value: 'ms'\)"):
        CsvOptions.from_options({"timestamp_column": "t", "channels": ["a"], "timestamp_format": "ms"})


def test_a_misspelt_required_key_is_named_as_unknown_not_missing() -> None:
    with pytest.raises(ConfigError) as info:
        CsvOptions.from_options({"timestamp_col": "t", "channels": ["a"]})
    assert str(info.value) == ("data -> csv -> timestamp_col: unknown key (did you mean timestamp_column?) "
                               "(value: 't')")
    with pytest.raises(ConfigError, match=r"data -> csv -> colour: unknown key \(the keys are "
                                          r"timestamp_column, "):
        CsvOptions.from_options({"timestamp_column": "t", "channels": ["a"], "colour": 1})


@pytest.mark.parametrize(("separator", "shown"), [(";", '";"'), ("\t", '"\\t"')])
def test_a_header_read_as_one_column_suggests_the_delimiter(tmp_path: Path, separator: str,
                                                            shown: str) -> None:
    path = write(tmp_path, [separator.join(["time", "flow", "temp", "fault"]), separator.join("0120")])
    with pytest.raises(CsvFormatError) as info:
        read_csv_file(path, OPTIONS)
    assert str(info.value).endswith(
        f"(one column that holds {separator!r}: the file looks {separator!r}-separated, not ','-separated; "
        f"set data -> csv -> delimiter = {shown})")
    one_column = write(tmp_path, ["time", "0"], "one.csv")  # one column, no other separator: no hint
    with pytest.raises(CsvFormatError, match=r"the header has \['time'\]$"):
        read_csv_file(one_column, OPTIONS)


def test_files_with_the_same_name_in_different_folders_get_distinct_series_names(tmp_path: Path) -> None:
    paths = []
    for folder in ("day1", "day2", "nested/day3"):
        (tmp_path / folder).mkdir(parents=True)
        paths.append(write(tmp_path / folder, rows([0, 1, 2, 3]), "compressor.csv"))
    paths.append(write(tmp_path, rows([0, 1, 2, 3]), "compressor_fault.csv"))
    files = read_csv_files(paths, OPTIONS)
    assert [s.name for segments in files for s in segments] == [
        "day1/compressor", "day2/compressor", "nested/day3/compressor", "compressor_fault"]


def test_series_names_keep_stems_and_disambiguate_collisions(tmp_path: Path) -> None:
    assert series_names([tmp_path / "a/run1.csv", tmp_path / "b/run2.csv"]) == ["run1", "run2"]
    # stems equal, and the relative paths without extension too: the extension is kept
    assert series_names([tmp_path / "x/run.csv", tmp_path / "x/run.txt", tmp_path / "y/other.csv"]) == [
        "run.csv", "run.txt", "other"]
    with pytest.raises(CsvFormatError, match=r"listed twice in data -> csv -> paths"):
        series_names([tmp_path / "x/run.csv", tmp_path / "x/../x/run.csv"])


def test_segments_of_a_renamed_file_and_a_file_named_like_a_segment(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    gappy = write(tmp_path / "a", rows([0, 1, 2, 3, 10, 11, 12]), "pump.csv")
    other = write(tmp_path / "b", rows([0, 1, 2]), "pump.csv")
    names = [[s.name for s in segments] for segments in read_csv_files([gappy, other], OPTIONS)]
    assert names == [["a/pump#0", "a/pump#1"], ["b/pump"]]
    # a file named like a segment keeps its extension: it neither clashes with pump.csv's segments nor
    # shares their report panel (the report groups `name#i` under `name`)
    named_like_segment = write(tmp_path, rows([0, 1, 2]), "pump#1.csv")
    plain = write(tmp_path, rows([0, 1, 2, 3, 10, 11, 12]), "pump.csv")
    names = [[s.name for s in segments] for segments in read_csv_files([plain, named_like_segment], OPTIONS)]
    assert names == [["pump#0", "pump#1"], ["pump#1.csv"]]
    assert series_names([tmp_path / "a/pump#2.csv", tmp_path / "b/pump#2", tmp_path / "pump#x.csv"]) == [
        "a/pump#2.csv", "b/pump#2.", "pump#x"]
    with pytest.raises(CsvFormatError, match=r"series name 'pump#2.csv' is also that of .*rename one"):
        series_names([tmp_path / "pump#2.csv", tmp_path / "x/pump#2.csv.csv"])


def test_a_recording_knows_the_file_line_of_each_row(tmp_path: Path) -> None:
    # rows at 0, 1, 3 (one inserted at 2), then a long gap: two segments
    path = write(tmp_path, rows([0, 1, 3, 4, 20, 21]))
    recording = read_recording(path, OPTIONS)
    assert [s.name for s in recording.segments] == ["pump#0", "pump#1"]
    assert [lines.tolist() for lines in recording.lines] == [[2, 3, 0, 4, 5], [6, 7]]
