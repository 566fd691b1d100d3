"""A paho-mqtt client driven by the asyncio event loop (paho's external-loop API), for sources and sinks.

paho's own `loop_start()` runs the network in a thread: every message then crosses to the event loop with
`call_soon_threadsafe`, and the two threads take turns at the interpreter lock while the agent is busy. Here
the loop itself watches the client's socket (`add_reader`, `add_writer` while paho has bytes queued) and
runs keepalive from a 1 s timer, so a message is read, parsed and acted on in the same loop turn, and a
publish is written to the socket by the code that decided it. Only the blocking TCP/TLS connect runs in a
worker thread (`connect_on_loop`).

`BufferedClient` reads the socket in large chunks: paho asks the socket for each packet's header byte,
length bytes and body separately, and every such `recv` is a system call that lets go of the interpreter lock
(which the event loop may then wait to get back). With the buffer, a readable event costs one `recv` however
many packets arrived, and whether more packets wait is known without asking the kernel. A client with a
`fast_message` handler (the MQTT source) also takes the common incoming packet, a PUBLISH at QoS 0 or 1
without MQTT 5 properties, straight from the buffer to that handler (`read_publishes`), without paho's
per-packet objects, logging and topic matching: a profile of the agent under the benchmark's load had paho's
handling of each message as 44 % of the event loop's busy time. A PUBLISH split across reads (TCP segments,
a 64 KiB read ending inside one) is completed from the socket, or waits in the buffer for the next readable
event, rather than being handed to paho half read. Every other packet, and any packet paho has begun to
read, goes through paho's `loop_read`.

paho calls `on_message`, `on_publish` and `on_connect` from inside `loop_read`/`loop_write`, so on the loop
thread. `on_disconnect` can also come from the connect worker thread, when writing the CONNECT packet
fails; handlers of it must hand over with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

# Packets read per readable event before the loop gets a turn for other work. paho reads one packet per
# `loop_read`; reading on while the buffer has more saves a pass through the selector per packet.
READ_BURST = 64
RECV_BYTES = 65536
PUBLISH = 0x30  # fixed-header packet type of PUBLISH (high nibble 3)


class BufferedClient(mqtt.Client):
    """A paho client whose socket reads go through a buffer (one `recv` of up to 64 KiB at a time).

    It overrides paho's internal `_sock_recv` (paho-mqtt 2.x, pinned below 3 in pyproject.toml), the one
    place paho reads its socket, and reads paho's `_in_packet` state (a packet paho has begun to read stays
    paho's). The buffer belongs to one connection and is emptied at each (re)connect.

    `fast_message(topic, payload)`, when set, receives the PUBLISH packets `read_publishes` takes from the
    buffer; it must not raise (paho's `on_message` contract: the MQTT source catches everything itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self.fast_message: Callable[[str, bytes], None] | None = None
        # `read_publishes` stopped inside a PUBLISH it will take once the rest arrives (the socket had no
        # more yet): the loop waits for the next readable event rather than let paho begin that packet
        self.awaiting_publish = False

    def reconnect(self) -> mqtt.MQTTErrorCode:
        self._rbuf, self._rpos = b"", 0
        return super().reconnect()

    def buffered(self) -> bool:
        """Bytes already read from the socket wait to be parsed."""
        return self._rpos < len(self._rbuf)

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(RECV_BYTES)  # BlockingIOError when nothing is there; b"" at EOF
            if len(data) <= bufsize:
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = end = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start:end]

    def fill(self) -> bool:
        """Have bytes in the buffer for `read_publishes`: True when some are buffered or one `recv` brought
        some. False when paho should read instead: it is inside a packet, or the socket has nothing, is at
        EOF or failed (paho's own `recv` in `loop_read` then meets the same state and reports it)."""
        if self.buffered():
            return True
        if self._in_packet["command"] != 0:
            return False
        try:
            data = super()._sock_recv(RECV_BYTES)
        except OSError:  # BlockingIOError: nothing yet; a real error shows again to paho's recv (or EOF)
            return False
        if not data:
            return False
        self._rbuf, self._rpos = data, 0
        return True

    def _recv_more(self) -> bool | None:
        """Append what the socket has now to the unread part of the buffer: True when bytes came, False
        when none are there yet, None at EOF or on an error (which paho's own read then meets)."""
        try:
            data = super()._sock_recv(RECV_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            return None
        if not data:
            return None
        self._rbuf, self._rpos = self._rbuf[self._rpos:] + data, 0
        return True

    def read_publishes(self, limit: int) -> int:
        """Hand up to `limit` complete PUBLISH packets at the front of the buffer to `fast_message`,
        acknowledging QoS 1 ones (PUBACK) as paho does. A PUBLISH split across reads is completed from the
        socket; when the rest is not there yet, `awaiting_publish` is set and the packet waits in the buffer
        for the next readable event. Stops at the first packet that is anything else (another type, QoS 2,
        MQTT 5 properties, a topic that is not UTF-8, a malformed length): paho's `loop_read` reads that
        one. Returns the packets handled."""
        self.awaiting_publish = False
        handler = self.fast_message
        if handler is None or self._in_packet["command"] != 0:
            return 0
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        v5 = self._protocol == mqtt.MQTTv5
        handled = 0
        while handled < limit and pos < end:
            first = buf[pos]
            qos = (first >> 1) & 3
            if first & 0xF0 != PUBLISH or qos > 1:
                break
            # remaining length: 7 bits a byte, least significant first, at most 4 bytes
            i, length, shift, complete = pos + 1, 0, 0, False
            while i < end and shift < 28:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    complete = True
                    break
            if not complete and shift >= 28:
                break  # longer than 4 bytes: malformed, paho reports it
            if not complete or i + length > end:  # the rest of this PUBLISH is still on its way
                more = self._recv_more()
                if more:
                    buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
                    continue
                self.awaiting_publish = more is False
                break
            body_end = i + length
            if length < 2:
                break
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            payload_at = topic_end + (2 if qos else 0)
            if v5:
                if payload_at >= body_end or buf[payload_at] != 0:
                    break  # properties (or none at all): paho decodes them
                payload_at += 1
            if payload_at > body_end:
                break
            try:
                topic = buf[i + 2:topic_end].decode("utf-8")
            except UnicodeDecodeError:
                break
            pos = self._rpos = body_end
            handled += 1
            handler(topic, buf[payload_at:body_end])
            if qos:
                self._send_puback((buf[topic_end] << 8) | buf[topic_end + 1])
            if self._rbuf is not buf:  # the handler ended the connection: the buffer went with it
                break
        if handled:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()  # paho's keepalive clock
        return handled


@dataclass(frozen=True)
class Login:
    """How a client authenticates to its broker: an optional username and password (read from its file by
    whoever builds this; never logged), and TLS (`tls`; without `ca` the system's CAs verify the broker)
    with an optional client certificate. Both of the agent's MQTT clients and `edge-agent doctor`'s login
    probe apply it the same way."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def apply(self, client: mqtt.Client) -> None:
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=str(self.ca) if self.ca else None,
                           certfile=str(self.cert) if self.cert else None,
                           keyfile=str(self.key) if self.key else None,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)


def password_text(text: str) -> str:
    """A password file's content as the password: without surrounding whitespace (the line ending, a space
    an editor left), for `[mqtt]` and sources alike."""
    return text.strip()


class ConnectRefusedError(ConnectionError):
    """The broker answered CONNACK with a failure (bad credentials, not authorised, ...), or the connection
    ended before it was established."""


def connect_failure(exc: BaseException, host: str, port: int, tls: bool) -> str:
    """Why a connection to broker `host:port` failed, for the log and the status: a broker that answered and
    refused the login is not "not reachable", and a TLS client reset by a plain listener gets a hint."""
    broker = f"broker {host}:{port}"
    if isinstance(exc, ConnectRefusedError):
        return f"{broker} refused the connection ({exc}): check the username and password (file)"
    hint = ""
    if tls and isinstance(exc, ConnectionResetError | ssl.SSLError):
        hint = ": TLS is configured; is this port a TLS listener?"
    elif not tls and isinstance(exc, ConnectionResetError):
        hint = ": TLS is not configured; is this port a TLS listener?"
    return f"{broker} not reachable ({exc}{hint})"


class NoSocketError(ConnectionError):
    """paho reported a connection but has no socket."""


def settle_connack(fut: asyncio.Future[None], reason: Any) -> bool:
    """Resolve the future a connect awaits from CONNACK's reason code; True when the broker accepted."""
    if getattr(reason, "is_failure", False):
        fut.set_exception(ConnectRefusedError(f"broker refused the connection: {reason}"))
        return False
    fut.set_result(None)
    return True


