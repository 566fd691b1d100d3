from collections.abc import Iterator
from itertools import islice

import pytest

from edge_agent.backoff import Reconnects, backoff_ceilings, backoff_delays
from tests.support import FakeClock


def test_ceilings_grow_geometrically_then_stay_at_cap() -> None:
    ceilings = list(islice(backoff_ceilings(base=1.0, cap=5.0, factor=2.0), 6))
    assert ceilings == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_delays_are_full_jitter_within_ceiling() -> None:
    delays = list(islice(backoff_delays(base=0.5, cap=30.0, factor=1.5), 200))
    ceilings = list(islice(backoff_ceilings(base=0.5, cap=30.0, factor=1.5), 200))
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[-50:]) > 1.0  # the spread reaches well past the base once the ceiling has grown


def test_fresh_iterator_resets_to_base() -> None:
    calls: list[float] = []
    it = backoff_delays(base=1.0, cap=8.0, factor=2.0, rng=lambda lo, hi: calls.append(hi) or hi)
    list(islice(it, 4))
    list(islice(backoff_delays(base=1.0, cap=8.0, factor=2.0, rng=lambda lo, hi: calls.append(hi) or hi), 1))
    assert calls == [1.0, 2.0, 4.0, 8.0, 1.0]


@pytest.mark.parametrize(("base", "cap", "factor"), [(0.0, 1.0, 1.5), (1.0, -1.0, 1.5), (1.0, 2.0, 0.5)])
def test_bad_parameters_are_rejected(base: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        next(backoff_delays(base, cap, factor))


def ceilings() -> Iterator[float]:
    return backoff_ceilings(base=1.0, cap=8.0, factor=2.0)


def test_a_connection_that_held_resets_the_backoff() -> None:
    clock = FakeClock()
    reconnects = Reconnects(ceilings, stable_s=10.0, clock=clock)
    assert [reconnects.failed() for _ in range(3)] == [1.0, 2.0, 4.0]
    reconnects.connected()
    clock.now += 10.0
    assert reconnects.held()
    assert reconnects.lost() == 1.0  # from base again (a jittered pause of at most base) ...
    assert reconnects.failed() == 2.0  # ... and the failures after it grow from there


def test_a_connection_dropped_at_once_counts_as_a_failed_try() -> None:
    """A broker dropping one of two clients with the same client id accepts each connection and drops it
    at once: the loop must slow down, not spin."""
    clock = FakeClock()
    reconnects = Reconnects(ceilings, stable_s=10.0, clock=clock)
    delays = []
    for _ in range(5):
        reconnects.connected()
        clock.now += 0.1
        assert not reconnects.held()
        delays.append(reconnects.lost())
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert not reconnects.held()  # nothing connected now


def test_a_connection_closed_on_purpose_neither_fails_nor_resets() -> None:
    clock = FakeClock()
    reconnects = Reconnects(ceilings, stable_s=10.0, clock=clock)
    assert reconnects.failed() == 1.0
    reconnects.connected()
    reconnects.closed()  # e.g. the sink hangs up after a refused alert, which has its own backoff
    assert not reconnects.held()
    assert reconnects.failed() == 2.0
