"""Export benchmark: the C-MAPSS FD001 model at fp32 and int8, measured in one run, printed as JSON.

    # RUN_DIR from `edge-trainer fit`, or OUT/run of `edge-trainer benchmark cmapss --subset FD001 --out OUT`
    nice .venv/bin/python bench/export_bench.py --run RUN_DIR
    # or train FD001 first with the shipped config
    nice .venv/bin/python bench/export_bench.py --train-out DIR

Reports per precision: median latency per window on ONE thread at batch 1 and 32 (ONNX Runtime), model
size, test-set ROC-AUC (after the run's score baseline), Spearman of int8 vs fp32 scores, the fp32 parity
error against torch, and torch eager latency for the same scorer in the same process; plus what
`--precision auto` would choose, decided as export decides: on the validation windows (the test set only
when validation lacks a class), int8 calibrated on training windows (`train_sample.npz`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.onnx_graph import (  # noqa: E402
    check_parity,
    compare_latency,
    export_onnx,
    run_ort,
    session,
    torch_latency_ms,
)
from export.pipeline import MAX_PARITY_WINDOWS, QUANT_CALIBRATION_WINDOWS  # noqa: E402
from export.quantize import PrecisionMeasurements, decide_precision, quantize_int8, spread  # noqa: E402
from export.run_dir import load_run  # noqa: E402

DEFAULT_CONFIG = ROOT / "trainer" / "configs" / "cmapss_fd001.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="an existing RUN_DIR (FD001)")
    source.add_argument("--train-out", type=Path, help="train FD001 with --config into this folder first")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--repeats", type=int, default=1000,
                        help="timed runs at batch 1 (batch 32: a quarter)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_dir = args.run or _train(args.config, args.train_out)
    print(json.dumps(benchmark(run_dir, args.repeats), indent=2))
    return 0


def _train(config_path: Path, out: Path) -> Path:
    from trainer.config import load_config
    from trainer.run import fit_run

    fit_run(load_config(config_path), out / "run", progress=False)
    return out / "run"


def benchmark(run_dir: Path, repeats: int) -> dict[str, Any]:
    """Measure fp32 and int8 exports of RUN_DIR; see the module docstring."""
    import torch
    from scipy.stats import spearmanr

    from trainer.run import adjusted_scores, auc_or_none

    inputs = load_run(run_dir)
    windows = inputs.evaluation.windows
    labels = inputs.evaluation.labels
    baseline = inputs.run["score_baseline"]
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.machine(),
        "cpus": os.cpu_count(), "onnxruntime": __import__("onnxruntime").__version__,
        "torch": torch.__version__, "run": str(run_dir), "scoring": inputs.run["scoring"],
        "score_baseline": baseline, "evaluation_windows": len(windows),
        "window_shape": list(windows.shape[1:]), "threads": 1, "repeats_batch1": repeats,
        "repeats_batch32": max(5, repeats // 4)}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        paths = {"fp32": Path(tmp) / "fp32.onnx", "int8": Path(tmp) / "int8.onnx"}
        export_onnx(inputs.scorer, paths["fp32"], inputs.calibration.windows)
        parity = check_parity(inputs.scorer, paths["fp32"], spread(inputs.validation.windows,
                                                                           MAX_PARITY_WINDOWS))
        result["parity_max_rel_score_error_fp32"] = parity.max_rel_score_error
        sample = spread(inputs.quant_calibration.windows, QUANT_CALIBRATION_WINDOWS)
        result["int8_calibration"] = {"source": inputs.quant_calibration_source, "windows": len(sample)}
        quantize_int8(paths["fp32"], paths["int8"], sample)
        scores: dict[str, np.ndarray] = {}
        guard_scores: dict[str, np.ndarray] = {}
        latency = compare_latency(paths, windows, repeats)
        guard = inputs.guard
        for precision, path in paths.items():
            sess = session(path)
            raw = run_ort(sess, windows)["score"]
            scores[precision] = np.asarray(adjusted_scores(raw, inputs.evaluation.series, baseline))
            guard_raw = run_ort(sess, guard.windows)["score"]
            guard_scores[precision] = np.asarray(adjusted_scores(guard_raw, guard.series, baseline))
            result[precision] = {
                "model_bytes": path.stat().st_size,
                "roc_auc": auc_or_none(labels, scores[precision]),
                "guard_roc_auc": auc_or_none(guard.labels, guard_scores[precision]),
                "latency_ms_batch1": latency[precision]["batch1"],
                "latency_ms_batch32": latency[precision]["batch32"],
            }
    result["int8"]["spearman_vs_fp32"] = float(spearmanr(scores["fp32"], scores["int8"]).statistic)
    result["guard"] = {"set": inputs.guard_set, "windows": len(guard),
                       "spearman_int8_vs_fp32": float(spearmanr(guard_scores["fp32"],
                                                                guard_scores["int8"]).statistic)}
    result["torch_eager"] = {
        "latency_ms_batch1": torch_latency_ms(inputs.scorer, windows, 1, max(50, repeats // 5)),
        "latency_ms_batch32": torch_latency_ms(inputs.scorer, windows, 32, result["repeats_batch32"])}
    fp32, int8 = result["fp32"], result["int8"]
    m = PrecisionMeasurements(
        fp32["guard_roc_auc"], int8["guard_roc_auc"], result["guard"]["spearman_int8_vs_fp32"],
        {"batch1": fp32["latency_ms_batch1"], "batch32": fp32["latency_ms_batch32"]},
        {"batch1": int8["latency_ms_batch1"], "batch32": int8["latency_ms_batch32"]})
    decision = decide_precision("auto", m)
    result["auto_would_choose"] = {"precision": decision.chosen, "reason": decision.reason}
    return result


if __name__ == "__main__":
    sys.exit(main())
