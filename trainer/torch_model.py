"""The Conv1D VAE and the exportable scorer (scaling + VAE on the latent mean + scoring in one module).

`ExportableScorer` is THE function: evaluation (`trainer.scoring`) calls it and export turns exactly this
module into the ONNX graph, so offline scores and the agent's scores agree by construction. Its input is RAW
float32 windows `[B, C_in, L]` in physical units, channel order as in `run.json` `input_channels`: the model
channels first, then (regime scaling only) the operating-condition channels. Per time step the regime is the
nearest centroid of the condition vector (divided by `condition_scale`), computed in-graph with ArgMin +
Gather. Outputs `(score [B], channel_error [B, C_in], latent_mean [B, Z], time_error [B, L])`.
`channel_error` is each channel's mean squared error in standardised units divided by that channel's mean on
healthy validation windows (`ConvVAE.channel_error_scale`, saved with the weights): 1 is a typical healthy
channel, so channels that reconstruct less well by nature do not win root-cause rankings. Condition channels
are inputs only, so their `channel_error` is 0. `time_error` is the squared error summed over channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCORES = ("reconstruction", "elbo", "latent")


@dataclass(frozen=True)
class VaeShape:
    """What the network needs to be rebuilt: channels in/out, window length and the layer sizes."""

    n_channels: int
    length: int
    latent_dim: int = 8
    hidden: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 5

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_channels": self.n_channels,
            "length": self.length,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "kernel_size": self.kernel_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeShape:
        return cls(
            int(data["n_channels"]),
            int(data["length"]),
            int(data["latent_dim"]),
            tuple(int(h) for h in data["hidden"]),
            int(data["kernel_size"]),
        )


class ConvVAE(nn.Module):
    """Strided Conv1D encoder -> (mu, logvar); mirrored transposed-conv decoder cropped to the window
    length."""

    def __init__(self, shape: VaeShape) -> None:
        super().__init__()
        self.shape = shape
        pad = shape.kernel_size // 2
        layers: list[nn.Module] = []
        width, length = shape.n_channels, shape.length
        for out in shape.hidden:
            layers += [nn.Conv1d(width, out, shape.kernel_size, stride=2, padding=pad), nn.GELU()]
            width, length = out, (length + 2 * pad - shape.kernel_size) // 2 + 1
        self.encoder = nn.Sequential(*layers)
        self.encoded = (width, length)
        self.to_mu = nn.Linear(width * length, shape.latent_dim)
        self.to_logvar = nn.Linear(width * length, shape.latent_dim)
        self.from_latent = nn.Linear(shape.latent_dim, width * length)
        dec: list[nn.Module] = []
        widths = [*reversed(shape.hidden)]
        for i, out in enumerate([*widths[1:], widths[-1]]):
            dec += [nn.ConvTranspose1d(widths[i], out, 4, stride=2, padding=1), nn.GELU()]
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv1d(widths[-1], shape.n_channels, 3, padding=1)
        # Typical per-channel squared error on healthy windows training never saw (set after training, saved
        # with the weights): `channel_error` is divided by it so channels compare fairly for root cause.
        self.register_buffer("channel_error_scale", torch.ones(shape.n_channels))
        if length * 2 ** len(shape.hidden) < shape.length:
            raise ValueError(
                f"decoder output {length * 2 ** len(shape.hidden)} shorter than window {shape.length}"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        width, length = self.encoded
        h = self.decoder(self.from_latent(z).view(-1, width, length))
        return self.head(h)[:, :, : self.shape.length]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass with the reparameterisation trick: `(reconstruction, mu, logvar)`."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(
    x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """beta-VAE loss (unit-variance Gaussian likelihood), batch means: `(loss, reconstruction, kl)`.

    The reconstruction term is the squared error summed over channels and time (per sample), so beta weighs
    the KL against the whole window, not one element.
    """
    recon_term = F.mse_loss(recon, x, reduction="none").sum(dim=(1, 2)).mean()
    kl = kl_divergence(mu, logvar).mean()
    return recon_term + beta * kl, recon_term, kl


def beta_at(epoch: int, beta: float, warmup_epochs: int) -> float:
    """KL warm-up: beta rises linearly from 0 over the first `warmup_epochs` epochs."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, (epoch + 1) / warmup_epochs)


