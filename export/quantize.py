"""Static int8 quantisation (QDQ, per-channel weights) and the accuracy + speed guard that decides whether
a bundle ships int8 or fp32.

Only the network's Conv / ConvTranspose / Gemm / MatMul nodes are quantised: those inside a submodule
(TorchScript export names them `/encoder/encoder.0/Conv`, `/to_mu/Gemm`, `/head/Conv`), not the scorer's
own top-level ops such as the latent score's `/MatMul`. The scaling of raw physical inputs and the scoring
stay fp32: one int8 range across channels in different physical units, or a quantised squared error,
would wreck the score.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.onnx_graph import INPUT_NAME
from export.run_dir import ExportError

log = logging.getLogger(__name__)

MAX_AUC_DROP = 0.003
MIN_SPEARMAN = 0.99
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class PrecisionMeasurements:
    """What the guard compares. AUCs on the evaluation set (None when it has a single class), Spearman of
    int8 vs fp32 scores on the same windows, latency in ms per window on one thread."""

    roc_auc_fp32: float | None
    roc_auc_int8: float | None = None
    spearman_int8: float | None = None
    latency_ms_fp32: dict[str, float] = field(default_factory=dict)  # {"batch1": .., "batch32": ..}
    latency_ms_int8: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        drop = None if self.roc_auc_fp32 is None or self.roc_auc_int8 is None \
            else self.roc_auc_fp32 - self.roc_auc_int8
        return {"roc_auc_fp32": self.roc_auc_fp32, "roc_auc_int8": self.roc_auc_int8, "roc_auc_drop": drop,
                "spearman_int8": self.spearman_int8, "latency_ms_fp32": dict(self.latency_ms_fp32),
                "latency_ms_int8": dict(self.latency_ms_int8),
                "limits": {"max_roc_auc_drop": MAX_AUC_DROP, "min_spearman": MIN_SPEARMAN}}


@dataclass(frozen=True)
class PrecisionDecision:
    requested: str
    chosen: str
    reason: str


def decide_precision(requested: str, m: PrecisionMeasurements) -> PrecisionDecision:
    """`auto` keeps int8 only when the ROC-AUC drop is <= MAX_AUC_DROP, Spearman >= MIN_SPEARMAN, and int8
    is faster per window at batch 1 and at batch 32; `fp32`/`int8` are obeyed (with the loss stated)."""
    if requested not in ("auto", "fp32", "int8"):
        raise ExportError(f"--precision must be auto, fp32 or int8, got {requested!r}")
    if requested == "fp32":
        return PrecisionDecision(requested, "fp32", "fp32 requested")
    failures = _int8_failures(m)
    if requested == "int8":
        stated = "; ".join(failures) if failures else "int8 passes the accuracy and speed guard"
        return PrecisionDecision(requested, "int8", f"int8 requested (guard: {stated})")
    if failures:
        return PrecisionDecision(requested, "fp32", "int8 rejected: " + "; ".join(failures))
    return PrecisionDecision(requested, "int8", "int8 kept: ROC-AUC drop "
                             f"{_fmt(_drop(m))} <= {MAX_AUC_DROP}, Spearman {_fmt(m.spearman_int8)} >= "
                             f"{MIN_SPEARMAN}, faster at batch 1 and 32")


def _drop(m: PrecisionMeasurements) -> float | None:
    if m.roc_auc_fp32 is None or m.roc_auc_int8 is None:
        return None
    return m.roc_auc_fp32 - m.roc_auc_int8


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _int8_failures(m: PrecisionMeasurements) -> list[str]:
    failures = []
    drop = _drop(m)
    if drop is None:
        failures.append("ROC-AUC could not be measured (evaluation set needs both classes)")
    elif drop > MAX_AUC_DROP:
        failures.append(f"ROC-AUC drops by {drop:.4f} (fp32 {m.roc_auc_fp32:.4f}, int8 {m.roc_auc_int8:.4f}) "
                        f"> {MAX_AUC_DROP}")
    if m.spearman_int8 is None or not np.isfinite(m.spearman_int8):
        failures.append("Spearman correlation could not be measured")
    elif m.spearman_int8 < MIN_SPEARMAN:
        failures.append(f"Spearman vs fp32 {m.spearman_int8:.4f} < {MIN_SPEARMAN}")
    for batch in ("batch1", "batch32"):
        fp32, int8 = m.latency_ms_fp32.get(batch), m.latency_ms_int8.get(batch)
        if fp32 is None or int8 is None:
            failures.append(f"latency at {batch} not measured")
        elif int8 >= fp32:
            failures.append(f"int8 not faster at {batch} ({int8:.4f} vs fp32 {fp32:.4f} ms/window)")
    return failures


class _WindowReader:
    """`CalibrationDataReader` over raw windows, a few at a time."""

    def __init__(self, windows: np.ndarray, batch_size: int = 16) -> None:
        data = np.ascontiguousarray(windows, dtype=np.float32)
        self._batches: Iterator[np.ndarray] = iter(
            [data[i:i + batch_size] for i in range(0, len(data), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def spread(windows: np.ndarray, count: int) -> np.ndarray:
    """Up to `count` windows evenly spread over the set (deterministic), e.g. the quantisation calibration
    sample."""
    if len(windows) <= count:
        return windows
    return windows[np.linspace(0, len(windows) - 1, count).round().astype(int)]


def network_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes to quantise: the VAE's weight-bearing ops."""
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name.count("/") >= 2]


def quantize_int8(fp32_path: Path, out_path: Path, calibration_windows: np.ndarray) -> None:
    """Static QDQ int8 with per-channel weights, activation ranges from `calibration_windows` (MinMax)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        nodes = network_nodes(onnx.load(str(pre)))
        if not nodes:
            raise ExportError(f"{fp32_path}: no {'/'.join(QUANTIZED_OPS)} nodes inside the network to "
                              "quantise")
        quantize_static(str(pre), str(out_path), _WindowReader(calibration_windows),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    log.info("int8 candidate: %d nodes quantised (QDQ, per-channel weights); checked against fp32 next",
             len(nodes))
