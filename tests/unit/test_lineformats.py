"""Line formats of serial and replay sources: CSV (header or columns), JSON lines, key=value."""

from __future__ import annotations

import pytest

from edge_agent.configtools import ConfigError, Section
from edge_agent.sources.lineformats import LineFormat, LineFormatError, LineParser, line_format_from_section


def test_csv_with_header_learns_column_order() -> None:
    parser = LineParser(LineFormat(kind="csv", fields={"flow": "flow", "p": "pressure"},
                                   timestamp_field="ts"))
    with pytest.raises(LineFormatError, match="no CSV header"):
        parser.parse("1,2,3")
    assert parser.parse("pressure,ts,flow") is None
    assert parser.parse("3.5, 1700000000.5, 12") == (1700000000.5, {"flow": 12.0, "p": 3.5})


def test_csv_columns_checks_field_count() -> None:
    parser = LineParser(LineFormat(kind="csv", columns=("ts", "a", "b"), timestamp_field="ts",
                                   timestamp_format="unix_ms"))
    assert parser.parse("1500,1,2\r") == (1.5, {"a": 1.0, "b": 2.0})
    with pytest.raises(LineFormatError, match="expected 3 fields, got 2"):
        parser.parse("1500,1")
    with pytest.raises(LineFormatError, match="'b': 'x' is not a number"):
        parser.parse("1500,1,x")
    # a device that prints a header at power-up although `columns` is set: skipped, not an invalid row
    assert parser.parse("ts,a,b") is None
    assert parser.parse("1600,3,4") == (1.6, {"a": 3.0, "b": 4.0})


def test_json_and_kv_lines() -> None:
    json_parser = LineParser(LineFormat(kind="json", fields={"a": "A"}, timestamp_field="t",
                                        timestamp_format="iso8601"))
    assert json_parser.parse('{"t": "1970-01-01T00:00:10Z", "A": 2}') == (10.0, {"a": 2.0})
    with pytest.raises(LineFormatError, match="not valid JSON"):
        json_parser.parse('{"t": ')
    with pytest.raises(LineFormatError, match="'A' missing"):
        json_parser.parse('{"t": "1970-01-01T00:00:10Z"}')
    kv = LineParser(LineFormat(kind="kv", fields={"a": "a", "b": "b"}))
    assert kv.parse("a=1 b=2;c=3") == (None, {"a": 1.0, "b": 2.0})
    with pytest.raises(LineFormatError, match="not key=value"):
        kv.parse("a=1 garbage")
    with pytest.raises(LineFormatError, match="not finite"):
        kv.parse("a=nan b=1")


def test_blank_lines_are_skipped() -> None:
    assert LineParser(LineFormat(kind="kv", fields={"a": "a"})).parse("  \r") is None


def test_section_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"src -> columns: does not contain flow"):
        line_format_from_section(Section({"format": "csv", "columns": ["ts", "a"], "fields": ["flow"]},
                                         "src"))
    with pytest.raises(ConfigError, match=r"src -> fields: is required"):
        line_format_from_section(Section({"format": "json"}, "src"))
    with pytest.raises(ConfigError, match=r"src -> format: must be one of"):
        line_format_from_section(Section({"format": "xml"}, "src"))
    fmt = line_format_from_section(Section({"format": "kv", "fields": {"flow": "F"}}, "src"))
    assert fmt.field_names() == ("flow",)


def test_numbers_beyond_the_float_range_are_line_errors_not_overflow() -> None:
    from edge_agent.sources.lineformats import to_number

    with pytest.raises(LineFormatError, match=r"'a': '1000.*out of range"):
        to_number(10**400, "a")
    parser = LineParser(LineFormat(kind="json", fields={"a": "a"}))
    with pytest.raises(LineFormatError, match="out of range"):
        parser.parse('{"a": 1' + "0" * 400 + "}")
