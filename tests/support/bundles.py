"""Small REAL bundles for agent tests, without torch.

`build_test_bundle` writes a signed bundle whose model is a real ONNX graph (opset 17) built with
`onnx.helper`, with exactly the contract's input and outputs:

    scaled        = (window - mean) / std            per channel, window float32 [batch, C, L]
    channel_error = mean over time of scaled^2       [batch, C]   (reconstruction = 0)
    time_error    = sum over channels of scaled^2    [batch, L]
    score         = mean of channel_error            [batch]
    latent_mean   = mean over time of scaled         [batch, C]   (latent size = number of channels)

So windows drawn with `normal_windows` score about 1.0, and an offset injected on one channel raises the
score and ranks that channel first in `channel_error`. Threshold, quantiles, drift reference and the
reference I/O are computed by ONNX Runtime on simulated normal windows, as export does for real models.

    keys = make_keypair(tmp_path / "keys")
    path = build_test_bundle(tmp_path, channels=["flow", "pressure"], window_length=20, stride=10,
                             sign_key=keys.private_key)
    bundle = read_bundle(path, trusted_keys=keys.public_path, extract_to=tmp_path / "x")
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from onnx import TensorProto, helper, numpy_helper

from edge_agent.bundle import (
    SCHEMA_VERSION,
    default_severity,
    flatline_reference,
    generate_keypair,
    key_id,
    load_private_key,
    write_bundle,
)

OPSET = 17
DEFAULT_CHANNELS = ("pressure", "flow", "vibration")
DEFAULT_UNITS = {"pressure": "bar", "flow": "m3/h", "vibration": "mm/s"}
QUANTILE_LEVELS = ("0.5", "0.9", "0.99", "0.999")
# A fixed key so tests that do not care about keys still get signed bundles (NEVER use outside tests).
TEST_SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
_DEFAULT_KEY: Any = object()  # sentinel: sign with TEST_SIGNING_KEY


@dataclass(frozen=True)
class KeyPair:
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    private_path: Path
    public_path: Path
    key_id: str


def make_keypair(directory: Path, name: str = "signing") -> KeyPair:
    """A fresh Ed25519 key pair written as `<name>.key` (0600) and `<name>.pub` in `directory`."""
    private_path, public_path = generate_keypair(directory, name)
    private_key = load_private_key(private_path)
    return KeyPair(private_key, private_key.public_key(), private_path, public_path, key_id(private_key))


def write_test_public_key(directory: Path, name: str = "test") -> Path:
    """Write TEST_SIGNING_KEY's public half as `<name>.pub` into `directory` (a trusted-keys dir)."""
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pub"
    path.write_bytes(TEST_SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def channel_stats(n_channels: int, means: Sequence[float] | None = None,
                  stds: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of the test model: defaults mean_i = 10 (i + 1), std_i = 1 + 0.5 i."""
    mean = np.asarray(means if means is not None else [10.0 * (i + 1) for i in range(n_channels)], np.float32)
    std = np.asarray(stds if stds is not None else [1.0 + 0.5 * i for i in range(n_channels)], np.float32)
    if mean.shape != (n_channels,) or std.shape != (n_channels,) or np.any(std <= 0):
        raise ValueError(f"means/stds must be {n_channels} values (stds > 0)")
    return mean, std


def normal_windows(count: int, n_channels: int, window_length: int, *, seed: int = 0,
                   means: Sequence[float] | None = None, stds: Sequence[float] | None = None) -> np.ndarray:
    """`count` normal windows float32 [count, C, L] in physical units for the test model."""
    mean, std = channel_stats(n_channels, means, stds)
    noise = np.random.default_rng(seed).standard_normal((count, n_channels, window_length))
    return (mean[None, :, None] + std[None, :, None] * noise).astype(np.float32)


def build_test_model(mean: np.ndarray, std: np.ndarray, window_length: int) -> onnx.ModelProto:
    """The scoring graph described in the module docstring, as an ONNX model (opset 17)."""
    c = int(mean.shape[0])
    inits = [numpy_helper.from_array(mean.reshape(1, c, 1).astype(np.float32), "mean"),
             numpy_helper.from_array(std.reshape(1, c, 1).astype(np.float32), "std"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "channel_axis")]
    nodes = [
        helper.make_node("Sub", ["window", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "std"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "scaled"], ["squared"]),
        helper.make_node("ReduceMean", ["squared"], ["channel_error"], axes=[2], keepdims=0),
        helper.make_node("ReduceSum", ["squared", "channel_axis"], ["time_error"], keepdims=0),
        helper.make_node("ReduceMean", ["channel_error"], ["score"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["scaled"], ["latent_mean"], axes=[2], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "test_scoring",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", c, window_length])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("channel_error", TensorProto.FLOAT, ["batch", c]),
         helper.make_tensor_value_info("latent_mean", TensorProto.FLOAT, ["batch", c]),
         helper.make_tensor_value_info("time_error", TensorProto.FLOAT, ["batch", window_length])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tests.support.bundles")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return model


def run_model(model_path: Path, windows: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of the ONNX model at `model_path` for `windows`, by output name (one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"window": windows.astype(np.float32)}), strict=True))


def build_test_bundle(out_dir: Path, channels: Sequence[str] = DEFAULT_CHANNELS, window_length: int = 32,
                      stride: int = 16, threshold: float | None = None, sign_key: Any = _DEFAULT_KEY,
                      name: str = "test-bundle", version: str = "1.0.0", model_name: str = "pump",
                      *, sample_period_s: float = 1.0, means: Sequence[float] | None = None,
                      stds: Sequence[float] | None = None, compress: bool = True,
                      **overrides: Any) -> Path:
    """Write `<out_dir>/<name>-<version>.bundle` and return its path.

    `threshold`: default 1.2 x the 0.999 quantile of 512 simulated normal scores. `sign_key`: a private key,
    a PEM path, or None for an unsigned bundle; by default TEST_SIGNING_KEY (see `write_test_public_key`).
    `overrides` replace whole values of the model entry (e.g. `debounce={"k": 1, "n": 1, "clear_windows": 1}`,
    `score_baseline={...}`, `severity=[...]`) or, failing that, top-level manifest keys (`created_at=...`).
    """
    out_dir = Path(out_dir)
    channels = list(channels)
    mean, std = channel_stats(len(channels), means, stds)
    with tempfile.TemporaryDirectory(prefix="test-bundle-") as tmp:
        model_file = Path(tmp) / "model.onnx"
        onnx.save(build_test_model(mean, std, window_length), str(model_file))
        normal = normal_windows(512, len(channels), window_length, seed=1, means=means, stds=stds)
        outputs = run_model(model_file, normal)
        scores = outputs["score"].astype(np.float64)
        quantiles = {q: float(np.quantile(scores, float(q))) for q in QUANTILE_LEVELS}
        value = float(threshold) if threshold is not None else 1.2 * quantiles["0.999"]
        reference_windows = normal_windows(3, len(channels), window_length, seed=2, means=means, stds=stds)
        reference_windows[2, 0, :] += 6.0 * std[0]  # an offset on the first channel
        reference_outputs = run_model(model_file, reference_windows)
        reference_file = Path(tmp) / "reference.npz"
        np.savez(reference_file, window=reference_windows, **reference_outputs)
        latents = outputs["latent_mean"].astype(np.float64)
        model_arc, reference_arc = f"models/{model_name}.onnx", f"reference/{model_name}.npz"
        model: dict[str, Any] = {
            "name": model_name, "modality": "timeseries", "file": model_arc, "sha256": None, "opset": OPSET,
            "precision": "fp32",
            "precision_decision": {"requested": "fp32", "chosen": "fp32", "reason": "test bundle",
                                   "measurements": {}},
            "input": {"name": "window", "layout": "NCL", "dtype": "float32", "channels": channels,
                      "units": [DEFAULT_UNITS.get(ch) for ch in channels], "window_length": window_length,
                      "stride": stride, "sample_period_s": sample_period_s},
            "outputs": {"score": "score", "channel_error": "channel_error", "latent_mean": "latent_mean",
                        "time_error": "time_error"},
            "threshold": {"method": "quantile", "params": {"q": 0.999, "margin": 1.2}, "value": value,
                          "target_false_alarm_rate": 0.001},
            "score_quantiles": quantiles,
            "severity": default_severity(value, quantiles),
            "debounce": {"k": 2, "n": 3, "clear_windows": 3},
            "score_baseline": None,
            "drift_reference": {"latent_mean": latents.mean(axis=0).tolist(),
                                "latent_cov": np.cov(latents, rowvar=False).reshape(len(channels),
                                                                                    -1).tolist(),
                                "sample_latents": latents[:256].tolist(),
                                "sample_scores": scores[:256].tolist()},
            "root_cause": {"channels": channels, "reading": "share of channel c = channel_error[c] / "
                           "sum(channel_error); the largest share is the most likely cause"},
            "reference": {"file": reference_arc, "sha256": None, "count": len(reference_windows),
                          "rtol": 1e-4, "atol": 1e-5},
            "metrics": {"roc_auc_fp32": None, "model_bytes": model_file.stat().st_size},
            # as export makes it: the channels that change within every normal window (here all of them)
            "flatline": flatline_reference(channels, normal),
        }
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "name": name, "version": version,
            "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trainer": {"version": "test", "git_commit": None},
            "compatibility": {"min_onnxruntime": "1.17.0", "opset": OPSET, "device_profiles": ["generic"]},
            "files": {}, "models": [model]}
        for key, override in overrides.items():
            if key in model:
                model[key] = override
            elif key in manifest:
                manifest[key] = override
            else:
                raise TypeError(f"build_test_bundle: unknown override {key!r}")
        if manifest["schema_version"] == 1:  # version 1 has no flatline list
            model.pop("flatline")
        key = TEST_SIGNING_KEY if sign_key is _DEFAULT_KEY else sign_key
        if isinstance(key, (str, Path)):
            key = load_private_key(key)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}-{version}.bundle"
        write_bundle(path, manifest, {model_arc: model_file, reference_arc: reference_file}, sign_key=key,
                     compress=compress)
    return path
