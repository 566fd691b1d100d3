"""Ordered marking in the MQTT sink: a PUBACK marks a row delivered only once every older row in flight
was acknowledged (pure logic; the broker round trips are in tests/integration/test_sinks_mqtt.py)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Iterable

import pytest

from edge_agent.sinks.mqtt import ConnectRefusedError, MqttUpstream, MqttUpstreamConfig
from edge_agent.types import GatewayIdentity


class FakeStore:
    def __init__(self) -> None:
        self.delivered: list[str] = []
        self.rejected: list[tuple[str, str]] = []

    def mark_delivered(self, alert_ids: Iterable[str]) -> None:
        self.delivered.extend(alert_ids)

    def mark_rejected(self, rejections: Iterable[tuple[str, str]]) -> None:
        self.rejected.extend(rejections)


class Reason:
    def __init__(self, failure: bool, value: int = 0) -> None:
        self.is_failure = failure
        self.value = value

    def __str__(self) -> str:
        return "refused" if self.is_failure else "Success"


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
    upstream._ack(client, 13, Reason(failure=True, value=0x87))  # rejected for good: unblocks the queue
    assert store.delivered == ["alert-1", "alert-2"]  # ... but is parked as rejected, not delivered
    assert store.rejected == [("alert-3", "0x87 refused")]
    assert upstream._inflight == {}


def _upstream_with(store: object, *rows: tuple[int, int]) -> tuple[MqttUpstream, object]:
    upstream = MqttUpstream(MqttUpstreamConfig(host="unused"), GatewayIdentity("s", "a", "l", "g"),
                            store, health=dict)  # type: ignore[arg-type]
    client = object()
    upstream._client = client  # type: ignore[assignment]
    upstream._connected = True
    for mid, seq in rows:
        upstream._inflight[mid] = (seq, f"alert-{seq}")
        upstream._order.append(mid)
    return upstream, client


def test_a_transient_puback_failure_is_retried_not_marked() -> None:
    store = FakeStore()
    upstream, client = _upstream_with(store, (21, 1), (22, 2))
    upstream._ack(client, 21, Reason(failure=True, value=0x97))  # quota exceeded: try again later
    assert store.delivered == []
    assert store.rejected == []
    assert upstream._inflight[21] == (1, "alert-1")  # still owed; goes out again after the reconnect
    assert not upstream._connected  # the connection is dropped ...
    assert upstream._hold_s > 0  # ... and the reconnect waits (backoff)
    assert upstream._kick.is_set()


class FailingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    def mark_delivered(self, alert_ids: Iterable[str]) -> None:
        ids = list(alert_ids)
        if self.fail and ids:
            raise sqlite3.OperationalError("database is locked")
        super().mark_delivered(ids)


def test_an_outbox_write_error_on_puback_keeps_the_marks_queued_and_wakes_the_sink() -> None:
    async def scenario() -> None:
        store = FailingStore()
        upstream, client = _upstream_with(store, (31, 1), (32, 2))
        upstream._loop = asyncio.get_running_loop()
        upstream._ack(client, 31, Reason(failure=False))  # must not raise into the loop's handler
        assert store.delivered == []
        assert upstream._kick.is_set()
        # out of flight (room for newer alerts), waiting to be marked, and not sent again meanwhile
        assert set(upstream._inflight) == {32}
        assert upstream._unmarked == {"alert-1": None}
        store.fail = False
        upstream._mark_retry_at = 0.0  # the retry is due (normally after MARK_RETRY_S)
        upstream._ack(client, 32, Reason(failure=False))
        assert store.delivered == ["alert-1", "alert-2"]
        assert upstream._inflight == {}
        assert upstream._unmarked == {}
        assert upstream.delivered == 2

    asyncio.run(scenario())


class DeadClient:
    """Stands in for paho: CONNACK (success) and the loss of the connection come out of the same read on
    the loop, before the task awaiting CONNACK resumes. The socket is a real socket pair, so the sink's
    `add_reader` watches a real descriptor."""

    def __init__(self, upstream: MqttUpstream) -> None:
        self.upstream = upstream
        self.ours, self.broker = socket.socketpair()

    def connect(self, *_args: object, **_kwargs: object) -> int:
        self.broker.send(b"x")  # CONNACK and the loss wait to be read
        return 0

    def socket(self) -> socket.socket:
        return self.ours

    def loop_read(self) -> int:
        self.ours.recv(16)
        self.upstream._on_connect(self, None, None, Reason(failure=False), None)  # type: ignore[arg-type]
        self.upstream._on_disconnect(self, None, None, Reason(failure=True), None)  # type: ignore[arg-type]
        return 0

    def want_write(self) -> bool:
        return False

    def loop_write(self) -> int:
        return 0

    def is_connected(self) -> bool:
        return False

    def close(self) -> None:
        self.ours.close()
        self.broker.close()


def test_a_connection_lost_right_after_connack_is_not_reported_connected() -> None:
    async def scenario() -> None:
        upstream = MqttUpstream(MqttUpstreamConfig(host="unused"), GatewayIdentity("s", "a", "l", "g"),
                                FakeStore(), health=dict)  # type: ignore[arg-type]
        upstream._loop = asyncio.get_running_loop()
        client = DeadClient(upstream)
        upstream._make_client = lambda: client  # type: ignore[method-assign,assignment,return-value]
        try:
            with pytest.raises(ConnectRefusedError, match="lost right after CONNACK"):
                await upstream._connect()
            assert upstream.state != "connected"
            assert not upstream._connected
            assert upstream.connects == 0
        finally:
            await upstream._teardown()
            client.close()

    asyncio.run(scenario())


class Row:
    def __init__(self, seq: int) -> None:
        self.seq, self.alert_id, self.topic, self.payload = seq, f"alert-{seq}", "t", b"{}"


class PublishingClient:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> object:
        self.sent.append(payload)
        info = type("Info", (), {})()
        info.rc, info.mid = 0, 100 + len(self.sent)
        return info


class Memory:
    """What `pipeline.AlertWriter` does for the sink: holds alerts, answered ones are not pending."""

    def __init__(self, *alert_ids: str) -> None:
        self.items = [(alert_id, "t", alert_id.encode()) for alert_id in alert_ids]
        self.answered: dict[str, str | None] = {}

    def pending(self) -> list[tuple[str, str, bytes]]:
        return [item for item in self.items if item[0] not in self.answered]

    def acknowledged(self, outcomes: dict[str, str | None]) -> dict[str, str | None]:
        held = {item[0] for item in self.items}
        self.answered.update({a: r for a, r in outcomes.items() if a in held})
        return {a: r for a, r in outcomes.items() if a not in held}


def test_fill_sends_outbox_rows_then_memory_and_never_an_alert_waiting_for_its_mark() -> None:
    class PendingStore(FailingStore):
        def pending(self, limit: int) -> list[Row]:
            return [Row(1), Row(2)][:limit]

    store = PendingStore()
    upstream = MqttUpstream(MqttUpstreamConfig(host="unused"), GatewayIdentity("s", "a", "l", "g"),
                            store, health=dict)
    client = PublishingClient()
    upstream._client = client  # type: ignore[assignment]
    upstream.memory = Memory("alert-1", "mem-1")  # alert-1 also reached the outbox meanwhile: sent once
    upstream._fill()
    assert client.sent == [b"{}", b"{}", b"mem-1"]
    assert sorted(alert_id for _seq, alert_id in upstream._inflight.values()) == ["alert-1", "alert-2",
                                                                                 "mem-1"]
    for mid in (101, 102, 103):  # all acknowledged; the outbox refuses the marks
        upstream._ack(client, mid, Reason(failure=False))
    assert upstream._inflight == {}
    assert upstream.memory.answered == {"mem-1": None}  # held in memory until the outbox takes it
    assert set(upstream._unmarked) == {"alert-1", "alert-2"}  # the outbox refused their marks
    upstream._fill()  # the outbox still lists alert-1 and alert-2 as pending: nothing is sent again
    assert len(client.sent) == 3
