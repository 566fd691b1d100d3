"""Inference engine benchmark: batches of windows through `InferenceEngine.score` at several thread
settings, printed as JSON.

    nice .venv/bin/python bench/inference_bench.py [--batch 1 50] [--settings 1x1 2x1 1x2] [--out F]
    python bench/inference_bench.py --config /etc/edge-agent/agent.toml [--model NAME] \\
        [--settings 1x1 4x1 1x4]

A setting `INTRAxPARALLEL` is ONNX Runtime's intra-op threads per run (not spinning, as the agent runs
them) x the device profile's `[threads] parallel_runs` (a batch of at least 16 windows split over that many
concurrent runs of the session). The model is the agent benchmark's (the trainer's ConvVAE, 14 channels x 50
samples, built with torch), or with `--config` a model of the gateway's own active bundle with that config's
execution providers (no torch needed: this runs on the gateway, to choose its device profile's threads).
Windows are random, of the model's input shape; speed does not depend on their values. Each batch size is
timed in two cases, the settings alternated round by round so the machine's state hits them alike:
`back_to_back`, batch after batch (sustained load: catching up after an outage, many assets), and
`after_pause`, each batch after `--pause` seconds of idleness (a burst of windows that are ready together, as
at the agent benchmark's burst load: the threads start from idle each time). Reports median and p90
milliseconds per batch and each setting's speed against the first (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from bench.report import emit  # noqa: E402


def _setting(text: str) -> tuple[int, int]:
    """`INTRAxPARALLEL`, e.g. `1x2`: ONNX Runtime intra-op threads per run x parallel runs per batch."""
    try:
        intra, parallel = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INTRAxPARALLEL such as 1x2, got {text!r}") from None
    if intra < 1 or parallel < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be at least 1, got {text!r}")
    return intra, parallel


def _bundle(config_path: Path | None, work: Path) -> tuple[Any, Any, str]:
    """(bundle, provider settings, description): the agent benchmark's model (needs torch), or the active
    bundle and device profile providers of the agent config at `config_path`."""
    from edge_agent.bundle import read_bundle
    from edge_agent.inference import ProviderSettings

    if config_path is None:
        from bench.agent_bench import build_bundle

        path, keys, _ = build_bundle(work, stride=10)
        return (read_bundle(path, trusted_keys=keys, extract_to=work / "bundle"), ProviderSettings(),
                "the agent benchmark's ConvVAE (fp32, CPU provider)")
    from edge_agent.config import AgentConfig
    from edge_agent.pipeline import load_bundle, provider_settings

    config = AgentConfig.load(config_path)
    bundle = load_bundle(config, work)
    described = (f"bundle {bundle.manifest.name} {bundle.manifest.version} of {config_path} "
                 f"(device profile {config.device_profile or 'none'})")
    return bundle, provider_settings(config), described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 50],
                        help="windows per batch (default 1: the spread load's single windows, 50: one burst)")
    parser.add_argument("--settings", type=_setting, nargs="+", default=[(1, 1), (2, 1), (1, 2)],
                        help="INTRAxPARALLEL: intra-op threads x parallel_runs; the first is the baseline "
                             "(default 1x1 2x1 1x2)")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the settings")
    parser.add_argument("--per-round", type=int, default=20, help="batches per setting, case and round")
    parser.add_argument("--pause", type=float, default=0.2, help="idle seconds before each after_pause batch")
    parser.add_argument("--config", type=Path, default=None,
                        help="an agent config: time a model of its active bundle, with its device profile's "
                             "execution providers (threads from --settings)")
    parser.add_argument("--model", default=None,
                        help="with --config: the bundle's model (default: the first)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.model is not None and args.config is None:
        parser.error("--model needs --config")

    from edge_agent.inference import InferenceEngine
    from edge_agent.types import Window

    Key = tuple[tuple[int, int], int, str]  # setting, batch size, case

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            bundle, base_settings, described = _bundle(args.config, work)
            spec = bundle.manifest.models[0] if args.model is None else bundle.manifest.model(args.model)
        except (ValueError, OSError, KeyError) as exc:  # ConfigError, BundleError, a model not in the bundle
            print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
            return 2
        n_channels, length = len(spec.input.channels), spec.input.window_length
        rng = np.random.default_rng(0)
        windows = [Window(f"asset{i}", spec.name, 0.0, (length - 1) * spec.input.sample_period_s,
                          rng.standard_normal((n_channels, length)).astype(np.float32))
                   for i in range(max(args.batch))]

        async def measure() -> dict[Key, list[float]]:
            engines = {setting: InferenceEngine(bundle, dataclasses.replace(
                base_settings, intra_op_threads=setting[0], parallel_runs=setting[1]))
                for setting in args.settings}
            times: dict[Key, list[float]] = {}
            try:
                for _ in range(args.rounds):
                    for setting, engine in engines.items():
                        for size in args.batch:
                            for case, pause in (("back_to_back", 0.0), ("after_pause", args.pause)):
                                for _ in range(args.per_round):
                                    if pause:
                                        await asyncio.sleep(pause)
                                    start = time.perf_counter()
                                    await engine.score(windows[:size])
                                    times.setdefault((setting, size, case), []).append(
                                        time.perf_counter() - start)
            finally:
                for engine in engines.values():
                    engine.close()
            return times

        times = asyncio.run(measure())

    base_setting = args.settings[0]
    results: dict[str, Any] = {}
    for size in args.batch:
        for case in ("back_to_back", "after_pause"):
            base = float(np.median(times[(base_setting, size, case)]))
            results[f"batch_{size}_{case}"] = {
                f"{intra}x{parallel}": {
                    "median_ms": round(float(np.median(runs)) * 1000, 3),
                    "p90_ms": round(float(np.percentile(runs, 90)) * 1000, 3),
                    "batches": len(runs),
                    "speedup_vs_baseline": round(base / float(np.median(runs)), 2)}
                for (intra, parallel) in args.settings
                for runs in [times[((intra, parallel), size, case)]]}
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "model": f"{described}: {spec.name}, {n_channels} channels x {length} samples, providers "
                       f"{[name for name, _options in base_settings.providers]}, ORT threads not spinning",
              "settings": "INTRAxPARALLEL: intra-op threads per run x parallel runs per batch",
              "baseline": f"{base_setting[0]}x{base_setting[1]}", "pause_s": args.pause, "results": results}
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
