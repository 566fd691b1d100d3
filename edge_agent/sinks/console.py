"""Console sink: alerts from the outbox as JSON lines on stdout (the demo, or a gateway with no broker).

Same interface as `MqttUpstream` (`run`, `wake`, `state`, `aclose`) so the supervisor treats both alike.
A line is marked delivered once it was written and flushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TextIO

from edge_agent.sinks.mqtt import DEFAULT_ALERT_TOPIC
from edge_agent.sinks.payload import alert_topic
from edge_agent.storage import Store
from edge_agent.types import AlertEvent, GatewayIdentity

log = logging.getLogger(__name__)


class ConsoleSink:
    """Writes each outbox row as one line `{"topic": ..., "payload": {...}}`."""

    def __init__(self, identity: GatewayIdentity, store: Store, stream: TextIO | None = None,
                 batch: int = 100, alert_topic_template: str = DEFAULT_ALERT_TOPIC) -> None:
        self.identity = identity
        self.alert_topic_template = alert_topic_template
        self._store = store
        self._stream = stream
        self._batch = batch
        self._kick = asyncio.Event()
        self._closing = False
        self._state = "idle"
        self.delivered = 0

    def alert_topic(self, event: AlertEvent) -> str:
        """The topic the alert would have on MQTT (shown in each line)."""
        return alert_topic(self.alert_topic_template, event, self.identity)

    @property
    def state(self) -> str:
        return self._state

    def wake(self) -> None:
        """New alerts are in the outbox."""
        self._kick.set()

    def drain(self) -> int:
        """Write every pending row now; returns how many were written."""
        stream = self._stream or sys.stdout
        written = 0
        while rows := self._store.pending(self._batch):
            for row in rows:
                line = {"topic": row.topic, "payload": json.loads(row.payload)}
                stream.write(json.dumps(line, separators=(",", ":")) + "\n")
            stream.flush()
            self._store.mark_delivered(row.alert_id for row in rows)
            written += len(rows)
        self.delivered += written
        return written

    async def run(self) -> None:
        """Drain the outbox whenever woken, until `aclose()`."""
        self._state = "connected"
        try:
            while True:
                self.drain()
                if self._closing:
                    return
                await self._kick.wait()
                self._kick.clear()
        finally:
            self._state = "closed"

    async def aclose(self, restarting: bool = False) -> None:
        self._closing = True
        self._kick.set()