class ExportableScorer(nn.Module):
    """Raw windows in, `(score, channel_error, latent_mean, time_error)` out; see the module docstring.

    `scaler` is a `to_dict()` of `trainer.data.windows.StandardScaler` or `RegimeScaler`. `latent_stats`
    (`{"mean": [Z], "precision": [Z, Z]}` of training latent means) is needed for `scoring="latent"`.
    """

    def __init__(
        self,
        vae: ConvVAE,
        scaler: dict[str, Any],
        scoring: str = "reconstruction",
        latent_stats: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if scoring not in SCORES:
            raise ValueError(f"unknown score {scoring!r}; expected one of {', '.join(SCORES)}")
        self.vae = vae.eval()
        self.scoring = scoring
        self.n_model = vae.shape.n_channels
        self.regime = scaler["kind"] == "regime"
        mean = torch.tensor(np.asarray(scaler["mean"]), dtype=torch.float32)
        std = torch.tensor(np.asarray(scaler["std"]), dtype=torch.float32)
        if self.regime:
            scale = torch.tensor(np.asarray(scaler["condition_scale"]), dtype=torch.float32)
            centroids = torch.tensor(np.asarray(scaler["centroids"]), dtype=torch.float32) / scale
            self.n_conditions = int(scale.shape[0])
        else:
            mean, std = mean.view(1, -1), std.view(1, -1)
            scale, centroids = torch.ones(0), torch.zeros(1, 0)
            self.n_conditions = 0
        if mean.shape[1] != self.n_model:
            raise ValueError(f"scaler has {mean.shape[1]} channels, the VAE {self.n_model}")
        self.register_buffer("mean", mean)  # [K, C]
        self.register_buffer("inv_std", 1.0 / std)  # [K, C]
        self.register_buffer("condition_scale", scale)  # [S]
        self.register_buffer("centroids", centroids)  # [K, S], scaled units
        stats = latent_stats or {
            "mean": np.zeros(vae.shape.latent_dim),
            "precision": np.eye(vae.shape.latent_dim),
        }
        self.register_buffer("latent_centre", torch.tensor(np.asarray(stats["mean"]), dtype=torch.float32))
        self.register_buffer(
            "latent_precision", torch.tensor(np.asarray(stats["precision"]), dtype=torch.float32)
        )

    def standardise(self, window: torch.Tensor) -> torch.Tensor:
        """Raw `[B, C_in, L]` -> standardised model channels `[B, C, L]` (per regime where configured)."""
        x = window[:, : self.n_model, :]
        if not self.regime:
            return (x - self.mean[0].view(1, -1, 1)) * self.inv_std[0].view(1, -1, 1)
        cond = window[:, self.n_model :, :] / self.condition_scale.view(1, -1, 1)  # [B, S, L]
        diff = cond.unsqueeze(1) - self.centroids.unsqueeze(0).unsqueeze(-1)  # [B, K, S, L]
        regime = (diff * diff).sum(dim=2).argmin(dim=1)  # [B, L]
        mean = self.mean[regime].permute(0, 2, 1)  # [B, C, L]
        inv_std = self.inv_std[regime].permute(0, 2, 1)
        return (x - mean) * inv_std

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.standardise(window)
        mu, logvar = self.vae.encode(z)
        recon = self.vae.decode(mu)
        err = (recon - z) ** 2  # [B, C, L]
        channel_error = err.mean(dim=2) / self.vae.channel_error_scale
        time_error = err.sum(dim=1)
        if self.scoring == "reconstruction":
            score = err.mean(dim=(1, 2))
        elif self.scoring == "elbo":
            score = 0.5 * err.sum(dim=(1, 2)) + kl_divergence(mu, logvar)
        else:
            centred = mu - self.latent_centre
            score = ((centred @ self.latent_precision) * centred).sum(dim=1)
        if self.n_conditions:
            channel_error = torch.cat(
                [channel_error, torch.zeros_like(channel_error[:, :1]).expand(-1, self.n_conditions)], dim=1
            )
        return score, channel_error, mu, time_error
