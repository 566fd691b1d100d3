"""Sources of sensor readings. The registry is explicit: a source whose module fails to import takes the
agent down loudly instead of silently vanishing from the list.

Each entry maps the config's `type` to `(ConfigClass, SourceClass)`: `ConfigClass.from_section(section,
base_dir)` parses `[sources.NAME]` strictly and `SourceClass(name, config)` builds the running source.
"""

from __future__ import annotations

from typing import Any

from edge_agent.sources.base import Source, SourceStats
from edge_agent.sources.mqtt import MqttSource, MqttSourceConfig
from edge_agent.sources.replay import ReplayConfig, ReplaySource
from edge_agent.sources.serial import SerialConfig, SerialSource

SOURCES: dict[str, tuple[Any, type[Source]]] = {
    "serial": (SerialConfig, SerialSource),
    "mqtt": (MqttSourceConfig, MqttSource),
    "replay": (ReplayConfig, ReplaySource),
}


def build_source(name: str, kind: str, config: Any) -> Source:
    """The running source for a parsed `[sources.NAME]` section."""
    _config_class, source_class = SOURCES[kind]
    return source_class(name, config)


__all__ = ["SOURCES", "Source", "SourceStats", "build_source"]
