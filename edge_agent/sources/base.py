"""What every source shares: a bounded drop-oldest queue, counters, a connection state, rate-limited logs.

A source is an async context manager and an async iterator of `Reading`s:

    async with SerialSource(name, config) as source:
        async for reading in source:
            ...

Entering starts the source's own task (open the device, reconnect with backoff, parse); leaving stops it.
The queue between that task and the consumer is bounded: when full the oldest reading is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar

from edge_agent.configtools import ConfigError, Section
from edge_agent.logtools import RateLimitedLog
from edge_agent.types import Reading

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class SourceStats:
    """Counters shown by `edge-agent status` (and stored by the supervisor)."""

    state: str = "starting"  # starting | connected | disconnected | finished
    received: int = 0
    invalid: int = 0
    dropped: int = 0
    reconnects: int = 0
    last_error: str | None = None  # why the last connect or open failed, or the connection was lost

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "received": self.received, "invalid": self.invalid,
                "dropped": self.dropped, "reconnects": self.reconnects, "last_error": self.last_error}


class DropOldestQueue(Generic[T]):
    """A bounded FIFO for one consumer on the event loop: `put` never blocks, it evicts the oldest."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None]) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = maxsize
        self._on_drop = on_drop
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> None:
        self._push(item)
        self._ready.set()

    def _push(self, item: T) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self._on_drop()
        self._items.append(item)

    def _pop(self) -> T:
        return self._items.popleft()

    def close(self) -> None:
        """No more items will come; `get` returns None once the queue is empty."""
        self._closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)

    def get_nowait(self) -> T | None:
        """The next item, or None when empty."""
        if not len(self):
            return None
        item = self._pop()
        self._room.set()
        return item

    async def get(self) -> T | None:
        while not len(self):
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        item = self._pop()
        self._room.set()
        return item

    async def wait_for_room(self) -> None:
        """For producers that must not drop (a replay): wait until the queue is below its bound."""
        while len(self) >= self._maxsize:
            self._room.clear()
            await self._room.wait()


