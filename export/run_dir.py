"""Reading a trainer RUN_DIR for export, with errors that say which file or key is wrong.

RUN_DIR (written by `trainer.run.fit_run`): `checkpoint.pt`, `run.json`, `calibration.npz`, `evaluation.npz`,
optionally `validation.npz` (parity windows, and the int8 guard's labelled data when it holds both classes;
evaluation windows are used when absent), `train_sample.npz` (fit windows: int8 calibration data; older runs
lack it and fall back to `calibration.npz` with a warning) and `config.toml` (the calibration method's
parameters; rebuilt from `run.json`'s threshold when absent). `run.json`'s optional `detrend_channels` (model
channels centred per window, in-graph) goes into the scorer; runs without it centre nothing. A threshold
with `params.margin` (SKAB run directories, `trainer.benchmarks.skab_export`) keeps that margin when export
recalibrates.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REQUIRED_FILES = ("checkpoint.pt", "run.json", "calibration.npz", "evaluation.npz")
REQUIRED_RUN_KEYS = ("channels", "input_channels", "window_length", "stride", "sample_period_s", "scaler",
                     "scoring", "score_baseline", "threshold", "model_shape")


class ExportError(Exception):
    """Export cannot proceed; the message names the file, key or check that failed."""


@dataclass(frozen=True)
class WindowData:
    """Raw windows `[N, C_in, L]` with the series each came from and labels (when labelled)."""

    windows: np.ndarray
    series: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.windows)


@dataclass(frozen=True)
class CalibrationSettings:
    """How export recalibrates: `calibrate(scores, method, target_far, **params)`, then times `margin`
    (`trainer.calibration.with_margin`; 1 unless run.json's threshold records one)."""

    method: str
    target_far: float
    params: dict[str, Any]
    margin: float = 1.0


@dataclass(frozen=True)
class RunInputs:
    """Everything export reads from a RUN_DIR; `scorer` is the torch `ExportableScorer` (eval mode)."""

    run_dir: Path
    run: dict[str, Any]
    scorer: Any
    calibration: WindowData
    evaluation: WindowData
    validation: WindowData
    calibration_settings: CalibrationSettings
    quant_calibration: WindowData  # training windows for int8 activation ranges
    quant_calibration_source: str  # "train_sample.npz" or the "calibration.npz" fallback
    guard: WindowData  # labelled windows (both classes) the int8 guard decides on
    guard_set: str  # "validation" or the "evaluation" (test) fallback

    @property
    def calibration_scores(self) -> list[float] | None:
        """run.json's sorted calibration-score sample (`validation_scores` in runs before the rename)."""
        scores = self.run.get("calibration_scores", self.run.get("validation_scores"))
        return None if scores is None else [float(v) for v in scores]

    @property
    def input_channels(self) -> list[str]:
        return list(self.run["input_channels"])

    @property
    def window_length(self) -> int:
        return int(self.run["window_length"])


def load_run(run_dir: Path | str) -> RunInputs:
    """Check and load a RUN_DIR. Raises `ExportError` for a missing or partial directory, a bad `run.json`,
    windows of the wrong shape, or a checkpoint that does not match its config."""
    from trainer.scoring import run_scorer
    from trainer.train import load_checkpoint

    root = Path(run_dir)
    if not root.is_dir():
        raise ExportError(f"{root}: run directory not found")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise ExportError(f"{root}: incomplete run directory, missing {', '.join(missing)} "
                          "(train with `edge-trainer fit` first)")
    try:
        run = json.loads((root / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{root / 'run.json'}: not readable JSON ({exc})") from exc
    if not isinstance(run, dict):
        raise ExportError(f"{root / 'run.json'}: expected a JSON object")
    absent = [key for key in REQUIRED_RUN_KEYS if key not in run]
    if absent:
        raise ExportError(f"{root / 'run.json'}: missing key(s) {', '.join(absent)}")
    _check_run_values(root / "run.json", run)
    try:
        vae, metadata = load_checkpoint(root / "checkpoint.pt")
    except (ValueError, OSError, RuntimeError) as exc:
        raise ExportError(f"{root / 'checkpoint.pt'}: cannot load checkpoint ({exc})") from exc
    _check_consistency(root, run, vae, metadata)
    try:
        scorer = run_scorer(vae, run)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ExportError(f"{root / 'run.json'}: scaler/scoring/detrend_channels do not fit the checkpoint "
                          f"({exc})") from exc
    shape = (len(run["input_channels"]), int(run["window_length"]))
    calibration = _load_windows(root / "calibration.npz", shape, labelled=False)
    evaluation = _load_windows(root / "evaluation.npz", shape, labelled=True)
    validation_path = root / "validation.npz"
    validation = _load_windows(validation_path, shape, labelled=False) if validation_path.is_file() \
        else evaluation
    sample_path = root / "train_sample.npz"
    if sample_path.is_file():
        quant, quant_source = _load_windows(sample_path, shape, labelled=False), sample_path.name
    else:
        log.warning("%s: no train_sample.npz (a run from an older trainer); int8 calibration uses the "
                    "calibration windows instead of training windows", root)
        quant, quant_source = calibration, "calibration.npz"
    if validation is not evaluation and _both_classes(validation.labels):
        guard, guard_set = validation, "validation"
    elif _both_classes(evaluation.labels):
        log.warning("%s: validation windows lack labels of both classes; the int8 guard falls back to the "
                    "evaluation (test) windows", root)
        guard, guard_set = evaluation, "evaluation"
    else:  # normal data only (a plant's own history): no ROC-AUC to guard int8 with
        log.info("%s: no labelled windows of both classes (validation or evaluation): the int8 guard cannot "
                 "measure ROC-AUC, so --precision auto keeps fp32 (--precision int8 forces it)", root)
        guard, guard_set = evaluation, "evaluation"
    return RunInputs(root, run, scorer, calibration, evaluation, validation, _calibration_settings(root, run),
                     quant, quant_source, guard, guard_set)


def _both_classes(labels: np.ndarray | None) -> bool:
    return labels is not None and 0 < int(np.sum(labels == 1)) < len(labels)


def _check_run_values(path: Path, run: dict[str, Any]) -> None:
    """The values the manifest and the agent depend on, checked before any work (a bad one used to fail
    only at the manifest check, after the quantisation and the parity runs)."""
    for key in ("window_length", "stride"):
        value = run[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(f"{path}: {key} must be a positive integer, got {value!r:.60}")
    period = run["sample_period_s"]
    if isinstance(period, bool) or not isinstance(period, int | float) or not 0 < period < float("inf"):
        raise ExportError(f"{path}: sample_period_s must be a positive number of seconds (the time between "
                          f"rows at the gateway), got {period!r:.60}")
    for key in ("channels", "input_channels"):
        names = run[key]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ExportError(f"{path}: {key} must be a non-empty list of channel names, got {names!r:.60}")


def _check_consistency(root: Path, run: dict[str, Any], vae: Any, metadata: dict[str, Any]) -> None:
    problems = []
    for key in ("channels", "input_channels", "window_length", "scoring", "scaler"):
        if key in metadata and metadata[key] != run[key]:
            problems.append(f"{key}: checkpoint has {_short(metadata[key])}, run.json has {_short(run[key])}")
    centred = run.get("detrend_channels", [])  # absent (older runs): nothing centred
    if "detrend_channels" in metadata and metadata["detrend_channels"] != centred:
        problems.append(f"detrend_channels: checkpoint has {_short(metadata['detrend_channels'])}, run.json "
                        f"has {_short(centred)}")
    shape = vae.shape.to_dict()
    if _stated_shape(run["model_shape"]) != shape:
        problems.append(f"model_shape: checkpoint has {shape}, run.json has {run['model_shape']}")
    if shape["n_channels"] != len(run["channels"]):
        problems.append(f"the network takes {shape['n_channels']} channels, run.json lists "
                        f"{len(run['channels'])}")
    if shape["length"] != run["window_length"]:
        problems.append(f"the network takes windows of {shape['length']}, run.json says "
                        f"{run['window_length']}")
    config_path = root / "config.toml"
    if config_path.is_file():
        from trainer.config import load_config

        try:
            model = load_config(config_path).model
        except ValueError as exc:  # ConfigError is a ValueError naming the key path
            raise ExportError(f"{config_path}: {exc}") from exc
        wanted = {"kind": model.kind, "latent_dim": model.latent_dim, "hidden": list(model.hidden),
                  "kernel_size": model.kernel_size}
        if model.kind == "tcn_vae":
            wanted["dilations"] = list(model.dilations)
        for key, value in wanted.items():
            if shape[key] != value:
                problems.append(f"model.{key}: config.toml says {value}, the checkpoint has {shape[key]}")
    if problems:
        raise ExportError(f"{root / 'checkpoint.pt'}: checkpoint does not match its config: "
                          + "; ".join(problems))


def _stated_shape(stated: Any) -> Any:
    """run.json's `model_shape` with the keys runs from before `kind` lack filled in as the checkpoint
    loader fills them (a Conv1D VAE); as it is when it cannot be read."""
    from trainer.torch_model import VaeShape

    try:
        return VaeShape.from_dict(stated).to_dict()
    except (KeyError, TypeError, ValueError, AttributeError):
        return stated


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


def _load_windows(path: Path, shape: tuple[int, int], labelled: bool) -> WindowData:
    try:
        with np.load(path, allow_pickle=False) as blob:
            windows = np.asarray(blob["windows"], dtype=np.float32)
            series = np.asarray(blob["series"]).astype(str) if "series" in blob.files \
                else np.zeros(len(windows)).astype(str)
            labels = np.asarray(blob["labels"]).astype(np.int64) if "labels" in blob.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{path}: not a readable windows file ({exc})") from exc
    if windows.ndim != 3 or windows.shape[1:] != shape:
        raise ExportError(f"{path}: windows have shape {windows.shape}, expected [N, {shape[0]}, {shape[1]}] "
                          "(input_channels x window_length from run.json)")
    if len(windows) == 0:
        raise ExportError(f"{path}: no windows")
    if not np.isfinite(windows).all():
        raise ExportError(f"{path}: windows contain NaN or infinite values")
    if len(series) != len(windows) or (labels is not None and len(labels) != len(windows)):
        raise ExportError(f"{path}: series/labels do not have one entry per window")
    if labelled and labels is None:
        raise ExportError(f"{path}: no labels (needed for ROC-AUC of the precision guard)")
    return WindowData(windows, series, labels)


def _calibration_settings(root: Path, run: dict[str, Any]) -> CalibrationSettings:
    threshold = run["threshold"]
    config_path = root / "config.toml"
    if config_path.is_file():
        from trainer.config import load_config

        c = load_config(config_path).calibration
        if c.method == threshold.get("method"):
            return CalibrationSettings(c.method, c.target_far, dict(c.params), _margin(threshold))
        log.warning("config.toml calibrates with %s but run.json's threshold used %s; following run.json",
                    c.method, threshold.get("method"))
    return settings_from_threshold(threshold)


def settings_from_threshold(threshold: dict[str, Any]) -> CalibrationSettings:
    """The calibration inputs behind a `ThresholdSpec.to_dict()`: its method, target rate, and those of its
    `params` that are inputs of the method (`trainer.config.CALIBRATION_PARAMS`), not fitted values. A `k`
    of mad/sigma or a `q` of percentile derived from the target rate is left out so that the rate drives it
    again."""
    from trainer.config import CALIBRATION_PARAMS

    if not isinstance(threshold, dict):
        raise ExportError(f"run.json: threshold must be a table (a threshold spec), got {threshold!r:.60}")
    method = str(threshold.get("method"))
    if method not in CALIBRATION_PARAMS:
        raise ExportError(f"run.json: threshold -> method {method!r} is not one of "
                          f"{', '.join(CALIBRATION_PARAMS)}")
    far = threshold.get("target_false_alarm_rate")
    fitted = threshold.get("params") or {}
    params = {key: fitted[key] for key in CALIBRATION_PARAMS[method] if key in fitted}
    if method in ("mad", "sigma") and far is not None:
        params.pop("k", None)
    if method == "percentile" and far is not None and abs(1.0 - float(params.get("q", 1.0)) - far) < 1e-12:
        params.pop("q", None)  # q = 1 - target rate: derived, not given
    return CalibrationSettings(method, float(far) if far is not None else 0.01, params, _margin(threshold))


def _margin(threshold: dict[str, Any]) -> float:
    """`params.margin` of a threshold spec (`trainer.calibration.with_margin`); 1 when absent."""
    margin = (threshold.get("params") or {}).get("margin", 1.0)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin > 0:
        raise ExportError(f"run.json: threshold -> params -> margin must be a positive number, "
                          f"got {margin!r}")
    return float(margin)
