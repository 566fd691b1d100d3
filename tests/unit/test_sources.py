"""Sources without I/O: serial line assembly, MQTT routing and payloads, replay pacing-free playback."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.configtools import ConfigError, Section
from edge_agent.sources.base import Source
from edge_agent.sources.mqtt import MqttSource, MqttSourceConfig
from edge_agent.sources.replay import ReplayConfig, ReplaySource
from edge_agent.sources.serial import SerialConfig, SerialSource
from edge_agent.types import Reading


def drain(source: MqttSource | SerialSource) -> list[Reading]:
    queue = source._queue
    assert queue is not None
    out = []
    while (item := queue.get_nowait()) is not None:
        out.append(item)
    return out


async def _with_queue(source: MqttSource | SerialSource) -> None:
    from edge_agent.sources.base import DropOldestQueue

    source._queue = DropOldestQueue(3, source._dropped)


def test_serial_partial_lines_garbage_and_overflow(tmp_path: Path) -> None:
    config = SerialConfig.from_section(Section({"device": "/dev/null", "format": "kv", "fields": ["a"],
                                                "max_line_bytes": 16, "queue_size": 3}), tmp_path)
    source = SerialSource("s", config)
    asyncio.run(_with_queue(source))
    source.feed(b"a=1\na=", 100.0)
    source.feed(b"2\r\n\xff\xfe\n", 101.0)
    source.feed(b"x" * 40, 102.0)  # no newline for too long: discarded and counted
    source.feed(b"\na=3\na=4\na=5\n", 103.0)
    readings = drain(source)
    assert [r.values["a"] for r in readings] == [3.0, 4.0, 5.0]  # queue of 3: 1 and 2 dropped as oldest
    assert source.stats.received == 5
    assert source.stats.dropped == 2
    assert source.stats.invalid == 2  # bad UTF-8 and the overlong line
    assert readings[0].ts == 103.0  # arrival time when the line has no timestamp


def test_mqtt_json_routing_by_topic_prefix(tmp_path: Path) -> None:
    config = MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "json", "fields": {"flow": "F"}, "timestamp_field": "t",
        "topics": {"plant/+/p3/data": "p3", "plant/x/p4/data": "p4"}}), tmp_path)
    assert config.field_names() == ("p3.flow", "p4.flow")
    source = MqttSource("m", config)
    asyncio.run(_with_queue(source))
    source.handle_message("plant/y/p3/data", b'{"t": 5, "F": 1.5}', 9.0)
    source.handle_message("plant/x/p4/data", b'{"t": 6, "F": "2"}', 9.0)
    source.handle_message("plant/x/p4/data", b'{"t": 6}', 9.0)
    source.handle_message("other/topic", b'{"t": 6, "F": 1}', 9.0)
    assert [(r.ts, r.values) for r in drain(source)] == [(5.0, {"p3.flow": 1.5}), (6.0, {"p4.flow": 2.0})]
    assert source.stats.invalid == 2


def test_mqtt_a_topic_that_is_not_utf8_is_counted_not_raised(tmp_path: Path) -> None:
    config = MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "number", "topics": {"f/1": "v"}}), tmp_path)
    source = MqttSource("m", config)
    asyncio.run(_with_queue(source))
    bad = mqtt.MQTTMessage(topic=b"f/\xff")
    bad.payload = b"1"
    source._on_message(None, None, bad)  # paho's path (the fast path leaves such topics to paho)
    good = mqtt.MQTTMessage(topic=b"f/1")
    good.payload = b"2"
    source._on_message(None, None, good)
    assert [r.values for r in drain(source)] == [{"v": 2.0}]
    assert source.stats.invalid == 1


def test_mqtt_number_payloads(tmp_path: Path) -> None:
    config = MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "number", "topics": {"f/1/v": "fan1_vib"}}), tmp_path)
    source = MqttSource("m", config)
    asyncio.run(_with_queue(source))
    source.handle_message("f/1/v", b" 0.25 ", 7.0)
    source.handle_message("f/1/v", b"NaN", 7.0)
    assert [(r.ts, r.values) for r in drain(source)] == [(7.0, {"fan1_vib": 0.25})]
    assert source.stats.invalid == 1


def test_replay_plays_file_with_rebased_time(tmp_path: Path) -> None:
    path = tmp_path / "rec.csv"
    path.write_text("ts,flow,pressure\n100.0,1,2\n100.5,3,4\nbad,5,6\n101.0,7\n101.5,9,10\n")
    config = ReplayConfig.from_section(Section({"path": "rec.csv", "timestamp_field": "ts", "speed": 0.0}),
                                       tmp_path)
    assert config.field_names() == ("flow", "pressure")

    async def play() -> list[Reading]:
        source = ReplaySource("r", config)
        async with source:
            return [reading async for reading in source]

    readings = asyncio.run(play())
    assert [r.values["flow"] for r in readings] == [1.0, 3.0, 9.0]
    assert [round(r.ts - readings[0].ts, 3) for r in readings] == [0.0, 0.5, 1.5]
    assert readings[0].ts > 1_000_000_000  # rebased to now


def _replay(config: ReplayConfig) -> list[Reading]:
    async def play() -> list[Reading]:
        source = ReplaySource("rec", config)
        async with source:
            return [reading async for reading in source]

    return asyncio.run(play())


# A SKAB recording's header and rows (its files are ';'-separated), with a row that is dropped as invalid
SKAB_ROWS = [["datetime", "Accelerometer1RMS", "Pressure", "Temperature", "changepoint"],
             ["2020-03-09 10:14:33", "0.0273", "0.054711", "89.8333", "0"],
             ["2020-03-09 10:14:34", "0.0277", "0.054711", "89.8333", "0"],
             ["2020-03-09 10:14:35", "", "-0.273216", "89.8361", "0"],
             ["2020-03-09 10:14:36", "0.0271", "-0.273216", "89.8361", "1"]]


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_replay_with_another_delimiter_plays_the_readings_of_the_comma_separated_file(
        tmp_path: Path, delimiter: str) -> None:
    """The trainer reads SKAB's ';'-separated files with `[data.csv] delimiter`; the replay source reads the
    same file with its `delimiter`, to exactly the readings of the file written with commas."""
    (tmp_path / "comma.csv").write_text("\n".join(",".join(row) for row in SKAB_ROWS) + "\n")
    (tmp_path / "other.csv").write_text("\n".join(delimiter.join(row) for row in SKAB_ROWS) + "\n")
    common = {"timestamp_field": "datetime", "timestamp_format": "iso8601", "speed": 0.0, "rebase": False}
    comma = ReplayConfig.from_section(Section({"path": "comma.csv", **common}), tmp_path)
    other = ReplayConfig.from_section(Section({"path": "other.csv", "delimiter": delimiter, **common}),
                                      tmp_path)
    assert other.field_names() == comma.field_names() == ("Accelerometer1RMS", "Pressure", "Temperature",
                                                          "changepoint")
    other.check_file("sources -> rec")  # what check-config runs
    expected = [(r.ts, r.values) for r in _replay(comma)]
    assert len(expected) == 3  # the row with an empty cell is dropped
    assert expected[0] == (1583748873.0, {"Accelerometer1RMS": 0.0273, "Pressure": 0.054711,
                                          "Temperature": 89.8333, "changepoint": 0.0})
    assert [(r.ts, r.values) for r in _replay(other)] == expected


def test_replay_reads_an_excel_utf8_file_with_a_quoted_header(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte order mark and may quote the names: the mark must not stick to
    the first (quoted) column name, or its timestamp field would be missing."""
    (tmp_path / "plain.csv").write_text("\n".join(";".join(row) for row in SKAB_ROWS) + "\n")
    quoted = [";".join(f'"{cell}"' for cell in SKAB_ROWS[0])] + [";".join(row) for row in SKAB_ROWS[1:]]
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(quoted) + "\r\n").encode())
    common = {"delimiter": ";", "timestamp_field": "datetime", "timestamp_format": "iso8601", "speed": 0.0,
              "rebase": False}
    excel = ReplayConfig.from_section(Section({"path": "excel.csv", **common}), tmp_path)
    plain = ReplayConfig.from_section(Section({"path": "plain.csv", **common}), tmp_path)
    assert excel.field_names() == plain.field_names()
    excel.check_file("sources -> rec")
    assert [(r.ts, r.values) for r in _replay(excel)] == [(r.ts, r.values) for r in _replay(plain)]


