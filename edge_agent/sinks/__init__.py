"""Alert sinks: where the outbox goes. Explicit registry; a failed import fails loudly.

Every sink has `run()`, `wake()`, `state` and `aclose()`; the MQTT one also publishes gateway status.
"""

from __future__ import annotations

from edge_agent.sinks.console import ConsoleSink
from edge_agent.sinks.mqtt import MqttUpstream, MqttUpstreamConfig

SINKS: dict[str, type] = {"mqtt": MqttUpstream, "console": ConsoleSink}

__all__ = ["SINKS", "ConsoleSink", "MqttUpstream", "MqttUpstreamConfig"]
