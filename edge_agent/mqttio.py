"""A paho-mqtt client whose network I/O runs on the asyncio event loop instead of a paho thread.

paho's documented external-loop integration (`loop_read` when the socket is readable, `loop_write` when
paho has data to send, `loop_misc` once a second for keepalive), as in paho's own `loop_asyncio.py`
example. The agent's sources and upstream sink use it so that no paho network thread competes with the
event loop for the interpreter: with one such thread per connection, every message crossed threads
and waited for the GIL at each hand-over (docs/deployment.md, "Performance").

Only the TCP/TLS connect runs in a worker thread (name resolution and an unreachable host can block for
seconds); from the moment it returns, every call on the client is made on the loop's thread, so paho's
callbacks (`on_connect`, `on_message`, `on_publish`, `on_disconnect`) run there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 1.0  # keepalive checks (PINGREQ, a lost PINGRESP) need no finer clock



class LoopIO:
    """Drives one connection of `client` from the running event loop; one `LoopIO` per connection."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.closed = asyncio.Event()  # set once the socket is closed (clean or lost)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._fd = -1  # registered with the loop by number: a socket paho closed has no fileno() left
        self._misc: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int, keepalive: int, **kwargs: Any) -> None:
        """Open the connection (CONNECT sent; the CONNACK arrives through `on_connect` later)."""
        self._loop = asyncio.get_running_loop()
        # no socket callbacks and no thread yet: paho writes the CONNECT packet from inside connect()
        await asyncio.to_thread(self.client.connect, host, port, keepalive, **kwargs)
        sock = self.client.socket()
        if sock is None:
            raise ConnectionError(f"connection to {host}:{port} closed during the handshake")
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            # small messages, sent one by one: no Nagle delay behind delayed ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._fd = sock, sock.fileno()
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self._loop.add_reader(self._fd, self._read)
        if self.client.want_write():
            self._loop.add_writer(self._fd, self._write)
        self._misc = self._loop.create_task(self._misc_loop(), name="mqtt[keepalive]")

    def _read(self) -> None:
        # one packet per readable event, as paho's own loop does, so other work gets its turn between the
        # messages of a burst; TLS may hold more decrypted bytes with nothing left on the socket
        sock = self._sock
        while self.client.loop_read() == mqtt.MQTT_ERR_SUCCESS and sock is self._sock:
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                return

    def _write(self) -> None:
        self.client.loop_write()

    async def _misc_loop(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(MISC_INTERVAL_S)
            self.client.loop_misc()

    def _on_register_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.add_writer(self._fd, self._write)

    def _on_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.remove_writer(self._fd)

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None and sock is self._sock:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._sock, self._fd = None, -1
        self.closed.set()

    async def close(self, timeout: float = 2.0) -> None:
        """DISCONNECT (written by the loop), wait for the socket to close, stop the keepalive task."""
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)
        if self._sock is not None:  # the broker never read it: drop the socket ourselves
            sock = self._sock
            self._on_socket_close(self.client, None, sock)
            with contextlib.suppress(OSError):
                sock.close()
        if self._misc is not None:
            self._misc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc
        self.closed.set()
