"""The int8 guard: pure decision logic over measured numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.quantize import MAX_AUC_DROP, PrecisionMeasurements, decide_precision
from export.run_dir import ExportError

FAST = {"batch1": 0.02, "batch32": 0.01}
SLOW = {"batch1": 0.04, "batch32": 0.02}


def measured(auc_int8: float | None = 0.899, spearman: float | None = 0.995,
             int8_latency: dict[str, float] | None = None) -> PrecisionMeasurements:
    return PrecisionMeasurements(0.90, auc_int8, spearman, SLOW,
                                 FAST if int8_latency is None else int8_latency)


def test_auto_keeps_int8_when_accurate_and_faster() -> None:
    decision = decide_precision("auto", measured())
    assert decision.chosen == "int8"
    assert "int8 kept" in decision.reason


@pytest.mark.parametrize(("m", "why"), [
    (measured(auc_int8=0.90 - MAX_AUC_DROP - 0.001), "ROC-AUC drops by 0.0040"),
    (measured(spearman=0.97), "Spearman vs fp32 0.9700 < 0.99"),
    (measured(int8_latency={"batch1": 0.05, "batch32": 0.01}), "int8 not faster at batch1"),
    (measured(int8_latency={"batch1": 0.01, "batch32": 0.02}), "int8 not faster at batch32"),
    (measured(auc_int8=None), "ROC-AUC could not be measured"),
    (measured(spearman=float("nan")), "Spearman correlation could not be measured"),
])
def test_auto_falls_back_to_fp32_and_says_why(m: PrecisionMeasurements, why: str) -> None:
    decision = decide_precision("auto", m)
    assert decision.chosen == "fp32"
    assert why in decision.reason


def test_auc_drop_at_the_limit_is_accepted() -> None:
    assert decide_precision("auto", measured(auc_int8=0.90 - MAX_AUC_DROP + 1e-9)).chosen == "int8"


def test_forced_int8_reports_the_measured_loss() -> None:
    decision = decide_precision("int8", measured(auc_int8=0.80, spearman=0.9))
    assert decision.chosen == "int8"
    assert "ROC-AUC drops by 0.1000" in decision.reason
    assert "Spearman vs fp32 0.9000" in decision.reason


def test_fp32_requested_and_bad_request() -> None:
    assert decide_precision("fp32", measured()).chosen == "fp32"
    with pytest.raises(ExportError, match="fp16"):
        decide_precision("fp16", measured())


def test_measurements_record_the_drop_and_limits() -> None:
    data = measured(auc_int8=0.85).to_dict()
    assert data["roc_auc_drop"] == pytest.approx(0.05)
    assert data["limits"] == {"max_roc_auc_drop": 0.003, "min_spearman": 0.99}


def test_quantize_int8_without_network_nodes_is_an_export_error(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from export.onnx_graph import INPUT_NAME
    from export.quantize import quantize_int8

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [INPUT_NAME], ["score"], axes=[1, 2], keepdims=0,
                          name="/ReduceMean")],
        "no_network",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 2, 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ExportError, match="no Conv/ConvTranspose/Gemm/MatMul nodes inside the network"):
        quantize_int8(path, tmp_path / "int8.onnx", np.zeros((4, 2, 8), dtype=np.float32))
    assert not (tmp_path / "int8.onnx").exists()
