"""Run the agent with timestamps at each stage of the sample -> alert path, for `agent_bench.py --trace`.

    python bench/agent_trace.py OUT.json run --config PATH

is `edge-agent run --config PATH` with wrappers (this process only; the agent's code is unchanged) that
record, in wall-clock seconds:

- `emit`: a window leaves the windower (asset, window end, time);
- `start`: the window is handed to inference (and the size of its batch);
- `decide`: decisions, outbox commit and hand-over to the sink of its batch begin and end;
- spans (name, start, end) of storage and file work: `add_alerts`, `pending`, `mark_delivered`,
  `record_windows`, `incr_counters`, `prune`, the WAL keeper's `checkpoint`, `status_file`, and Python's
  garbage collections (`gc0`..`gc2`; `gc2` includes the supervisor's own full collection before READY=1,
  `_freeze_long_lived_objects`);
- spans of the parts of a batch's way: `infer_thread` (the inference thread's work for a batch),
  `session_run` (each ONNX Runtime run in it), and on the event loop `process_batch` (the decision engine),
  `alert_write` (rendering the alerts and `add_alerts`), `scored_batch` (the status counters) and
  `recorder_submit` (the hand-over to the ring-buffer thread).

`summarise(trace, alerts)` joins them with the alerts a subscriber received into per-stage latencies.
Tracing costs a little CPU and memory per window; use it to see where time goes, not for the headline
figures.
"""

from __future__ import annotations

import gc
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _install(points: list[Any], spans: list[Any]) -> None:
    from edge_agent import agentstate, decisions, inference, pipeline, storage, supervisor, windows

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def traced(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((label, start, time.time()))

        setattr(owner, name, traced)

    push = windows.Windower.push

    def traced_push(self: Any, reading: Any) -> Any:
        out = push(self, reading)
        now = time.time()
        points.extend(("emit", w.asset, w.end_ts, now) for w in out)
        return out

    windows.Windower.push = traced_push  # type: ignore[method-assign]
    start_scoring = supervisor.Supervisor._start_scoring

    def traced_start(self: Any, batch: Sequence[Any]) -> Any:
        now = time.time()
        points.extend(("start", w.asset, w.end_ts, now, len(batch)) for w in batch)
        return start_scoring(self, batch)

    supervisor.Supervisor._start_scoring = traced_start  # type: ignore[method-assign]
    decide = supervisor.Supervisor._decide

    def traced_decide(self: Any, scored: Sequence[Any]) -> None:
        begin = time.time()
        decide(self, scored)
        end = time.time()
        points.extend(("decide", s.window.asset, s.window.end_ts, begin, end) for s in scored)

    supervisor.Supervisor._decide = traced_decide  # type: ignore[method-assign]
    for name in ("add_alerts", "pending", "mark_delivered", "record_windows", "incr_counters", "prune"):
        wrap(storage.Store, name, name)
    wrap(storage._WalKeeper, "_checkpoint", "checkpoint")
    wrap(decisions.DecisionEngine, "process_batch", "process_batch")
    wrap(pipeline.AlertWriter, "write", "alert_write")
    wrap(agentstate.AgentState, "scored_batch", "scored_batch")
    wrap(storage.WindowRecorder, "submit", "recorder_submit")
    wrap(inference.InferenceEngine, "_infer", "infer_thread")
    wrap(inference.InferenceEngine, "run_batch", "session_run")
    wrap(agentstate, "write_status_file", "status_file")
    supervisor.write_status_file = agentstate.write_status_file  # the name the supervisor calls
    started: dict[str, float] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.time()
        else:
            spans.append((f"gc{info['generation']}", started.get("t", time.time()), time.time()))

    gc.callbacks.append(on_gc)


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1].startswith("-"):  # no trace file name, or --help
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2
    out = Path(sys.argv[1])
    points: list[Any] = []
    spans: list[Any] = []
    _install(points, spans)
    from edge_agent.cli import main as agent_main

    try:
        return agent_main(sys.argv[2:])
    finally:
        out.write_text(json.dumps({"points": points, "spans": spans}))


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    data = np.asarray(values, dtype=float)
    return {"n": int(data.size), "p50": round(float(np.percentile(data, 50)), 2),
            "p99": round(float(np.percentile(data, 99)), 2), "max": round(float(data.max()), 2)}


def summarise(trace: dict[str, Any], opens: Sequence[tuple[str, float, float, float]]) -> dict[str, Any]:
    """Per-stage latencies (ms) of `open` alerts: `opens` holds (asset, window end, published, received).

    Stages: `to_window` (published -> the window leaves the windower: broker, paho, parsing, alignment),
    `to_inference` (-> handed to inference), `inference` (-> decisions begin: the hand-off to the inference
    thread, ONNX Runtime and back), `decide_commit` (decisions, outbox commit with fsync, hand-over to the
    sink, for the whole batch), `to_subscriber` (-> received: paho's network thread, broker, subscriber).
    Also the duration of every traced span (storage, status file, garbage collections)."""
    emitted: dict[tuple[str, int], float] = {}
    started: dict[tuple[str, int], float] = {}
    decided: dict[tuple[str, int], tuple[float, float]] = {}
    for point in trace["points"]:
        key = (point[1], round(point[2] * 1000))
        if point[0] == "emit":
            emitted[key] = point[3]
        elif point[0] == "start":
            started.setdefault(key, point[3])
        elif point[0] == "decide":
            decided[key] = (point[3], point[4])
    stages: dict[str, list[float]] = {name: [] for name in ("to_window", "to_inference", "inference",
                                                            "decide_commit", "to_subscriber", "total")}
    for asset, end, published, received in opens:
        key = next(((asset, k) for k in (round(end * 1000) + d for d in (0, 1, -1)) if (asset, k) in emitted),
                   None)
        if key is None or key not in started or key not in decided:
            continue
        begin, done = decided[key]
        marks = (published, emitted[key], started[key], begin, done, received)
        for name, (a, b) in zip(stages, itertools.pairwise(marks), strict=False):  # `total` is not a pair
            stages[name].append((b - a) * 1000.0)
        stages["total"].append((received - published) * 1000.0)
    by_span: dict[str, list[float]] = {}
    for name, begin, end in trace["spans"]:
        by_span.setdefault(name, []).append((end - begin) * 1000.0)
    return {"open_alert_stages_ms": {k: _percentiles(v) for k, v in stages.items() if v},
            "spans_ms": {k: _percentiles(v) for k, v in sorted(by_span.items())}}


if __name__ == "__main__":
    sys.exit(main())
