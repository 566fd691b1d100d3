"""Pure pieces of the process layer: restart budget, sd_notify framing, rate-limited logs, queues."""

from __future__ import annotations

import asyncio
import builtins
import logging
import socket
from pathlib import Path

import pytest

from edge_agent.logtools import RateLimitedLog
from edge_agent.sources.base import DropOldestQueue, FairDropQueue
from edge_agent.supervisor import FatalTaskError, RestartBudget, _find_fatal
from edge_agent.systemd import Notifier
from tests.support import FakeClock


def test_restart_budget_five_in_sixty_seconds() -> None:
    clock = FakeClock()
    budget = RestartBudget(clock=clock)
    assert all(budget.spend() for _ in range(5))
    assert not budget.spend()  # the sixth within 60 s
    clock.now = 61.0
    assert budget.spend()  # old failures age out


def test_fatal_error_found_inside_task_groups() -> None:
    fatal = FatalTaskError("x")
    group = builtins.ExceptionGroup  # what asyncio.TaskGroup raises (Python 3.11)
    nested = group("outer", [ValueError("a"), group("inner", [fatal])])
    assert _find_fatal(nested) is fatal
    assert _find_fatal(ValueError("b")) is None


def test_notifier_sends_datagrams_and_reads_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000"})
        assert notifier.watchdog_interval_s == 3.0
        assert notifier.ready("loaded 2 models")
        assert server.recv(100) == b"READY=1\nSTATUS=loaded 2 models"
        assert notifier.watchdog()
        assert server.recv(100) == b"WATCHDOG=1"
        notifier.close()
    finally:
        server.close()


def test_notifier_outside_systemd_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval_s is None  # meant for another process
    assert Notifier({"NOTIFY_SOCKET": "@abstract"}).address == "\0abstract"


def test_rate_limited_log_counts_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLog(logging.getLogger("t"), interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING):
        assert limited.warning("bad line %d", 1)
        assert not limited.warning("bad line %d", 2)
        assert not limited.warning("bad line %d", 3)
        clock.now = 11
        assert limited.warning("bad line %d", 4)
    assert [r.getMessage() for r in caplog.records] == ["bad line 1", "bad line 4 (2 similar suppressed)"]


def test_rate_limited_log_logs_at_once_again_after_a_reset(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(logging.getLogger("t"), interval_s=60, clock=FakeClock())
    assert not limited.active
    with caplog.at_level(logging.WARNING):
        assert limited.error("disk full")
        assert not limited.error("disk full")
        assert limited.active
        limited.reset()  # the condition is over
        assert not limited.active
        assert limited.error("disk full again")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("ERROR", "disk full"),
                                                                      ("ERROR", "disk full again")]


def test_drop_oldest_queue_counts_drops() -> None:
    async def scenario() -> tuple[list[int | None], int]:
        dropped = 0

        def on_drop() -> None:
            nonlocal dropped
            dropped += 1

        queue: DropOldestQueue[int] = DropOldestQueue(2, on_drop)
        for item in (1, 2, 3):
            queue.put(item)
        queue.close()
        return [await queue.get(), await queue.get(), await queue.get()], dropped

    assert asyncio.run(scenario()) == ([2, 3, None], 1)


def test_fair_queue_drops_from_the_flooding_producer_and_serves_producers_in_turn() -> None:
    async def scenario() -> tuple[list[str], int]:
        dropped = 0

        def on_drop() -> None:
            nonlocal dropped
            dropped += 1

        queue: FairDropQueue[str] = FairDropQueue(6, on_drop, key=lambda item: item[0])
        queue.put("b0")
        for i in range(100):  # asset a floods
            queue.put(f"a{i}")
            if i == 50:
                queue.put("b1")
        queue.put("c0")
        assert len(queue) == 6
        queue.close()
        out = []
        while (item := await queue.get()) is not None:
            out.append(item)
        return out, dropped

    out, dropped = asyncio.run(scenario())
    # b's and c's windows all kept; a keeps its newest; a, b, c served in turn, each in its own order
    assert out == ["b0", "a97", "c0", "b1", "a98", "a99"]
    assert dropped == 97
