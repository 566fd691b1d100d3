"""Ordered marking in the MQTT sink: a PUBACK marks a row delivered only once every older row in flight
was acknowledged (pure logic; the broker round trips are in tests/integration/test_sinks_mqtt.py)."""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.sinks.mqtt import MqttUpstream, MqttUpstreamConfig
from edge_agent.types import GatewayIdentity


class FakeStore:
    def __init__(self) -> None:
        self.delivered: list[str] = []

    def mark_delivered(self, alert_ids: Iterable[str]) -> None:
        self.delivered.extend(alert_ids)

    def incr_counters(self, deltas: dict[str, int]) -> None:
        pass


class Reason:
    def __init__(self, failure: bool) -> None:
        self.is_failure = failure


def test_out_of_order_pubacks_mark_only_the_acknowledged_prefix() -> None:
    store = FakeStore()
    upstream = MqttUpstream(MqttUpstreamConfig(host="unused"), GatewayIdentity("s", "a", "l", "g"),
                            store, health=dict)
    client = object()
    upstream._client = client
    for mid, seq in ((11, 1), (12, 2), (13, 3)):
        upstream._inflight[mid] = (seq, f"alert-{seq}")
        upstream._order.append(mid)
    ok = Reason(failure=False)
    upstream._ack(client, 12, ok)
    assert store.delivered == []
    upstream._ack(object(), 11, ok)  # a stale client's callback is ignored
    assert store.delivered == []
    upstream._ack(client, 11, ok)
    assert store.delivered == ["alert-1", "alert-2"]
    upstream._ack(client, 13, Reason(failure=True))  # rejected: unblocks the queue
    assert store.delivered == ["alert-1", "alert-2", "alert-3"]
    assert upstream._inflight == {}