def test_a_one_column_file_whose_name_holds_a_comma_is_not_taken_for_a_comma_separated_one(
        tmp_path: Path) -> None:
    """A single channel named "Pressure, bar" read with ';': another delimiter splits the header but not the
    rows, so there is no hint to follow and the file loads as it is."""
    (tmp_path / "one.csv").write_text("Pressure, bar\n1.5\n1.6\n")
    config = ReplayConfig.from_section(Section({"path": "one.csv", "delimiter": ";", "speed": 0.0}), tmp_path)
    assert config.field_names() == ("Pressure, bar",)
    assert [r.values for r in _replay(config)] == [{"Pressure, bar": 1.5}, {"Pressure, bar": 1.6}]


@pytest.mark.parametrize("delimiter", ["", ";;", "\n", '"'])
def test_replay_delimiter_must_be_one_character_that_can_separate_cells(tmp_path: Path,
                                                                        delimiter: str) -> None:
    with pytest.raises(ConfigError) as info:
        ReplayConfig.from_section(Section({"path": "rec.csv", "fields": ["flow"], "delimiter": delimiter},
                                          "sources -> rec"), tmp_path)
    assert str(info.value) == ("sources -> rec -> delimiter: must be a single character, not a line break "
                               f"or the quote character '\"' (value: {delimiter!r})")


