"""The exported graph: torch `ExportableScorer` -> ONNX (opset 17, dynamic batch), ONNX Runtime helpers,
and the fp32 parity check against torch.

Graph input `window` float32 `[batch, C_in, L]` (raw physical units); outputs `score` `[batch]`,
`channel_error` `[batch, C_in]`, `latent_mean` `[batch, Z]`, `time_error` `[batch, L]`.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from export.run_dir import ExportError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "window"
OUTPUT_NAMES = ("score", "channel_error", "latent_mean", "time_error")
PARITY_RTOL = 1e-4  # relative error allowed on scores, ORT fp32 vs torch
PARITY_ATOL = 1e-6  # floor for scores at (or very near) zero


@dataclass(frozen=True)
class ParityReport:
    windows: int
    max_rel_score_error: float
    max_abs_errors: dict[str, float]


def export_onnx(scorer: Any, path: Path, example: np.ndarray) -> None:
    """Export `scorer` (raw windows -> 4 outputs) with TorchScript-based `torch.onnx.export` at opset 17."""
    import torch

    dummy = torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32))
    axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False on purpose: the TorchScript exporter emits opset 17 without onnxscript (RECIPES.md)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(scorer.eval(), (dummy,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          do_constant_folding=True)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    names = [o.name for o in model.graph.output]
    if names != list(OUTPUT_NAMES):
        raise ExportError(f"exported graph has outputs {names}, expected {list(OUTPUT_NAMES)}")


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with `threads` intra-op threads (1 = the benchmark setting)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(sess: ort.InferenceSession, windows: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """All four outputs for `windows`, batched."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
    data = np.ascontiguousarray(windows, dtype=np.float32)
    for start in range(0, len(data), batch_size):
        outputs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: data[start:start + batch_size]})
        for name, value in zip(OUTPUT_NAMES, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def run_torch(scorer: Any, windows: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The torch scorer's four outputs for `windows` (the reference the graph must match)."""
    from trainer.scoring import score_windows

    out = score_windows(scorer, windows, batch_size)
    return {"score": out.score, "channel_error": out.channel_error, "latent_mean": out.latent_mean,
            "time_error": out.time_error}


def check_parity(scorer: Any, path: Path, windows: np.ndarray, rtol: float = PARITY_RTOL,
                 atol: float = PARITY_ATOL) -> ParityReport:
    """ORT fp32 vs torch on `windows`; `ExportError` when any score differs by more than
    `atol + rtol * |torch score|`."""
    expected = run_torch(scorer, windows)
    actual = run_ort(session(path), windows)
    errors = {name: float(np.max(np.abs(actual[name] - expected[name]))) for name in OUTPUT_NAMES}
    diff = np.abs(actual["score"].astype(np.float64) - expected["score"])
    rel = diff / np.maximum(np.abs(expected["score"]), atol / rtol)
    bad = np.flatnonzero(diff > atol + rtol * np.abs(expected["score"]))
    if bad.size:
        i = int(bad[0])
        raise ExportError(
            f"parity check failed: ONNX Runtime fp32 scores differ from torch on {bad.size} of "
            f"{len(windows)} windows (first: window {i}, torch {expected['score'][i]:.8g}, "
            f"ORT {actual['score'][i]:.8g}, relative error {rel[i]:.2e} > {rtol:g})")
    report = ParityReport(len(windows), float(rel.max()), errors)
    log.info("parity ORT fp32 vs torch on %d windows: max relative score error %.2e", len(windows),
             report.max_rel_score_error)
    return report


def compare_latency(paths: dict[str, Path], windows: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms/window of each model on one thread at batch 1 (`repeats` runs) and batch 32 (a quarter,
    at least 5). The models take turns run by run, so a busy machine slows them alike."""
    sessions = {name: session(path, threads=1) for name, path in paths.items()}
    result: dict[str, dict[str, float]] = {name: {} for name in paths}
    for batch_size, count in ((1, repeats), (32, max(5, repeats // 4))):
        batch = np.ascontiguousarray(np.resize(windows, (batch_size, *windows.shape[1:])), dtype=np.float32)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for sess in sessions.values():
            sess.run(None, {INPUT_NAME: batch})  # warm-up
        for _ in range(count):
            for name, sess in sessions.items():
                start = time.perf_counter()
                sess.run(None, {INPUT_NAME: batch})
                times[name].append(time.perf_counter() - start)
        for name in paths:
            result[name][f"batch{batch_size}"] = float(np.median(times[name]) * 1000.0 / batch_size)
    return result


def torch_latency_ms(scorer: Any, windows: np.ndarray, batch_size: int, repeats: int) -> float:
    """Median milliseconds per window of the torch eager scorer on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = torch.from_numpy(np.ascontiguousarray(np.resize(windows, (batch_size, *windows.shape[1:])),
                                                      dtype=np.float32))
        times = []
        with torch.no_grad():
            scorer(batch)
            for _ in range(repeats):
                start = time.perf_counter()
                scorer(batch)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1000.0 / batch_size)


def onnx_ir_version(path: Path) -> int:
    return int(onnx.load(str(path), load_external_data=False).ir_version)