class FairDropQueue(DropOldestQueue[T]):
    """`DropOldestQueue` shared by several producers (the window queue: one per asset). When full, `put`
    evicts the oldest item of the producer with the most items waiting, so an asset flooded with readings
    loses its own windows, not another asset's; `get` serves the producers in turn (round robin), each in
    its own order, so a quiet asset's windows are not scored behind a flood."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None], key: Callable[[T], Any]) -> None:
        super().__init__(maxsize, on_drop)
        self._key = key
        self._queues: dict[Any, collections.deque[T]] = {}
        self._turns: collections.deque[Any] = collections.deque()  # producers with items, next first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _push(self, item: T) -> None:
        key = self._key(item)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = collections.deque()
        if not queue:
            self._turns.append(key)
        queue.append(item)
        self._size += 1
        if self._size > self._maxsize:
            longest = max(self._turns, key=lambda k: len(self._queues[k]))
            self._queues[longest].popleft()
            self._size -= 1
            if not self._queues[longest]:
                self._turns.remove(longest)
            self._on_drop()

    def _pop(self) -> T:
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        self._size -= 1
        if queue:
            self._turns.append(key)
        return item


class Source:
    """Base class: subclasses implement `_run()` (the producing loop) and call `_emit()`/`_invalid()`."""

    kind = "base"
    # A lossless source (a replay) waits for room downstream instead of having windows dropped.
    lossless = False
    # Readings are made on the event loop, where they were read (the MQTT source): `deliver` can hand each
    # one straight to its consumer, without the reading queue and a task switch per reading.
    produces_on_loop = False

    def __init__(self, name: str, queue_size: int = 1000) -> None:
        self.name = name
        self.stats = SourceStats()
        self._queue_size = queue_size
        self._queue: DropOldestQueue[Reading] | None = None
        self._task: asyncio.Task[None] | None = None
        self._consumer: Callable[[Reading], None] | None = None
        self._invalid_log = RateLimitedLog(logging.getLogger(f"{__name__}.{name}"))

    @property
    def task_name(self) -> str:
        return f"source[{self.kind}:{self.name}]"

    async def __aenter__(self) -> Source:
        self._queue = DropOldestQueue(self._queue_size, self._dropped)
        self._task = asyncio.create_task(self._run_and_close(), name=f"{self.task_name}:reader")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            self._task = None
        await self._cleanup()

    def __aiter__(self) -> AsyncIterator[Reading]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Reading]:
        if self._queue is None:
            raise RuntimeError(f"source {self.name!r} used outside 'async with'")
        while True:
            if self._task is not None and self._task.done() and not self._task.cancelled():
                error = self._task.exception()
                if error is not None:
                    raise error
            item = await self._queue.get()
            if item is None:
                if self._task is not None and self._task.done() and not self._task.cancelled():
                    error = self._task.exception()
                    if error is not None:
                        raise error
                return
            yield item

    async def deliver(self, consumer: Callable[[Reading], None]) -> None:
        """Hand every reading to `consumer` until the source ends (inside `async with`); raises the source's
        error or the consumer's. A source that `produces_on_loop` calls `consumer` in the loop turn that made
        the reading (its queue is bypassed); any other is iterated as with `async for`."""
        if not self.produces_on_loop:
            async for reading in self:
                consumer(reading)
            return
        if self._task is None or self._queue is None:
            raise RuntimeError(f"source {self.name!r} used outside 'async with'")
        failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def guarded(reading: Reading) -> None:
            try:
                consumer(reading)
            except Exception as exc:  # noqa: BLE001 - ends `deliver` with it, like an error of `async for`
                self._consumer = None  # the readings after it go to the queue, read by the next consumer
                if not failure.done():
                    failure.set_exception(exc)

        while (queued := self._queue.get_nowait()) is not None:  # made before the hand-over
            consumer(queued)
        self._consumer = guarded
        try:
            await asyncio.wait({self._task, failure}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._consumer = None
        if failure.done():
            failure.result()  # raises the consumer's error
        if self._task.done() and not self._task.cancelled() and (error := self._task.exception()):
            raise error

    async def _run_and_close(self) -> None:
        try:
            await self._run()
        finally:
            if self._queue is not None:
                self._queue.close()

    async def _run(self) -> None:
        raise NotImplementedError

    async def _cleanup(self) -> None:
        """Release what `_run` may have left open (called on exit, also after cancellation)."""

    def describe(self) -> dict[str, Any]:
        """Type, connection state and counters, for `edge-agent status`."""
        return {"type": self.kind, **self.stats.as_dict()}

    def _emit(self, reading: Reading) -> None:
        self.stats.received += 1
        if self._consumer is not None:
            self._consumer(reading)
        elif self._queue is not None:
            self._queue.put(reading)

    def _dropped(self) -> None:
        self.stats.dropped += 1

    def _invalid(self, what: str, error: Exception) -> None:
        self.stats.invalid += 1
        self._invalid_log.warning("source %s: invalid %s: %s (invalid so far: %d)", self.name, what, error,
                                  self.stats.invalid)


@dataclass(frozen=True)
class SecretRef:
    """A secret file the config names that can only be located under systemd: `credential:NAME` or a path
    through `${CREDENTIALS_DIRECTORY}` while that variable is unset (`edge-agent status`, `doctor`,
    `bundle install` run from a shell). Only `run` needs the secret: `read_secret` resolves it then."""

    value: str
    key_path: str
    base_dir: Path

    def __str__(self) -> str:
        return self.value


def secret_file(value: str, key_path: str, base_dir: Path) -> Path | SecretRef:
    """Where a secret lives: `credential:NAME` is `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`),
    anything else a file path (relative to the config file, `${VAR}` expanded, as for `[mqtt]`). Secrets
    never sit in the config text. While `$CREDENTIALS_DIRECTORY` is unset a reference to it is checked for
    syntax only and kept as a `SecretRef`; when it is set, the credential file must exist."""
    return _locate_secret(value, key_path, base_dir, defer=True)


def existing_secret(value: str, key_path: str, base_dir: Path) -> Path | SecretRef:
    """`secret_file`, and a plain file path must name a file now (`check-config` then catches a typo,
    rather than `run` failing at every connect)."""
    located = secret_file(value, key_path, base_dir)
    if isinstance(located, Path) and not located.is_file():
        raise ConfigError(key_path, f"file not found: {located}", value)
    return located


def broker_login(section: Section, base_dir: Path) -> tuple[str | None, Path | SecretRef | None]:
    """`username` and `password_file` of a broker connection (a source's or `[mqtt]`): the password file is
    located now (`existing_secret`) and needs a username beside it."""
    username = section.optional("username", str)
    password = section.optional("password_file", str)
    if password is None:
        return username, None
    if username is None:
        raise ConfigError(section.key_path("password_file"), "needs `username` as well")
    return username, existing_secret(password, section.key_path("password_file"), base_dir)


def _locate_secret(value: str, key_path: str, base_dir: Path, *, defer: bool) -> Path | SecretRef:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if value.startswith("credential:"):
        name = value.removeprefix("credential:")
        if not name or "/" in name or name in (".", ".."):
            raise ConfigError(key_path, "credential name must be a plain file name", value)
        if not directory:
            if defer:
                return SecretRef(value, key_path, base_dir)
            raise ConfigError(key_path, "names a systemd credential but $CREDENTIALS_DIRECTORY is not set"
                              " (only `edge-agent run` under systemd with LoadCredential= has it)", value)
        path = Path(directory) / name
        if not path.is_file():
            raise ConfigError(key_path, f"credential not found: {path} (is there a LoadCredential={name}:"
                              "... line in the unit?)", value)
        return path
    if defer and not directory and _CREDENTIALS_VAR.search(value):
        return SecretRef(value, key_path, base_dir)
    expanded = os.path.expandvars(value)
    if "$" in expanded:
        raise ConfigError(key_path, "names an environment variable that is not set", value)
    path = Path(expanded)
    return path if path.is_absolute() else base_dir / path


_CREDENTIALS_VAR = re.compile(r"\$\{?CREDENTIALS_DIRECTORY\b")


def secret_path(secret: Path | SecretRef) -> Path:
    """Where a secret file is, located now (a `ConfigError` when a `SecretRef` still cannot be located)."""
    if isinstance(secret, Path):
        return secret
    located = _locate_secret(secret.value, secret.key_path, secret.base_dir, defer=False)
    assert isinstance(located, Path)
    return located


def read_secret(secret: Path | SecretRef, key_path: str) -> str:
    """The text of a secret file, located now (see `secret_file`); a `ConfigError` naming `key_path` when it
    cannot be located or read. The text is never logged."""
    path = secret_path(secret)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key_path, f"cannot read: {exc.strerror}", str(path)) from exc