def test_a_header_that_another_delimiter_splits_names_the_delimiter_to_set(tmp_path: Path) -> None:
    """SKAB's file replayed with the default ',': its header is one column, so the timestamp field is not in
    it; the error says the file looks ';'-separated and which key to set, as the trainer's reader does."""
    path = tmp_path / "event3.csv"
    path.write_text("\n".join(";".join(row) for row in SKAB_ROWS) + "\n")
    header = ";".join(SKAB_ROWS[0])
    hint = ("(the file looks ';'-separated, not ','-separated; set sources -> rec -> delimiter = \";\")")
    config = ReplayConfig.from_section(
        Section({"path": "event3.csv", "timestamp_field": "datetime", "fields": ["Pressure"]}), tmp_path)
    with pytest.raises(ConfigError) as info:
        config.check_file("sources -> rec")
    assert str(info.value) == (f"sources -> rec -> timestamp_field: no such column in {path} (columns: "
                               f"{header}) {hint} (value: 'datetime')")
    with pytest.raises(ConfigError) as info:  # `run` without check-config first: the source says the same
        _replay(config)
    assert str(info.value) == f"sources -> rec -> fields: columns Pressure, datetime are not in {path} {hint}"
    no_time = ReplayConfig.from_section(Section({"path": "event3.csv", "fields": ["Pressure"]}), tmp_path)
    with pytest.raises(ConfigError) as info:
        no_time.check_file("sources -> rec")
    assert f"sources -> rec -> fields: column(s) not in {path} (columns: {header}) {hint}" in str(info.value)
    # with `fields` left out, the one column would be the only field, never a number: refused at load
    with pytest.raises(ConfigError) as info:
        ReplayConfig.from_section(Section({"path": "event3.csv"}, "sources -> rec"), tmp_path)
    assert str(info.value) == (f"sources -> rec -> path: the header is one column, {header!r} {hint} "
                               f"(value: '{path}')")
    # a ','-separated file read with ';'; and no hint where no other delimiter gives the missing column
    path.write_text("\n".join(",".join(row) for row in SKAB_ROWS) + "\n")
    semicolon = ReplayConfig.from_section(Section(
        {"path": "event3.csv", "delimiter": ";", "timestamp_field": "datetime", "fields": ["Pressure"]}),
        tmp_path)
    with pytest.raises(ConfigError) as info:
        semicolon.check_file("sources -> rec")
    assert ("(the file looks ','-separated, not ';'-separated; set sources -> rec -> delimiter = \",\")"
            in str(info.value))
    typo = ReplayConfig.from_section(
        Section({"path": "event3.csv", "timestamp_field": "date_time", "fields": ["Pressure"]}), tmp_path)
    with pytest.raises(ConfigError) as info:
        typo.check_file("sources -> rec")
    assert str(info.value).endswith(f"(columns: {', '.join(SKAB_ROWS[0])}) (value: 'date_time')")


def test_serial_a_line_that_breaks_parsing_is_counted_and_the_chunk_goes_on(tmp_path: Path) -> None:
    config = SerialConfig.from_section(Section({"device": "/dev/null", "format": "json", "fields": ["a"],
                                                "queue_size": 10}), tmp_path)
    source = SerialSource("s", config)
    asyncio.run(_with_queue(source))
    huge = b'{"a": 1' + b"0" * 400 + b"}"  # an int beyond the float range
    too_long_int = b'{"a": ' + b"9" * 5000 + b"}"  # beyond Python's int-string limit
    source.feed(b'{"a": 1}\n' + huge + b"\n" + too_long_int + b'\n{"a": 2}\n', 5.0)
    assert [r.values["a"] for r in drain(source)] == [1.0, 2.0]
    assert source.stats.invalid == 2


class FakeMessage:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


def test_mqtt_a_payload_that_breaks_parsing_is_counted_and_the_burst_goes_on(tmp_path: Path) -> None:
    config = MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "json", "fields": ["a"], "topics": ["t/#"], "queue_size": 10}), tmp_path)
    source = MqttSource("m", config)
    asyncio.run(_with_queue(source))
    for payload in (b'{"a": 1}', b'{"a": 1' + b"0" * 400 + b"}", b'{"a": ' + b"9" * 5000 + b"}",
                    b'{"a": 2}'):
        source._on_message(None, None, FakeMessage("t/x", payload))  # type: ignore[arg-type]
    assert [r.values["a"] for r in drain(source)] == [1.0, 2.0]
    assert source.stats.invalid == 2
    number = MqttSource("n", MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "number", "topics": {"f/v": "v"}}), tmp_path))
    asyncio.run(_with_queue(number))
    number.handle_message("f/v", b"1" + b"0" * 400, 1.0)  # a float string overflows to inf: not finite
    number.handle_message("f/v", b"1" * 5000, 1.0)
    assert drain(number) == []
    assert number.stats.invalid == 2


