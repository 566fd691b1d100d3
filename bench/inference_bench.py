"""Inference engine benchmark: one batch of windows through `InferenceEngine.score`, split over
`parallel_runs` concurrent session runs (`[threads] parallel_runs` of a device profile), printed as JSON.

    nice .venv/bin/python bench/inference_bench.py [--batch 50] [--parallel 1 2] [--rounds 5] [--out F]

The model is the agent benchmark's (the trainer's ConvVAE, 14 channels x 50 samples, one intra-op thread
per run). Two cases, alternated between the settings round by round so the machine's state hits them alike:
`back_to_back`, batch after batch (sustained load: catching up after an outage, many assets on a multi-core
box), and `after_pause`, each batch after `--pause` seconds of idleness (a burst of windows that are ready
together, as at the agent benchmark's burst load: the helper threads start from idle each time).
Reports the median and p90 milliseconds per batch, and each setting's median against one run's.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=50, help="windows per batch (default 50: one burst)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2], help="parallel_runs settings")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the settings")
    parser.add_argument("--per-round", type=int, default=20, help="batches per setting, case and round")
    parser.add_argument("--pause", type=float, default=0.2, help="idle seconds before each after_pause batch")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if 1 not in args.parallel:
        parser.error("--parallel must include 1 (the baseline)")

    from bench.agent_bench import CHANNELS, LENGTH, build_bundle
    from edge_agent.bundle import read_bundle
    from edge_agent.inference import InferenceEngine, ProviderSettings
    from edge_agent.types import Window

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, keys, _ = build_bundle(work, stride=10)
        bundle = read_bundle(path, trusted_keys=keys, extract_to=work / "bundle")
        model = bundle.manifest.models[0].name
        rng = np.random.default_rng(0)
        windows = [Window(f"asset{i}", model, 0.0, (LENGTH - 1) * 0.1,
                          rng.standard_normal((len(CHANNELS), LENGTH)).astype(np.float32))
                   for i in range(args.batch)]

        async def measure() -> dict[tuple[int, str], list[float]]:
            engines = {runs: InferenceEngine(bundle, ProviderSettings(parallel_runs=runs))
                       for runs in args.parallel}
            times: dict[tuple[int, str], list[float]] = {}
            try:
                for _ in range(args.rounds):
                    for runs, engine in engines.items():
                        for case, pause in (("back_to_back", 0.0), ("after_pause", args.pause)):
                            for _ in range(args.per_round):
                                if pause:
                                    await asyncio.sleep(pause)
                                start = time.perf_counter()
                                await engine.score(windows)
                                times.setdefault((runs, case), []).append(time.perf_counter() - start)
            finally:
                for engine in engines.values():
                    engine.close()
            return times

        times = asyncio.run(measure())

    cases: dict[str, Any] = {}
    for case in ("back_to_back", "after_pause"):
        base = float(np.median(times[(1, case)]))
        cases[case] = {str(runs): {"median_ms": round(float(np.median(times[(runs, case)])) * 1000, 2),
                                   "p90_ms": round(float(np.percentile(times[(runs, case)], 90)) * 1000, 2),
                                   "batches": len(times[(runs, case)]),
                                   "speedup_vs_1": round(base / float(np.median(times[(runs, case)])), 2)}
                       for runs in args.parallel}
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "model": f"ConvVAE {len(CHANNELS)}x{LENGTH}, fp32, CPU provider, one intra-op thread per run",
              "batch": args.batch, "pause_s": args.pause, "parallel_runs": cases}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
