"""The one reconnect helper: capped exponential backoff with full jitter.

The agent's reconnect loops (serial reopen, MQTT sources, MQTT upstream) take their delays from a
`Reconnects`, which draws them from `backoff_delays()`:

    reconnects = Reconnects()
    while True:
        try:
            connect()
        except OSError:
            await asyncio.sleep(reconnects.failed())
            continue
        reconnects.connected()
        serve()                                  # until the connection is lost
        await asyncio.sleep(reconnects.lost())   # from `base` again when it held STABLE_CONNECTION_S

A connection the other end drops right after accepting it (a broker dropping one of two clients with the
same client id, a USB adapter that resets) counts as a failed try, so such a loop slows down instead of
spinning; the delays start again from `base` only once a connection has held.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

STABLE_CONNECTION_S = 10.0  # a connection that held this long resets the backoff


def backoff_delays(base: float = 0.5, cap: float = 30.0, factor: float = 1.5,
                   rng: Callable[[float, float], float] | None = None) -> Iterator[float]:
    """Endless delays in seconds: attempt `i` waits `uniform(0, min(cap, base * factor**i))`.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads reconnects of many
    gateways after a broker restart. `rng` defaults to `random.uniform`; tests inject a fake.
    """
    if base <= 0 or cap <= 0:
        raise ValueError(f"backoff base and cap must be positive, got base={base!r} cap={cap!r}")
    if factor < 1:
        raise ValueError(f"backoff factor must be at least 1, got {factor!r}")
    draw = rng if rng is not None else random.uniform
    ceiling = base
    while True:
        yield draw(0.0, min(cap, ceiling))
        if ceiling < cap:
            ceiling *= factor


def backoff_ceilings(base: float = 0.5, cap: float = 30.0, factor: float = 1.5) -> Iterator[float]:
    """The upper bound of each delay `backoff_delays` draws (no jitter): for docs and tests."""
    return backoff_delays(base, cap, factor, rng=lambda _low, high: high)


class Reconnects:
    """The delays of one reconnect loop (module docstring). `delays` makes a fresh delay iterator
    (`backoff_delays` unless a test injects one); `clock` is monotonic seconds."""

    def __init__(self, delays: Callable[[], Iterator[float]] = backoff_delays,
                 stable_s: float = STABLE_CONNECTION_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._make = delays
        self._delays = delays()
        self._stable_s = stable_s
        self._clock = clock
        self._connected_at: float | None = None

    def failed(self) -> float:
        """A try failed: the seconds to wait before the next one."""
        return next(self._delays)

    def connected(self) -> None:
        """A try succeeded: the connection is up from now."""
        self._connected_at = self._clock()

    def held(self) -> bool:
        """Whether the current (or last) connection has been up `stable_s` or more."""
        return self._connected_at is not None and self._clock() - self._connected_at >= self._stable_s

    def lost(self) -> float:
        """The connection was lost: when it had held `stable_s`, the delays start again from `base` and the
        first of them is returned (a jittered pause of at most `base`: gateways that lost one broker at once
        do not all come back in the same instant); else it counts as a failed try and the next delay is
        returned."""
        held = self.held()
        self._connected_at = None
        if held:
            self._delays = self._make()
        return self.failed()

    def closed(self) -> None:
        """This side closed the connection on purpose (not a failure, not a success)."""
        self._connected_at = None
