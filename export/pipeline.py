"""`export_run`: a trainer RUN_DIR -> one signed bundle.

Steps: load and check the run; export the scorer to ONNX (fp32) and check parity with torch; build int8
(unless fp32 is requested; activation ranges from TRAINING windows, `train_sample.npz`) and measure both on
the labelled validation windows (ROC-AUC, Spearman; the test set only when validation lacks a class, and the
manifest says which set decided) and for speed; decide the precision; measure ROC-AUC of both on the test
(evaluation) windows for the record only; recalibrate threshold (times run.json's `threshold.params.margin`
when it has one), quantiles, drift reference and reference I/O on the CHOSEN graph's own scores of the
calibration windows (what the agent will compute); write the bundle atomically.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import (
    SCHEMA_VERSION,
    BundleError,
    Manifest,
    default_severity,
    flatline_reference,
    load_private_key,
    write_bundle,
)
from export.onnx_graph import (
    OPSET,
    OUTPUT_NAMES,
    ParityReport,
    check_parity,
    compare_latency,
    export_onnx,
    onnx_ir_version,
    run_ort,
    session,
)
from export.quantize import (
    PrecisionDecision,
    PrecisionMeasurements,
    decide_precision,
    quantize_int8,
    spread,
)
from export.run_dir import ExportError, RunInputs, WindowData, load_run

log = logging.getLogger(__name__)

MIN_ONNXRUNTIME = "1.17.0"  # the agent's floor (pyproject); reads ONNX IR version <= 9
MAX_IR_FOR_FLOOR = 9
MAX_DRIFT_SAMPLES = 256
MAX_PARITY_WINDOWS = 512
QUANT_CALIBRATION_WINDOWS = 512
REFERENCE_NORMAL, REFERENCE_ANOMALOUS = 4, 4
REFERENCE_TOLERANCE = {"fp32": (1e-4, 1e-5), "int8": (5e-2, 1e-3)}  # (rtol, atol) across CPUs
ROOT_CAUSE_READING = ("share of channel c = channel_error[c] / sum(channel_error); channel_error is how far "
                      "the channel's worst 5-step stretch of reconstruction residual (energy or bias, the "
                      "residual scaled per operating regime) lies above healthy validation windows, in "
                      "healthy standard deviations, clipped at 0 (0 = no worse than healthy). The largest "
                      "share is the most likely cause. Condition channels (inputs only) always read 0.")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    decision: PrecisionDecision
    measurements: PrecisionMeasurements
    parity: ParityReport


def export_run(run_dir: Path | str, out: Path | str, *, precision: str = "auto",
               sign_key: Path | str | None = None, name: str | None = None, version: str | None = None,
               model_name: str | None = None, device_profiles: tuple[str, ...] = ("generic",),
               latency_repeats: int = 200) -> ExportResult:
    """Export RUN_DIR to the bundle `out` (see the module docstring). Raises `ExportError` (or a
    `BundleError` for keys and manifest problems) with nothing written at `out`."""
    out_path = Path(out)
    if out_path.exists():
        raise ExportError(f"{out_path}: output file already exists; refusing to overwrite")
    if precision not in ("auto", "fp32", "int8"):
        raise ExportError(f"--precision must be auto, fp32 or int8, got {precision!r}")
    key = load_private_key(sign_key) if sign_key is not None else None  # fail fast on a bad key
    inputs = load_run(run_dir)
    run = inputs.run
    with tempfile.TemporaryDirectory(prefix="export-") as tmp_name:
        tmp = Path(tmp_name)
        paths = {"fp32": tmp / "model_fp32.onnx", "int8": tmp / "model_int8.onnx"}
        export_onnx(inputs.scorer, paths["fp32"], inputs.calibration.windows)
        parity = check_parity(inputs.scorer, paths["fp32"], spread(inputs.validation.windows,
                                                                     MAX_PARITY_WINDOWS))
        measurements, decision, test_auc = _measure_and_decide(inputs, paths, precision, latency_repeats)
        chosen = paths[decision.chosen]
        log.info("precision: %s (%s; guard on the %s windows)", decision.chosen, decision.reason,
                 inputs.guard_set)
        model = _model_entry(inputs, chosen, decision, measurements, parity, test_auc=test_auc, tmp=tmp,
                             model_name=model_name or _safe_name(str(run.get("data_source") or "model")))
        ir_version = onnx_ir_version(chosen)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name or _safe_name(inputs.run_dir.resolve().name),
            "version": version or datetime.now(timezone.utc).strftime("%Y.%m.%d-%H%M%S"),
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trainer": {"version": str(run.get("trainer_version", "unknown")),
                        "git_commit": run.get("git_commit")},
            "compatibility": {"min_onnxruntime": _min_onnxruntime(ir_version), "opset": OPSET,
                              "device_profiles": list(device_profiles)},
            "files": {}, "models": [model]}
        files = {model["file"]: chosen, model["reference"]["file"]: tmp / "reference.npz"}
        try:
            written = write_bundle(out_path, manifest, files, sign_key=key)
        except BundleError as exc:
            raise ExportError(f"cannot write the bundle: {exc}") from exc
    log.info("exported %s -> %s (%s, threshold %.6g)", inputs.run_dir, out_path, decision.chosen,
             model["threshold"]["value"])
    return ExportResult(out_path, written, decision, measurements, parity)


def _measure_and_decide(inputs: RunInputs, paths: dict[str, Path], precision: str, repeats: int
                        ) -> tuple[PrecisionMeasurements, PrecisionDecision, dict[str, float | None]]:
    """Guard measurements on `inputs.guard` (validation when it has both classes), the decision, and the
    test-set ROC-AUC of each built precision (a measurement only: the test set chooses nothing)."""
    from scipy.stats import spearmanr

    guard = inputs.guard
    fp32_scores = _scores(inputs, paths["fp32"], guard)
    auc_fp32 = _auc(guard.labels, fp32_scores)
    test_auc: dict[str, float | None] = {"fp32": _test_auc(inputs, paths["fp32"]), "int8": None}
    if precision == "fp32":
        m = PrecisionMeasurements(auc_fp32, latency_ms_fp32=_fp32_latency(paths, guard.windows, repeats))
        return m, decide_precision(precision, m), test_auc
    try:
        sample = spread(inputs.quant_calibration.windows, QUANT_CALIBRATION_WINDOWS)
        quantize_int8(paths["fp32"], paths["int8"], sample)
    except (ExportError, ValueError, RuntimeError, OSError) as exc:  # ORT's quantiser raises plain errors
        if precision == "int8":
            raise ExportError(f"int8 quantisation failed: {exc}") from exc
        log.warning("int8 quantisation failed, keeping fp32: %s", exc)
        m = PrecisionMeasurements(auc_fp32, latency_ms_fp32=_fp32_latency(paths, guard.windows, repeats))
        return m, PrecisionDecision(precision, "fp32", f"int8 quantisation failed: {exc}"), test_auc
    int8_scores = _scores(inputs, paths["int8"], guard)
    rho = float(spearmanr(fp32_scores, int8_scores).statistic) if len(fp32_scores) > 2 else None
    latency = compare_latency(paths, guard.windows, repeats)
    m = PrecisionMeasurements(auc_fp32, _auc(guard.labels, int8_scores),
                              None if rho is None or not np.isfinite(rho) else rho,
                              latency["fp32"], latency["int8"])
    test_auc["int8"] = _test_auc(inputs, paths["int8"])
    return m, decide_precision(precision, m), test_auc


def _scores(inputs: RunInputs, path: Path, data: WindowData) -> np.ndarray:
    return _adjusted(inputs, data, run_ort(session(path), data.windows)["score"])


def _test_auc(inputs: RunInputs, path: Path) -> float | None:
    return _auc(inputs.evaluation.labels, _scores(inputs, path, inputs.evaluation))


def _fp32_latency(paths: dict[str, Path], windows: np.ndarray, repeats: int) -> dict[str, float]:
    return compare_latency({"fp32": paths["fp32"]}, windows, repeats)["fp32"]


def _model_entry(inputs: RunInputs, chosen: Path, decision: PrecisionDecision, m: PrecisionMeasurements,
                 parity: ParityReport, *, test_auc: dict[str, float | None], tmp: Path,
                 model_name: str) -> dict[str, Any]:
    from trainer.calibration import CalibrationError, calibrate, score_quantiles, with_margin

    run, cal = inputs.run, inputs.calibration
    sess = session(chosen)
    cal_out = run_ort(sess, cal.windows)
    cal_scores = _adjusted(inputs, cal, cal_out["score"])
    settings = inputs.calibration_settings
    try:
        spec = calibrate(cal_scores, settings.method, settings.target_far, **settings.params)
        threshold = with_margin(spec, settings.margin).to_dict()
        quantiles = score_quantiles(cal_scores)
    except CalibrationError as exc:
        raise ExportError(f"recalibrating the threshold on the exported model's scores failed: {exc}") \
            from exc
    evaluation = inputs.evaluation
    eval_scores = _adjusted(inputs, evaluation, run_ort(sess, evaluation.windows)["score"])
    reference = _reference_io(sess, cal, evaluation, eval_scores, tmp / "reference.npz")
    rtol, atol = REFERENCE_TOLERANCE[decision.chosen]
    chosen_latency = m.latency_ms_int8 if decision.chosen == "int8" else m.latency_ms_fp32
    labels = evaluation.labels
    above = eval_scores > threshold["value"]
    # Test-set (evaluation) ROC-AUC of each precision: measurements for the record; the guard decided on
    # `inputs.guard_set` (see precision_decision.measurements).
    metrics: dict[str, Any] = {
        "roc_auc_fp32": test_auc["fp32"], "roc_auc_int8": test_auc["int8"], "spearman_int8": m.spearman_int8,
        "roc_auc": test_auc[decision.chosen],
        "guard_set": inputs.guard_set, "guard_windows": len(inputs.guard),
        "guard_roc_auc_fp32": m.roc_auc_fp32, "guard_roc_auc_int8": m.roc_auc_int8,
        "int8_calibration_source": inputs.quant_calibration_source,
        "latency_ms_batch1": chosen_latency.get("batch1"),
        "latency_ms_batch32": chosen_latency.get("batch32"),
        "model_bytes": chosen.stat().st_size, "parity_max_rel_score_error": parity.max_rel_score_error,
        "parity_windows": parity.windows, "calibration_windows": len(cal),
        "evaluation_windows": len(evaluation),
        "threshold_torch": float(run["threshold"]["value"]),
        "evaluation_far": _rate(above[labels == 0]) if labels is not None else None,
        "evaluation_recall": _rate(above[labels == 1]) if labels is not None else None,
    }
    latents = cal_out["latent_mean"].astype(np.float64)
    z = latents.shape[1]
    cov = np.cov(latents, rowvar=False).reshape(z, z) if len(latents) > 1 else np.zeros((z, z))
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(latents), size=min(MAX_DRIFT_SAMPLES, len(latents)), replace=False))
    return {
        "name": model_name, "modality": "timeseries", "file": f"models/{model_name}.onnx", "sha256": None,
        "opset": OPSET, "precision": decision.chosen,
        "precision_decision": {"requested": decision.requested, "chosen": decision.chosen,
                               "reason": decision.reason,
                               "measurements": {**m.to_dict(), "guard_set": inputs.guard_set,
                                                "guard_windows": len(inputs.guard),
                                                "int8_calibration": inputs.quant_calibration_source,
                                                "int8_calibration_windows": min(
                                                    len(inputs.quant_calibration),
                                                    QUANT_CALIBRATION_WINDOWS)}},
        "input": {"name": "window", "layout": "NCL", "dtype": "float32", "channels": inputs.input_channels,
                  "units": _units(run), "window_length": inputs.window_length, "stride": int(run["stride"]),
                  "sample_period_s": float(run["sample_period_s"])},
        "outputs": {name: name for name in OUTPUT_NAMES},
        "threshold": threshold, "score_quantiles": quantiles,
        "severity": default_severity(threshold["value"], quantiles),
        "debounce": dict(run.get("debounce") or {"k": 3, "n": 5, "clear_windows": 5}),
        "score_baseline": run["score_baseline"],
        "drift_reference": {"latent_mean": latents.mean(axis=0).tolist(), "latent_cov": cov.tolist(),
                            "sample_latents": latents[pick].tolist(),
                            "sample_scores": cal_scores[pick].tolist()},
        "root_cause": {"channels": inputs.input_channels, "reading": ROOT_CAUSE_READING},
        "flatline": flatline_reference(inputs.input_channels, healthy_windows(inputs)),
        "reference": {"file": f"reference/{model_name}.npz", "sha256": None, "count": reference,
                      "rtol": rtol, "atol": atol},
        "metrics": metrics,
    }


def healthy_windows(inputs: RunInputs) -> np.ndarray:
    """The run's normal raw windows the flat-line list rests on: calibration (never trained on) and the
    sample of fit windows (the calibration set again for older runs: `flatline_reference` counts each
    window once)."""
    return np.concatenate([inputs.calibration.windows, inputs.quant_calibration.windows])


def _reference_io(sess: Any, cal: WindowData, evaluation: WindowData, eval_scores: np.ndarray,
                  path: Path) -> int:
    """Normal calibration windows plus the highest-scoring evaluation windows, with the graph's outputs."""
    normal = spread(cal.windows, REFERENCE_NORMAL)
    top = evaluation.windows[np.argsort(eval_scores)[::-1][:REFERENCE_ANOMALOUS]]
    windows = np.ascontiguousarray(np.concatenate([normal, top]), dtype=np.float32)
    outputs = run_ort(sess, windows)
    np.savez(path, window=windows, **outputs)  # type: ignore[arg-type]
    return len(windows)


def _adjusted(inputs: RunInputs, data: WindowData, score: np.ndarray) -> np.ndarray:
    from trainer.run import adjusted_scores

    return np.asarray(adjusted_scores(score, data.series, inputs.run["score_baseline"]), dtype=np.float64)


def _auc(labels: np.ndarray | None, scores: np.ndarray) -> float | None:
    from trainer.run import auc_or_none

    value = auc_or_none(labels, scores)
    return None if value is None else float(value)


def _rate(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if flags.size else None


def _units(run: dict[str, Any]) -> list[str | None]:
    units = run.get("units")
    if isinstance(units, dict):
        return [units.get(ch) for ch in run["input_channels"]]
    if isinstance(units, list) and len(units) == len(run["input_channels"]):
        return list(units)
    return [None] * len(run["input_channels"])


def _min_onnxruntime(ir_version: int) -> str:
    if ir_version <= MAX_IR_FOR_FLOOR:
        return MIN_ONNXRUNTIME
    import onnxruntime

    log.warning("graph has ONNX IR version %d; requiring onnxruntime >= %s (the exporting version)",
                ir_version, onnxruntime.__version__)
    return str(onnxruntime.__version__).split("+")[0]


def _safe_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-._+")[:128]
    return cleaned or "bundle"
