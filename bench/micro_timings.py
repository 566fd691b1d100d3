"""Two small timings of the agent's event-loop work at the agent benchmark's latency load (50 assets x 1
model, 14 channels x 50 samples, one window per asset a second), on a real pipeline opened in a temporary
state directory in `--dir` (default: the system temp dir): real `Store` (SQLite), bundle, `DecisionEngine`
and `AgentState` (docs/deployment.md: "What was tried in the sixth round", and the status file's encoder).

    python bench/micro_timings.py [--dir D] [--rounds 5] [--batches 40] [--writes 50] [--out F]

1. `DecisionEngine.process_batch` of one second's 50 scored windows, `back_to_back` (batch after batch) and
   `after_idle` (each batch after `--evict-mib` MiB of memory were written, to evict the CPU caches, and
   `--pause` s of idleness: the agent decides once a second, cold). The cases alternate round by round.
   Episode pattern (the agent benchmark's, simplified): in second s assets s % 50 and (s + 25) % 50 get one
   anomalous stride, which stays in their next 5 windows, so each batch has 10 windows above the threshold,
   2 episodes opening and 2 closing (debounce 1 of 1, clear after 1 window, as the benchmark's bundle).
   The scored windows are built directly (scores, channel/time errors), not by ONNX Runtime: the engine
   only reads those values. Each batch is built just before it is timed (the agent decides on a batch
   inference has just written).
2. `write_status_file` of the agent's status document (`Supervisor.snapshot()` after part 1: 50 assets, open
   episodes, MQTT source and sink), compact with json's C encoder as shipped (`c_encoder`), against the
   same atomic write with `indent=2`, which uses json's pure-Python encoder (`python_encoder_indent`),
   alternated round by round; each write is followed by the same variant's `json.dumps` alone (encode
   only). Needs the dev extra (onnx) for the test bundle.

Prints JSON: median and p90 wall milliseconds of each case, the median CPU milliseconds of the timing thread
(the cost itself where other processes take the cores), and the ratio of the two status writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import emit  # noqa: E402
from edge_agent.agentstate import write_status_file  # noqa: E402
from edge_agent.config import AgentConfig  # noqa: E402
from edge_agent.supervisor import Supervisor  # noqa: E402
from edge_agent.types import ScoredWindow, Window  # noqa: E402

ASSETS = 50
CHANNELS = [f"c{i:02d}" for i in range(14)]
LENGTH = 50
PERIOD = 0.1
ANOMALOUS_WINDOWS = 5  # windows that hold one anomalous stride: window length / stride (50 / 10)
START = 1.8e9
T = TypeVar("T")


def open_supervisor(work: Path) -> Supervisor:
    """The agent benchmark's gateway: one MQTT source for 50 assets, MQTT sink; never connected."""
    from tests.support.bundles import build_test_bundle, write_test_public_key

    keys = work / "keys"
    write_test_public_key(keys)
    bundle = build_test_bundle(work / "bundles", channels=CHANNELS, window_length=LENGTH, stride=10,
                               sample_period_s=PERIOD, debounce={"k": 1, "n": 1, "clear_windows": 1})
    topics = {f"plant/asset{a}/telemetry": f"a{a}" for a in range(ASSETS)}
    source = {"type": "mqtt", "host": "127.0.0.1", "port": 1883, "payload": "json", "fields": CHANNELS,
              "timestamp_field": "ts", "topics": topics}
    assets = {f"asset{a}": {"model": "pump", "channels": {c: f"plant.a{a}.{c}" for c in CHANNELS}}
              for a in range(ASSETS)}
    document = {"state_dir": str(work / "state"),
                "gateway": {"site": "bench", "area": "a", "line": "l", "id": "gw"},
                "bundle": {"path": str(bundle), "trusted_keys": str(keys)}, "sources": {"plant": source},
                "assets": assets,
                "mqtt": {"host": "127.0.0.1", "port": 1883}, "decisions": {"update_interval_s": 3600.0}}
    supervisor = Supervisor(AgentConfig.from_dict(document, work))
    asyncio.run(supervisor.open_pipeline())
    return supervisor


