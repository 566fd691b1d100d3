"""The event-loop driven paho client: buffered socket reads (many packets per `recv`, packets split across
reads), and a burst larger than one read turn still delivered without a new readable event."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent import mqttloop
from edge_agent.mqttloop import BufferedClient, LoopIO
from tests.support.mqtt_packets import publish_packet


class CountingSocket:
    """A real socket that counts `recv` calls (paho reads through `recv`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, bufsize: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(bufsize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def client_on(sock: socket.socket) -> tuple[BufferedClient, CountingSocket, list[tuple[str, bytes]]]:
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2)
    received: list[tuple[str, bytes]] = []
    client.on_message = lambda _c, _u, msg: received.append((msg.topic, bytes(msg.payload)))
    sock.setblocking(False)
    counting = CountingSocket(sock)
    client._sock = counting  # what paho's connect would have set
    return client, counting, received


def test_many_packets_come_out_of_one_recv_and_a_split_packet_is_completed() -> None:
    ours, broker = socket.socketpair()
    try:
        client, counting, received = client_on(ours)
        packets = [publish_packet(f"plant/p{i}", f'{{"a": {i}}}'.encode()) for i in range(5)]
        stream = b"".join(packets)
        broker.sendall(stream[:-3])  # the last packet's final bytes come later
        for _ in range(5):
            client.loop_read()
        assert received == [(f"plant/p{i}", f'{{"a": {i}}}'.encode()) for i in range(4)]
        assert counting.recvs == 2  # one read of everything sent, one that found nothing more
        broker.sendall(stream[-3:])
        client.loop_read()
        assert received[-1] == ("plant/p4", b'{"a": 4}')
        assert not client.buffered()
        broker.close()
        assert client.loop_read() == mqtt.MQTT_ERR_CONN_LOST  # EOF is still a lost connection
    finally:
        ours.close()
        broker.close()


def test_a_burst_beyond_one_read_turn_is_delivered_without_another_readable_event(monkeypatch: Any) -> None:
    monkeypatch.setattr(mqttloop, "READ_BURST", 4)

    async def scenario() -> list[tuple[str, bytes]]:
        ours, broker = socket.socketpair()
        client, _counting, received = client_on(ours)
        io = LoopIO(asyncio.get_running_loop(), client)
        io.attach()
        try:
            broker.sendall(b"".join(publish_packet("t", str(i).encode()) for i in range(10)))
            for _ in range(50):  # the selector reports one readable event; the rest is in the buffer
                if len(received) == 10:
                    break
                await asyncio.sleep(0.01)
            return received
        finally:
            io.detach()
            ours.close()
            broker.close()

    received = asyncio.run(scenario())
    assert [payload for _topic, payload in received] == [str(i).encode() for i in range(10)]


# --- fast path: PUBLISH packets read from the buffer without paho's per-packet handling ------------------

def mixed_stream() -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Packets of every kind the fast path takes or leaves to paho, and the messages they deliver in order."""
    big = bytes(range(256)) * 80  # 20,480 bytes: a 3-byte remaining length
    packets = [
        (publish_packet("plant/a", b'{"v": 1.5}'), (b"plant/a", b'{"v": 1.5}')),
        (publish_packet("plant/q1", b"7", qos=1, mid=7), (b"plant/q1", b"7")),
        (publish_packet("plant/mid", b"x" * 200), (b"plant/mid", b"x" * 200)),  # 2-byte length
        (publish_packet("plant/big", big), (b"plant/big", big)),
        (bytes([0xD0, 0x00]), None),  # PINGRESP: paho's
        (publish_packet("plant/q2", b"9", qos=2, mid=9), None),  # QoS 2: paho's, delivered on PUBREL
        (bytes([0x62, 0x02, 0x00, 0x09]), (b"plant/q2", b"9")),  # PUBREL 9
        (publish_packet(b"plant/\xff", b"bad topic"), (b"plant/\xff", b"bad topic")),  # not UTF-8: paho's
        (publish_packet("plant/empty", b""), (b"plant/empty", b"")),
        (publish_packet("plant/q1b", b"8", qos=1, mid=300), (b"plant/q1b", b"8")),
    ]
    return b"".join(p for p, _ in packets), [m for _, m in packets if m is not None]


def attach_connected(client: BufferedClient, sock: socket.socket) -> LoopIO:
    """`client` connected over `sock` (as paho's connect and CONNACK would leave it), watched by the loop."""
    sock.setblocking(False)
    client._sock = sock
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED
    io = LoopIO(asyncio.get_running_loop(), client)
    io.attach()
    return io


async def read_stream(stream: bytes, fast: bool, chunk: int, protocol: int = mqtt.MQTTv311) -> dict[str, Any]:
    """Feed `stream` to a loop-driven client in `chunk`-byte pieces; what it delivered and wrote back."""
    ours, broker = socket.socketpair()
    client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    got: list[tuple[bytes, bytes]] = []
    by_paho: list[bytes] = []

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        by_paho.append(msg._topic)
        got.append((msg._topic, bytes(msg.payload)))

    client.on_message = on_message
    if fast:
        client.fast_message = lambda topic, payload: got.append((topic.encode(), payload))
    io = attach_connected(client, ours)
    try:
        for start in range(0, len(stream), chunk):
            broker.sendall(stream[start:start + chunk])
            for _ in range(3):  # the selector sees the bytes: a readable event may get any part of a packet
                await asyncio.sleep(0)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if not client.buffered():
                break
        broker.setblocking(False)
        written = b""
        with contextlib.suppress(BlockingIOError):
            while chunk_out := broker.recv(65536):
                written += chunk_out
        return {"got": got, "by_paho": by_paho, "written": written}
    finally:
        io.detach()
        ours.close()
        broker.close()


@pytest.mark.parametrize("chunk", [1_000_000, 4096, 7, 1])
def test_fast_path_delivers_exactly_what_paho_delivers(chunk: int) -> None:
    stream, expected = mixed_stream()
    paho_only = asyncio.run(read_stream(stream, fast=False, chunk=chunk))
    fast = asyncio.run(read_stream(stream, fast=True, chunk=chunk))
    assert paho_only["got"] == expected
    assert fast["got"] == expected
    # the same bytes back to the broker: PUBACK 7, PUBREC 9, PUBCOMP 9, PUBACK 300
    assert fast["written"] == paho_only["written"] == bytes(
        [0x40, 2, 0, 7, 0x50, 2, 0, 9, 0x70, 2, 0, 9, 0x40, 2, 1, 44])
    # however the bytes are cut into reads, paho only sees what the fast path leaves (a PUBLISH split
    # across reads is completed from the socket, not handed to paho half read)
    assert fast["by_paho"] == [b"plant/q2", b"plant/\xff"]


def test_a_connection_closed_inside_a_publish_is_reported_lost(monkeypatch: Any) -> None:
    """Half a PUBLISH waits in the buffer for the rest; when the broker closes the connection instead, the
    next readable event hands over to paho, which reports the connection lost (no busy loop on EOF)."""
    readable_calls = 0
    original = LoopIO._readable

    def counted(self: LoopIO) -> None:
        nonlocal readable_calls
        readable_calls += 1
        original(self)

    monkeypatch.setattr(LoopIO, "_readable", counted)

    async def scenario() -> tuple[bool, list[bytes]]:
        ours, broker = socket.socketpair()
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2)
        got: list[bytes] = []
        client.fast_message = lambda _topic, payload: got.append(payload)
        io = attach_connected(client, ours)
        try:
            packet = publish_packet("plant/a", b"x" * 100)
            broker.sendall(publish_packet("plant/first", b"1") + packet[:40])
            await asyncio.sleep(0.05)
            assert client.awaiting_publish
            broker.close()
            for _ in range(100):
                if not io.attached:
                    break
                await asyncio.sleep(0.01)
            return io.attached, got
        finally:
            io.detach()
            ours.close()

    still_attached, got = asyncio.run(scenario())
    assert got == [b"1"]
    assert not still_attached
    assert readable_calls < 10


def test_fast_path_with_mqtt5_takes_packets_without_properties_only() -> None:
    content_type = bytes([0x03]) + len(b"json").to_bytes(2, "big") + b"json"
    stream = b"".join([publish_packet("t/plain", b"1", properties=b""),
                       publish_packet("t/props", b"2", properties=content_type),
                       publish_packet("t/q1", b"3", qos=1, mid=5, properties=b"")])
    paho_only = asyncio.run(read_stream(stream, fast=False, chunk=1_000_000, protocol=mqtt.MQTTv5))
    fast = asyncio.run(read_stream(stream, fast=True, chunk=1_000_000, protocol=mqtt.MQTTv5))
    expected = [(b"t/plain", b"1"), (b"t/props", b"2"), (b"t/q1", b"3")]
    assert paho_only["got"] == fast["got"] == expected
    assert fast["by_paho"] == [b"t/props"]
    assert fast["written"] == paho_only["written"]
    assert fast["written"][0] == 0x40  # the PUBACK for packet id 5


def test_a_write_the_socket_cannot_take_at_once_finishes_when_writable_and_then_stops_watching() -> None:
    """`flush` watches the socket for writability only while paho has bytes queued: the rest of a large
    message goes out as the peer reads, and then the loop stops asking (no busy loop on a writable socket)."""

    async def scenario() -> tuple[bytes, int, int]:
        ours, broker = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client, _counting, _received = client_on(ours)
        writes = 0
        loop_write = client.loop_write

        def counting_write() -> mqtt.MQTTErrorCode:
            nonlocal writes
            writes += 1
            return loop_write()

        client.loop_write = counting_write  # type: ignore[method-assign]
        io = LoopIO(asyncio.get_running_loop(), client)
        io.attach()
        payload = bytes(range(256)) * 2048  # 512 KiB: far more than the socket buffers take at once
        expected = publish_packet("big", payload)
        try:
            client.publish("big", payload)
            io.flush()
            assert client.want_write()  # the socket took only part of it
            broker.setblocking(False)
            got = bytearray()
            for _ in range(500):
                with contextlib.suppress(BlockingIOError):
                    got += broker.recv(1 << 16)
                if len(got) >= len(expected):
                    break
                await asyncio.sleep(0.002)
            done = writes
            await asyncio.sleep(0.1)  # writable all along now: a loop still watching would call again
            return bytes(got), done, writes
        finally:
            io.detach()
            ours.close()
            broker.close()

    got, writes_when_done, writes_later = asyncio.run(scenario())
    assert got == publish_packet("big", bytes(range(256)) * 2048)
    assert writes_when_done > 1  # the rest went out on writable events
    assert writes_later == writes_when_done
