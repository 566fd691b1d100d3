"""Real components for tests: a private mosquitto, pty and socat serial ports, small real bundles."""

import asyncio
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail with `what` after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.01)


async def poll_until(predicate: Callable[[], bool], what: str = "condition", timeout: float = 20.0) -> None:
    """`wait_until` inside a running event loop: polls without blocking the loop the tested code runs on."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polls state set on this same loop
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached within {timeout} s") from None


class FakeClock:
    """A clock tests move by hand: `clock.now += 5`; calling it returns `now`."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