def close_connection(client: mqtt.Client | None, io: LoopIO | None) -> None:
    """End a connection: DISCONNECT is written at once (paho then closes the socket, and `on_socket_close`
    detaches `io`); the loop stops watching the socket in any case. Either may be None (a connect that
    failed half-way)."""
    if client is not None:
        with contextlib.suppress(Exception):
            client.disconnect()
    if io is not None:
        io.detach()


async def connect_on_loop(loop: asyncio.AbstractEventLoop, client: mqtt.Client, host: str, port: int,
                          keepalive: int, **kwargs: Any) -> LoopIO:
    """Open the TCP (and TLS) connection in a worker thread, send CONNECT, and hand the socket to the loop.
    The CONNACK arrives later through `on_connect`. Raises OSError (and ssl.SSLError) when unreachable."""
    await asyncio.to_thread(client.connect, host, port, keepalive, **kwargs)
    io = LoopIO(loop, client)
    io.attach()
    return io


class LoopIO:
    """One connected client's socket, watched by the event loop until the connection closes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client) -> None:
        self.loop = loop
        self.client = client
        self._fd: int | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._watching_writes = False  # add_writer/remove_writer only on a change (flush runs every read)

    @property
    def attached(self) -> bool:
        """The loop still watches the socket (False once paho closed it)."""
        return self._fd is not None

    def attach(self) -> None:
        sock = self.client.socket()
        if sock is None:
            raise NoSocketError("no socket after connect")
        self._fd = sock.fileno()
        self.client.on_socket_close = lambda _c, _u, _s: self.detach()  # before paho closes the socket
        self.loop.add_reader(self._fd, self._readable)
        self._tick_handle = self.loop.call_later(1.0, self._tick)
        self.flush()

    def detach(self) -> None:
        """Stop watching the socket (idempotent)."""
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
        self._fd = None
        self._watching_writes = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def flush(self) -> None:
        """Write what paho has queued; what the socket does not take now waits for it to be writable."""
        if self._fd is None:
            return
        client = self.client
        if client.want_write():
            client.loop_write()
        if self._fd is None:  # the write found the connection gone
            return
        if client.want_write():
            if not self._watching_writes:
                self.loop.add_writer(self._fd, self._writable)
                self._watching_writes = True
        elif self._watching_writes:
            self.loop.remove_writer(self._fd)
            self._watching_writes = False

    def _more_to_read(self) -> bool:
        client = self.client
        if isinstance(client, BufferedClient) and client.buffered():
            return True
        sock = client.socket()
        # TLS: records already decrypted wait inside the SSL object, invisible to the selector
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _readable(self) -> None:
        if self._fd is None:  # a scheduled read after the connection closed
            return
        client = self.client
        fast = client if isinstance(client, BufferedClient) and client.fast_message is not None else None
        reads = 0
        while reads < READ_BURST:
            handled = fast.read_publishes(READ_BURST - reads) if fast is not None and fast.fill() else 0
            if handled:
                reads += handled
            elif fast is not None and fast.awaiting_publish:
                break  # the rest of a PUBLISH comes with a later readable event
            else:
                reads += 1
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:  # any other packet, EOF and errors: paho
                    break
            if self._fd is None or not self._more_to_read():
                break
        else:  # let other work run; what is buffered needs no readable event
            self.loop.call_soon(self._readable)
        self.flush()

    def _writable(self) -> None:
        self.client.loop_write()
        self.flush()

    def _tick(self) -> None:
        self._tick_handle = self.loop.call_later(1.0, self._tick)
        self.client.loop_misc()  # keepalive: PINGREQ when due, drop a connection whose PINGRESP is overdue
        self.flush()
