from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge_agent.decisions import DecisionConfig, DecisionEngine
from edge_agent.sinks.payload import alert_document, rfc3339, status_payload
from edge_agent.types import GatewayIdentity, ScoredWindow, Window

ROOT = Path(__file__).resolve().parents[2]
ALERT_SCHEMA = json.loads((ROOT / "edge_agent/schemas/alert.schema.json").read_text())
STATUS_SCHEMA = json.loads((ROOT / "edge_agent/schemas/status.schema.json").read_text())
IDENTITY = GatewayIdentity("plant-a", "pressing", "line-2", "gw-1")
CHECKER = jsonschema.FormatChecker()


def doc_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", (ROOT / "docs/alerts.md").read_text(), flags=re.S)


def test_docs_embed_the_schema_files_verbatim() -> None:
    blocks = doc_blocks()
    assert json.loads(blocks[-2]) == ALERT_SCHEMA
    assert json.loads(blocks[-1]) == STATUS_SCHEMA
    jsonschema.Draft202012Validator.check_schema(ALERT_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(STATUS_SCHEMA)


def test_doc_examples_validate() -> None:
    online, offline, alert = (json.loads(b) for b in doc_blocks()[:3])
    jsonschema.validate(alert, ALERT_SCHEMA, format_checker=CHECKER)
    jsonschema.validate(online, STATUS_SCHEMA, format_checker=CHECKER)
    jsonschema.validate(offline, STATUS_SCHEMA, format_checker=CHECKER)


def engine_events(windows: list[tuple[float, np.ndarray, tuple[str, ...]]]) -> list:
    """The alert events of a 2-channel model (threshold 1, debounce 1 of 1, close after 1 below) fed
    `(score, channel_error, flat channels)` windows one second apart."""
    manifest = {"name": "b", "models": [{"name": "m", "input": {"channels": ["a", "b"]},
                                         "threshold": {"value": 1.0},
                                         "severity": [{"level": "warning", "min_score": 1.0}],
                                         "debounce": {"k": 1, "n": 1, "clear_windows": 1}}]}
    engine = DecisionEngine(DecisionConfig(), IDENTITY, None, manifest)
    events = []
    for i, (score, errors, flat) in enumerate(windows):
        window = Window("pump", "m", 100.0 + i, 104.5 + i, np.zeros((2, 3), np.float32))
        scored = ScoredWindow(window, score, score, 1.0, errors, np.zeros(2), np.zeros(3), "b", "1", flat)
        events += engine.process(scored, 1_800_000_000.25 + i)
    return events


def test_engine_events_render_schema_valid_payloads() -> None:
    events = engine_events([(score, np.array([0.0, 0.0]), ()) for score in (2.0, 0.5)])
    assert [e.state for e in events] == ["open", "close"]
    for event in events:
        doc = alert_document(event, IDENTITY)
        jsonschema.validate(doc, ALERT_SCHEMA, format_checker=CHECKER)
        assert sum(c["share"] for c in doc["root_cause"]["channels"]) == pytest.approx(1.0)
    assert alert_document(events[0], IDENTITY)["time"] == "2027-01-15T08:00:00.250Z"


def test_a_flat_lined_window_names_its_channels_in_root_cause_flat() -> None:
    """`root_cause.flat` only when the reported window had flat-lined channels; `channels` stays ranked by
    share; both validate against the published schema."""
    events = engine_events([(0.2, np.array([0.9, 0.1]), flat) for flat in (("b",), ())])
    opened, closed = (alert_document(event, IDENTITY) for event in events)
    for doc in (opened, closed):
        jsonschema.validate(doc, ALERT_SCHEMA, format_checker=CHECKER)
    assert opened["reason"] == "flatline"
    assert opened["root_cause"]["flat"] == ["b"]
    assert [c["channel"] for c in opened["root_cause"]["channels"]] == ["a", "b"]  # by share
    assert closed["root_cause"]["flat"] == ["b"]  # the close reports the peak (the flat window)
    assert "flat" not in alert_document(dataclasses.replace(events[0], flat=()), IDENTITY)["root_cause"]


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_800_000_000.1234) == "2027-01-15T08:00:00.123Z"


def test_status_payloads_validate() -> None:
    online = json.loads(status_payload(IDENTITY, "online", 1.0, {"outbox_backlog": 3, "counters": {"x": 1}}))
    jsonschema.validate(online, STATUS_SCHEMA, format_checker=CHECKER)
    bad = dict(online, state="sleeping")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, STATUS_SCHEMA)
