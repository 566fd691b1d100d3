"""Scoring windows with the exportable scorer (the same module export turns into ONNX), and score
baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.torch_model import VAE, ExportableScorer


@dataclass
class ScoreOutput:
    """Numpy outputs of `ExportableScorer` for N windows."""

    score: np.ndarray  # [N]
    channel_error: np.ndarray  # [N, C_in]
    time_error: np.ndarray  # [N, L]
    latent_mean: np.ndarray  # [N, Z]


@torch.no_grad()
def score_windows(model: ExportableScorer, windows: np.ndarray, batch_size: int = 1024) -> ScoreOutput:
    """Run `model` on raw windows `[N, C_in, L]` in batches."""
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    data = np.ascontiguousarray(windows, dtype=np.float32)
    for start in range(0, len(data), batch_size):
        score, channel_error, latent, time_error = model(torch.from_numpy(data[start : start + batch_size]))
        parts.append((score.numpy(), channel_error.numpy(), time_error.numpy(), latent.numpy()))
    if not parts:
        _, c, length = data.shape
        z = model.vae.shape.latent_dim
        return ScoreOutput(
            np.empty(0, np.float32),
            np.empty((0, c), np.float32),
            np.empty((0, length), np.float32),
            np.empty((0, z), np.float32),
        )
    return ScoreOutput(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def latent_statistics(latent_mean: np.ndarray, ridge: float = 1e-3) -> dict[str, Any]:
    """Mean and precision (ridge-regularised inverse covariance) of training latent means."""
    centre = latent_mean.mean(axis=0)
    cov = np.cov(latent_mean, rowvar=False).reshape(len(centre), len(centre))
    precision = np.linalg.inv(
        cov + ridge * np.eye(len(centre)) * max(1e-12, float(np.trace(cov)) / len(centre))
    )
    return {"mean": centre.tolist(), "precision": precision.tolist()}


def detrend_mask(channels: Sequence[str], detrend_channels: Sequence[str] | None) -> list[bool]:
    """One flag per model channel: True for the channels named in `detrend_channels` (run.json's key; absent
    or empty: none). A name that is not a model channel is a `ValueError` naming it and the channels."""
    names = list(detrend_channels or [])
    unknown = [name for name in names if name not in channels]
    if unknown:
        raise ValueError(f"detrend_channels: {unknown} not among the model channels {list(channels)}")
    return [name in names for name in channels]


def build_scorer(
    vae: VAE,
    scaler: dict[str, Any],
    scoring: str,
    latent_stats: dict[str, Any] | None,
    detrend: Sequence[bool] | None = None,
) -> ExportableScorer:
    """The exportable scorer for a trained VAE (kept as one call so evaluate and export build it alike);
    `detrend` is the per-model-channel centring mask (`detrend_mask`), None for runs that centre nothing."""
    return ExportableScorer(vae, scaler, scoring, latent_stats, detrend).eval()


def run_scorer(vae: VAE, run: dict[str, Any]) -> ExportableScorer:
    """`build_scorer` from a run.json: its scaler, scoring, latent statistics and `detrend_channels` (runs
    written before the key centre nothing)."""
    mask = detrend_mask(run["channels"], run.get("detrend_channels"))
    return build_scorer(vae, run["scaler"], run["scoring"], run.get("latent_stats"), mask)


def per_asset_baseline(score: np.ndarray, series: np.ndarray, n_windows: int) -> np.ndarray:
    """Adjusted scores: raw score - median of the asset's first `n_windows` raw scores (`score_baseline` kind
    `per_asset_initial`, statistic `median`).

    Causal, as the agent runs it: until an asset has `n_windows` windows, its baseline is the median of the
    windows seen so far (so the first window scores 0). Windows must be in time order within each asset.
    """
    adjusted = np.empty_like(score, dtype=np.float64)
    for name in dict.fromkeys(series.tolist()):
        index = np.flatnonzero(series == name)
        raw = score[index].astype(np.float64)
        base = np.empty(len(raw))
        for i in range(min(n_windows, len(raw))):
            base[i] = np.median(raw[: i + 1])
        if len(raw) > n_windows:
            base[n_windows:] = np.median(raw[:n_windows])
        adjusted[index] = raw - base
    return adjusted
