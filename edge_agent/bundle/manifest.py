"""The bundle manifest: frozen dataclasses parsed strictly from `manifest.json` (schema versions 1 and 2).

This is the contract between the trainer/export side and the agent. Every key is known: an unknown
key, a wrong type or an inconsistent value raises `BundleFormatError` naming the key path
(`models -> 0 -> input -> channels -> 2`). `docs/bundle-format.md` explains each field and
`edge_agent/schemas/bundle-manifest.schema.json` specifies the same rules as JSON Schema.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle.errors import BundleFormatError, UnsupportedSchemaError
from edge_agent.configtools import ConfigError

SCHEMA_VERSION = 2  # what export writes; version 2 adds each model's `flatline` (version 1 has none)
SCHEMA_VERSIONS = (1, 2)  # what this code reads
MODALITIES = ("timeseries", "image", "audio", "multimodal")
SUPPORTED_MODALITIES = ("timeseries",)  # the others are reserved: their input variants come later
PRECISIONS = ("fp32", "int8")
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature"
RESERVED_NAMES = (MANIFEST_NAME, SIGNATURE_NAME)
MAX_SAMPLE_LATENTS = 1024


@dataclass(frozen=True)
class TrainerInfo:
    version: str
    git_commit: str | None


@dataclass(frozen=True)
class Compatibility:
    min_onnxruntime: str
    opset: int
    device_profiles: tuple[str, ...]


@dataclass(frozen=True)
class InputSpec:
    """A time-series window input (`layout` "NCL"): float32 `[batch, channels, window_length]` in
    physical units, channels in this order. Image/audio inputs will be other layouts (tagged by `layout`)."""

    name: str
    layout: str
    dtype: str
    channels: tuple[str, ...]
    units: tuple[str | None, ...]
    window_length: int
    stride: int
    sample_period_s: float

    @property
    def shape(self) -> tuple[int, int]:
        """`(channels, window_length)` of one window."""
        return len(self.channels), self.window_length


@dataclass(frozen=True)
class OutputNames:
    """Graph output names for each role."""

    score: str
    channel_error: str
    latent_mean: str
    time_error: str


@dataclass(frozen=True)
class ThresholdSpec:
    method: str
    params: dict[str, Any]
    value: float
    target_false_alarm_rate: float | None


@dataclass(frozen=True)
class SeverityLevel:
    level: str
    min_score: float


@dataclass(frozen=True)
class Debounce:
    """Open an episode after `k` of the last `n` windows are above; close after `clear_windows` below."""

    k: int
    n: int
    clear_windows: int


@dataclass(frozen=True)
class ScoreBaseline:
    """Adjusted score = raw - statistic(raw scores of the asset's first `windows` windows)."""

    kind: str
    windows: int
    statistic: str


@dataclass(frozen=True)
class DriftReference:
    latent_mean: tuple[float, ...]
    latent_cov: tuple[tuple[float, ...], ...]
    sample_latents: tuple[tuple[float, ...], ...]
    sample_scores: tuple[float, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        """The reference as float64 arrays: latent_mean [Z], latent_cov [Z, Z], sample_latents [S, Z],
        sample_scores [S2]."""
        z = len(self.latent_mean)
        return {"latent_mean": np.asarray(self.latent_mean, dtype=np.float64),
                "latent_cov": np.asarray(self.latent_cov, dtype=np.float64).reshape(z, z),
                "sample_latents": np.asarray(self.sample_latents, dtype=np.float64).reshape(-1, z),
                "sample_scores": np.asarray(self.sample_scores, dtype=np.float64)}


@dataclass(frozen=True)
class RootCause:
    channels: tuple[str, ...]
    reading: str


@dataclass(frozen=True)
class Flatline:
    """The input channels that never held one value for more than half a window in the healthy windows
    export looked at (`healthy_windows` of them; `flatline_reference`): a live window in which one of them
    does not change at all is a flat line (a stuck or frozen sensor, or a value frozen upstream), which the
    agent treats as anomalous. Channels that sit still longer (a setpoint, a coarse slow reading, a discrete
    setting) are left out."""

    channels: tuple[str, ...]
    healthy_windows: int


@dataclass(frozen=True)
class ReferenceSpec:
    """Reference inputs and expected outputs (`.npz`) for the install-time smoke test."""

    file: str
    sha256: str
    count: int
    rtol: float
    atol: float


@dataclass(frozen=True)
class PrecisionDecision:
    requested: str
    chosen: str
    reason: str
    measurements: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    modality: str
    file: str
    sha256: str
    opset: int
    precision: str
    precision_decision: PrecisionDecision
    input: InputSpec
    outputs: OutputNames
    threshold: ThresholdSpec
    score_quantiles: dict[str, float]
    severity: tuple[SeverityLevel, ...]
    debounce: Debounce
    score_baseline: ScoreBaseline | None
    drift_reference: DriftReference
    root_cause: RootCause
    reference: ReferenceSpec
    metrics: dict[str, float | int | str | bool | None]
    flatline: Flatline | None = None  # schema version 2; None in a version 1 manifest (no flat-line check)

    def severity_for(self, score: float) -> str | None:
        """The highest severity level whose `min_score` is <= `score`; None below the lowest."""
        found = None
        for level in self.severity:
            if score >= level.min_score:
                found = level.level
        return found


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    name: str
    version: str
    created_at: str
    trainer: TrainerInfo
    compatibility: Compatibility
    files: dict[str, str]
    models: tuple[ModelSpec, ...]

    def model(self, name: str) -> ModelSpec:
        """The model called `name` (KeyError listing the known names otherwise)."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(f"bundle {self.name} {self.version} has no model {name!r} "
                       f"(models: {', '.join(m.name for m in self.models)})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what `manifest.json` holds and what is signed)."""
        result: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        if self.schema_version == 1:  # version 1 has no `flatline` key
            for model in result["models"]:
                model.pop("flatline", None)
        return result

    @classmethod
    def from_dict(cls, data: Any, *, bundle: str | Path | None = None) -> Manifest:
        """Parse and check a manifest dict strictly; `BundleFormatError` names the offending key path."""
        try:
            from edge_agent.bundle.parsing import parse_manifest  # parsing imports this module

            return parse_manifest(data)
        except ConfigError as exc:
            shown = f" (value: {exc.value!r})" if exc.value is not None else ""
            raise BundleFormatError(exc.message + shown, bundle=bundle, path=exc.path or "<top level>") \
                from exc
        except UnsupportedSchemaError as exc:
            raise UnsupportedSchemaError(exc.message, bundle=bundle) from exc


def default_severity(threshold: float, quantiles: Mapping[str, float]) -> list[dict[str, Any]]:
    """The documented default severity ladder (docs/bundle-format.md, "severity").

    With threshold t > 0 and q = the 0.999 normal-score quantile: warning at t; high at max(1.5 t, q);
    critical at max(3 t, 2 x high). With t <= 0 (baseline-adjusted scores can sit near 0) the steps are
    additive with s = max(q - median, |t|, 1e-9): high at max(t + s, q), critical at high + 2 s.
    """
    t = float(threshold)
    q999 = float(quantiles.get("0.999", t))
    if t > 0:
        high = max(1.5 * t, q999)
        critical = max(3.0 * t, 2.0 * high)
    else:
        step = max(q999 - float(quantiles.get("0.5", q999)), abs(t), 1e-9)
        high = max(t + step, q999)
        critical = high + 2.0 * step
    return [{"level": "warning", "min_score": t}, {"level": "high", "min_score": high},
            {"level": "critical", "min_score": critical}]


def flatline_reference(channels: list[str], windows: np.ndarray) -> dict[str, Any]:
    """A manifest's `flatline` from healthy raw windows `[N, C, L]` (`healthy_windows`: how many distinct
    ones): the channels that never held one value for more than half a window (L // 2 samples in a row) in
    any of them, so that a live window in which one does not change at all (L samples) is at least twice the
    longest stillness healthy data showed: a flat line, a stuck or frozen sensor. Channels that sit still
    longer (a setpoint, a slow coarse reading, a discrete setting such as C-MAPSS FD002's `op_setting_3`,
    which takes two values and held one for 45 of 50 cycles) are left out; with no window at all, so is
    every channel (nothing to rest the claim on)."""
    windows = np.asarray(windows)
    if not len(windows):
        return {"channels": [], "healthy_windows": 0}
    count, _, length = windows.shape
    # distinct windows, counted by hash (a copy of each would double the memory): a run's calibration set
    # may also be in its sample of fit windows (SKAB runs)
    distinct = len({hash(row.tobytes()) for row in windows.reshape(count, -1)})
    keep = []
    for channel in range(windows.shape[1]):  # one channel at a time: memory of one [N, L] slice
        still = np.diff(windows[:, channel, :], axis=1) == 0  # sample t+1 repeats sample t
        run = np.zeros(count, dtype=np.int32)
        longest = np.zeros(count, dtype=np.int32)
        for step in range(length - 1):
            run = np.where(still[:, step], run + 1, 0)
            np.maximum(longest, run, out=longest)
        keep.append(int(longest.max()) + 1 <= length // 2)  # samples holding one value, at most L // 2
    return {"channels": [c for c, k in zip(channels, keep, strict=True) if k], "healthy_windows": distinct}


def check_member_name(name: str) -> str | None:
    """Why `name` is not a safe relative archive path, or None when it is."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute or empty path"
    if "\\" in name or "\x00" in name:
        return "backslash or NUL in path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "path contains '..', '.' or an empty component"
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