def test_mqtt_messages_beyond_the_queue_drop_the_oldest_and_count_them(tmp_path: Path) -> None:
    config = MqttSourceConfig.from_section(Section({
        "host": "h", "payload": "number", "topics": {"f/v": "v"}, "queue_size": 3}), tmp_path)
    source = MqttSource("m", config)
    asyncio.run(_with_queue(source))
    for i in range(10):  # nobody consumes the readings: an overloaded agent
        source._on_message(None, None, FakeMessage("f/v", str(i).encode()))  # type: ignore[arg-type]
    assert [r.values["v"] for r in drain(source)] == [7.0, 8.0, 9.0]
    assert source.stats.dropped == 7


def test_mqtt_tls_table_without_ca_still_uses_tls(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    only_client_cert = MqttSourceConfig.from_section(Section({
        "host": "h", "topics": ["t/#"], "fields": ["a"], "tls": {"cert": "c.crt", "key": "c.key"}}), tmp_path)
    assert only_client_cert.tls
    empty_table = MqttSourceConfig.from_section(Section({
        "host": "h", "topics": ["t/#"], "fields": ["a"], "tls": {}}), tmp_path)
    client = MqttSource("m", empty_table)._make_client()  # system CAs verify the broker
    assert client._ssl
    assert client._ssl_context is not None
    assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    plain = MqttSource("m", MqttSourceConfig.from_section(Section({
        "host": "h", "topics": ["t/#"], "fields": ["a"]}), tmp_path))._make_client()
    assert not plain._ssl


class LoopSource(Source):
    """Emits the readings it is given, on the event loop (as the MQTT source does)."""

    kind = "test"
    produces_on_loop = True

    def __init__(self) -> None:
        super().__init__("loop", queue_size=10)
        self.feed: asyncio.Queue[float] = asyncio.Queue()

    async def _run(self) -> None:
        while True:
            ts = await self.feed.get()
            self._emit(Reading(self.name, ts, {"a": ts}))


def test_deliver_hands_readings_straight_over_and_ends_with_the_consumers_error() -> None:
    async def scenario() -> tuple[list[tuple[float, int]], list[float]]:
        source = LoopSource()
        seen: list[tuple[float, int]] = []

        def consumer(reading: Reading) -> None:
            if reading.ts == 3.0:
                raise ValueError("bad reading 3")
            seen.append((reading.ts, source.stats.received))

        async with source:
            source._emit(Reading("loop", 0.0, {"a": 0.0}))  # made before the hand-over: queued
            delivering = asyncio.create_task(source.deliver(consumer))
            await asyncio.sleep(0)
            for ts in (1.0, 2.0, 3.0, 4.0):
                source.feed.put_nowait(ts)
            with pytest.raises(ValueError, match="bad reading 3"):
                await asyncio.wait_for(delivering, 5)
            await asyncio.sleep(0.01)
            queue = source._queue
            assert queue is not None
            left = [r.ts for r in (queue.get_nowait() for _ in range(3)) if r is not None]
        return seen, left

    seen, left = asyncio.run(scenario())
    # in order, each consumed as it is made (through a queue, 1.0 would be seen after 4.0 was made)
    assert seen == [(0.0, 1), (1.0, 2), (2.0, 3)]
    assert left == [4.0]  # after the consumer failed, readings wait in the queue for the next one


def test_mqtt_a_refused_subscription_is_logged_naming_the_filter(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = MqttSourceConfig.from_section(Section({"host": "h", "payload": "json", "fields": ["a"],
                                                    "topics": ["plant/ok/#", "plant/secret/#"]}), tmp_path)
    source = MqttSource("m", config)
    client: Any = object()
    source._subscription = (client, 7)
    refused = type("Reason", (), {"is_failure": True, "__str__": lambda _s: "Not authorized"})()
    granted = type("Reason", (), {"is_failure": False})()
    other_client: Any = object()
    source._on_subscribe(other_client, None, 7, [refused, refused], None)  # an earlier client's late SUBACK
    source._on_subscribe(client, None, 8, [refused, refused], None)  # another SUBSCRIBE's
    assert "refused the subscription" not in caplog.text
    source._on_subscribe(client, None, 7, [granted, refused], None)
    assert "refused the subscription to 'plant/secret/#' (Not authorized)" in caplog.text
    assert "plant/ok/#" not in caplog.text
