"""Log lines for conditions that repeat (a device spewing garbage, a full disk failing every write): the
first occurrence at once, then at most one line per interval, so the journal is never flooded."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """Logs the first occurrence at once, then at most one line per `interval_s` with a count of the rest.
    `reset()` when the condition is over, so its next occurrence is logged at once again."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Log unless one was logged in the last interval; returns whether it was logged."""
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> bool:
        """`warning` at ERROR level."""
        return self.log(logging.ERROR, msg, *args)

    def log(self, level: int, msg: str, *args: object) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            self.logger.log(level, "%s (%d similar suppressed)", msg % args, self.suppressed)
        else:
            self.logger.log(level, msg, *args)
        self._last = now
        self.suppressed = 0
        return True

    @property
    def active(self) -> bool:
        """A line was logged since the start or the last `reset()`."""
        return self._last is not None

    def reset(self) -> None:
        self._last = None
        self.suppressed = 0
