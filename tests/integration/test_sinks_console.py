from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edge_agent.decisions import DecisionConfig, DecisionEngine
from edge_agent.sinks import SINKS, ConsoleSink
from edge_agent.sinks.payload import alert_payload
from edge_agent.storage import Store
from edge_agent.types import GatewayIdentity, ScoredWindow, Window

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IDENTITY = GatewayIdentity("plant-a", "pressing", "line-2", "gw-1")
MANIFEST = {"name": "b", "models": [{"name": "m", "input": {"channels": ["a", "b"]},
                                     "threshold": {"value": 1.0},
                                     "severity": [{"level": "warning", "min_score": 1.0}],
                                     "debounce": {"k": 1, "n": 1, "clear_windows": 1}}]}


def test_console_sink_prints_outbox_rows_as_json_lines_and_marks_them_delivered(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "edge_agent/schemas/alert.schema.json").read_text())
    store = Store.open(tmp_path / "state.db")
    out = io.StringIO()
    sink = ConsoleSink(IDENTITY, store, stream=out)
    engine = DecisionEngine(DecisionConfig(), IDENTITY, store, MANIFEST)

    async def scenario() -> None:
        task = asyncio.create_task(sink.run())
        for i, score in enumerate([3.0, 0.2]):
            window = Window("pump-7", "m", 10.0 * i, 10.0 * i + 9, np.zeros((2, 4), np.float32))
            scored = ScoredWindow(window, score, score, 1.0, np.array([0.1, 0.9]), np.zeros(2), np.zeros(4),
                                  "b", "1")
            store.add_alerts(engine.process(scored, 1_800_000_000.0 + i), sink.alert_topic,
                             lambda e: alert_payload(e, IDENTITY))
            sink.wake()
        await sink.aclose()
        await task

    asyncio.run(scenario())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["payload"]["state"] for line in lines] == ["open", "close"]
    assert {line["topic"] for line in lines} == {"plant-a/pressing/line-2/pump-7/anomaly/alert"}
    for line in lines:
        jsonschema.validate(line["payload"], schema)
    assert store.backlog() == 0
    assert sink.state == "closed"
    assert set(SINKS) == {"mqtt", "console"}
