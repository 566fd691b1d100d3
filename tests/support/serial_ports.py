"""Virtual serial ports: a pty pair (no extra process) and a socat link that can be unplugged.

The code under test opens `device` with pyserial; the test plays the instrument on the other end.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
import tty
from pathlib import Path


class PtyPair:
    """`os.openpty()`: the agent opens `device`, the test reads/writes the master fd."""

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.master_fd)
        tty.setraw(self.slave_fd)
        self.device = os.ttyname(self.slave_fd)
        self._buffer = b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master_fd, view)
            view = view[written:]

    def write_line(self, line: str) -> None:
        self.write(line.encode() + b"\n")

    def read_line(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no full line from {self.device} within {timeout} s")
            ready, _, _ = select.select([self.master_fd], [], [], remaining)
            if ready:
                self._buffer += os.read(self.master_fd, 4096)
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class SocatSerialDevice:
    """A serial device path that can disappear and come back, like a USB adapter unplugged and replugged.

    `device` is a symlink the agent opens; `peer` is the test's end. `unplug()` kills socat, so the
    device path vanishes and the agent's reads fail; `replug()` recreates it at the same path.
    """

    def __init__(self, workdir: Path) -> None:
        self.socat = shutil.which("socat")
        if self.socat is None:
            raise FileNotFoundError("socat is not installed: apt-get install -y socat")
        workdir.mkdir(parents=True, exist_ok=True)
        self.device = workdir / "ttyAGENT"
        self.peer = workdir / "ttyTEST"
        self._proc: subprocess.Popen[bytes] | None = None
        self._peer_fd: int | None = None

    def plug(self, timeout: float = 10.0) -> None:
        self._proc = subprocess.Popen(
            [
                self.socat,
                "-d",
                f"pty,raw,echo=0,link={self.device}",
                f"pty,raw,echo=0,link={self.peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (self.device.exists() and self.peer.exists()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError("socat did not create the pty links")
            time.sleep(0.01)
        self._peer_fd = os.open(self.peer, os.O_RDWR | os.O_NOCTTY)

    def write_line(self, line: str) -> None:
        if self._peer_fd is None:
            raise RuntimeError("device is unplugged")
        os.write(self._peer_fd, line.encode() + b"\n")

    def unplug(self) -> None:
        if self._peer_fd is not None:
            os.close(self._peer_fd)
            self._peer_fd = None
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(timeout=10)
            self._proc = None
        for link in (self.device, self.peer):
            link.unlink(missing_ok=True)

    def replug(self) -> None:
        self.unplug()
        self.plug()