def batch(second: int, threshold: float, rng: np.random.Generator) -> list[ScoredWindow]:
    """Second `second`'s 50 scored windows under the episode pattern (module docstring)."""
    anomalous = {(s + offset) % ASSETS for s in range(second - ANOMALOUS_WINDOWS + 1, second + 1)
                 for offset in (0, ASSETS // 2)}
    end = START + second
    timestamps = end - PERIOD * np.arange(LENGTH - 1, -1, -1)
    out = []
    for a in range(ASSETS):
        channel_error = rng.uniform(0.5, 1.5, len(CHANNELS)).astype(np.float32)
        time_error = rng.uniform(5.0, 20.0, LENGTH).astype(np.float32)
        score = threshold * float(rng.uniform(0.3, 0.8))
        if a in anomalous:
            channel_error[3] += 120.0
            time_error[-10:] += 600.0
            score = threshold * float(rng.uniform(4.0, 8.0))
        window = Window(f"asset{a}", "pump", float(timestamps[0]), end,
                        rng.standard_normal((len(CHANNELS), LENGTH)).astype(np.float32), timestamps.copy())
        out.append(ScoredWindow(window, score, score, threshold, channel_error,
                                rng.standard_normal(len(CHANNELS)).astype(np.float32), time_error,
                                "test-bundle", "1.0.0"))
    return out


def timed(into: list[tuple[float, float]], call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`, its (wall, this thread's CPU) seconds appended to `into`."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = call(*args)
    into.append((time.perf_counter() - wall, time.thread_time() - cpu))
    return result


def stats_ms(samples: list[tuple[float, float]]) -> dict[str, float | int]:
    """Median and p90 wall milliseconds, and the median CPU milliseconds of the timing thread (what the
    call cost when other processes take the cores: wall includes waiting for one)."""
    wall, cpu = np.array(samples).T * 1000
    return {"median_ms": round(float(np.median(wall)), 3), "p90_ms": round(float(np.percentile(wall, 90)), 3),
            "cpu_median_ms": round(float(np.median(cpu)), 3), "samples": len(samples)}


def time_decisions(supervisor: Supervisor, args: argparse.Namespace) -> dict[str, Any]:
    decisions = supervisor.decisions
    assert decisions is not None
    assert supervisor.bundle is not None
    assert supervisor.windower is not None
    threshold = float(supervisor.bundle.manifest.models[0].threshold.value)
    rng = np.random.default_rng(0)
    evict = np.ones(args.evict_mib << 20, dtype=np.uint8)
    times: dict[str, list[tuple[float, float]]] = {"back_to_back": [], "after_idle": []}
    alerts: dict[str, int] = {}
    # untimed warm-up into the pattern's steady state (the first batch alone opens 10 episodes)
    for second in range(ANOMALOUS_WINDOWS):
        decisions.process_batch(batch(second, threshold, rng), START + second)
    second = ANOMALOUS_WINDOWS
    for round_index in range(args.rounds):
        cases = list(times) if round_index % 2 == 0 else list(reversed(times))  # neither always goes first
        for case in cases:
            for _ in range(args.batches):
                if case == "after_idle":
                    np.add(evict, 1, out=evict)  # writes every cache line of a buffer larger than the caches
                    time.sleep(args.pause)
                scored = batch(second, threshold, rng)
                events = timed(times[case], decisions.process_batch, scored, START + second)
                second += 1
                for event in events:
                    alerts[event.state] = alerts.get(event.state, 0) + 1
                # what the agent does next on the loop, untimed: the status document's last scores and counts
                supervisor.state.scored_batch(scored)
                for aligner in supervisor.windower.aligners.values():
                    aligner.stats.windows += 1
    return {"batch": f"{ASSETS} windows ({ASSETS} assets x 1 model, {len(CHANNELS)} channels x {LENGTH} "
                     "samples)",
            "episode_pattern": f"2 assets (rotating) start an anomaly each second, above the threshold for "
                               f"{ANOMALOUS_WINDOWS} windows; debounce 1 of 1, clear after 1 window",
            "alerts": dict(sorted(alerts.items())), "pause_s": args.pause, "evict_mib": args.evict_mib,
            "back_to_back": stats_ms(times["back_to_back"]), "after_idle": stats_ms(times["after_idle"])}


def time_status(supervisor: Supervisor, args: argparse.Namespace) -> dict[str, Any]:
    document = supervisor.snapshot()
    path = supervisor.config.status_path
    writers: dict[str, Callable[[Path, dict[str, Any]], None]] = {
        "c_encoder": write_status_file, "python_encoder_indent": partial(write_status_file, indent=2)}
    # the encoding alone, to tell it from the file work (temp file, chmod, rename) that both variants share
    encoders = {"c_encoder": partial(json.dumps, sort_keys=True, default=float),
                "python_encoder_indent": partial(json.dumps, sort_keys=True, default=float, indent=2)}
    sizes: dict[str, int] = {}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in writers}
    encode_times: dict[str, list[tuple[float, float]]] = {name: [] for name in writers}
    for round_index in range(args.rounds):
        names = list(writers) if round_index % 2 == 0 else list(reversed(writers))
        for name in names:
            for _ in range(args.writes):
                timed(times[name], writers[name], path, document)
                timed(encode_times[name], encoders[name], document)
            sizes[name] = path.stat().st_size
    result: dict[str, Any] = {"assets": len(document["assets"]),
                              "open_episodes": len(document["open_episodes"])}
    for name in writers:
        result[name] = {"document_bytes": sizes[name], **stats_ms(times[name]),
                        "encode_only_median_ms": stats_ms(encode_times[name])["median_ms"]}
    python, c = result["python_encoder_indent"], result["c_encoder"]
    result["python_over_c_median"] = round(python["median_ms"] / c["median_ms"], 2)
    result["python_over_c_encode_only"] = round(python["encode_only_median_ms"]
                                                / c["encode_only_median_ms"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None,
                        help="where the temporary state directory goes (default: temp dir)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the cases")
    parser.add_argument("--batches", type=int, default=40, help="decision batches per case and round")
    parser.add_argument("--writes", type=int, default=50, help="status file writes per variant and round")
    parser.add_argument("--pause", type=float, default=0.05, help="idle seconds before each after_idle batch")
    parser.add_argument("--evict-mib", type=int, default=64, help="MiB written before each after_idle batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if min(args.rounds, args.batches, args.writes, args.evict_mib) < 1 or args.pause < 0:
        parser.error("--rounds, --batches, --writes and --evict-mib must be at least 1, --pause at least 0")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        supervisor = open_supervisor(Path(tmp))
        try:
            decisions = time_decisions(supervisor, args)
            status = time_status(supervisor, args)
        finally:
            asyncio.run(supervisor.close_pipeline())
    summary = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
               "dir": args.dir or tempfile.gettempdir(), "rounds": args.rounds,
               "decision_engine": decisions, "status_file": status}
    return emit(summary, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
