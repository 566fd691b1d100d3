"""A paho-mqtt 2.x test client that collects what it receives and waits for it without sleeps."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttCollector:
    """Subscribes to `topics` (resubscribing on every reconnect) and records every message."""

    def __init__(self, host: str, port: int, topics: list[str], qos: int = 1, client_id: str = "") -> None:
        self.topics = topics
        self.qos = qos
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.subscriptions = 0  # acknowledged (re)subscriptions: one per successful connect
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"subscription to {topics} not acknowledged")

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._subscribed.clear()
        client.subscribe([(topic, self.qos) for topic in self.topics])

    def _on_subscribe(self, *_args: object) -> None:
        with self._cond:
            self.subscriptions += 1
            self._cond.notify_all()
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def wait_subscribed(self, count: int = 1, timeout: float = 10.0) -> None:
        """Block until the `count`-th subscription was acknowledged (2 = resubscribed after an outage)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.subscriptions < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"subscription {count} not acknowledged within {timeout} s")
                self._cond.wait(remaining)

    def wait_for(self, count: int, timeout: float = 10.0, topic_prefix: str = "") -> list[Received]:
        """Block until at least `count` messages (on topics starting with `topic_prefix`) arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matching = [m for m in self.messages if m.topic.startswith(topic_prefix)]
                if len(matching) >= count:
                    return matching
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"got {len(matching)} of {count} messages within {timeout} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect_publisher(host: str, port: int, client_id: str = "") -> mqtt.Client:
    """A started paho client that reconnects by itself (1 s delay) after an outage."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect(host, port, keepalive=10)
    client.loop_start()
    if not connected.wait(10):
        raise TimeoutError("publisher did not connect")
    return client
