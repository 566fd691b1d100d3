"""The one reconnect helper: capped exponential backoff with full jitter.

The agent's reconnect loops (serial reopen, MQTT sources, MQTT upstream) draw their delays from
`backoff_delays()`. Resetting after a success is taking a fresh iterator:

    delays = backoff_delays()
    while True:
        try:
            connect()
        except OSError:
            await asyncio.sleep(next(delays))
            continue
        delays = backoff_delays()   # success: start again from `base`
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


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
