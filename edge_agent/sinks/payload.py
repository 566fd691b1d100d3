"""Wire format of what the agent publishes upstream: alert messages and gateway status.

Both are JSON objects specified by JSON Schemas in `edge_agent/schemas/` (`alert.schema.json`,
`status.schema.json`) and documented in `docs/alerts.md`. Timestamps are RFC 3339 in UTC with
millisecond precision (`2026-11-27T10:57:35.123Z`).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

from edge_agent.types import AlertEvent, GatewayIdentity

ALERT_SCHEMA_VERSION = 1
STATUS_SCHEMA_VERSION = 1


def rfc3339(ts: float) -> str:
    """Unix seconds -> `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC)."""
    text = datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _gateway(identity: GatewayIdentity) -> dict[str, str]:
    return {"id": identity.gateway_id, "site": identity.site, "area": identity.area, "line": identity.line}


def alert_document(event: AlertEvent, identity: GatewayIdentity) -> dict[str, Any]:
    """The alert payload as a dict (see `alert.schema.json`)."""
    doc: dict[str, Any] = {
        "schema_version": ALERT_SCHEMA_VERSION,
        "alert_id": event.alert_id,
        "episode_id": event.episode_id,
        "state": event.state,
        "reason": str(event.extra.get("reason", event.state)),
        "time": rfc3339(event.ts),
        "episode_start": rfc3339(event.episode_start_ts),
        "gateway": _gateway(identity),
        "asset": event.asset,
        "model": event.model,
        "bundle": {"name": event.bundle_name, "version": event.bundle_version},
        "score": float(event.score),
        # null only for an episode restored from a database older than the episodes' threshold column
        # whose model has left the bundle: its close alert has no threshold to report
        "threshold": float(event.threshold) if math.isfinite(event.threshold) else None,
        "severity": event.severity,
        "window": {"start": rfc3339(event.window_start_ts), "end": rfc3339(event.window_end_ts)},
        "root_cause": {
            "channels": [{"channel": entry.channel, "share": float(entry.share)}
                         for entry in event.root_cause],
            "peak_time": rfc3339(event.peak_ts),
        },
    }
    if event.flat:  # only when the reported window had a flat-lined channel (docs/alerts.md)
        doc["root_cause"]["flat"] = list(event.flat)
    if "peak_score" in event.extra:
        doc["peak_score"] = float(event.extra["peak_score"])
    return doc


def alert_topic(template: str, event: AlertEvent, identity: GatewayIdentity) -> str:
    """The topic of one alert: `template` filled with the ISA-95 position, asset and model."""
    return template.format(site=identity.site, area=identity.area, line=identity.line,
                           gateway_id=identity.gateway_id, asset=event.asset, model=event.model)


def alert_payload(event: AlertEvent, identity: GatewayIdentity) -> bytes:
    """The alert payload as compact UTF-8 JSON bytes."""
    return json.dumps(alert_document(event, identity), separators=(",", ":"), allow_nan=False).encode()


def status_payload(identity: GatewayIdentity, state: str, ts: float | None = None,
                   health: dict[str, Any] | None = None) -> bytes:
    """A gateway status message: `online` (with a health summary when given) or `offline` (the Last Will;
    it has no time since it is registered at connect and published by the broker later)."""
    doc: dict[str, Any] = {"schema_version": STATUS_SCHEMA_VERSION, "state": state,
                           "gateway": _gateway(identity)}
    if ts is not None:
        doc["time"] = rfc3339(ts)
    if health is not None:
        doc["health"] = health
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()
