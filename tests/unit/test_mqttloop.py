"""The event-loop driven paho client: buffered socket reads (many packets per `recv`, packets split across
reads), and a burst larger than one read turn still delivered without a new readable event."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import paho.mqtt.client as mqtt

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
