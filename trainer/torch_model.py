"""The VAEs (`MODEL_KINDS`: the strided Conv1D `ConvVAE`, the dilated residual Conv1D `TcnVAE`, one `VAE`
base) and the exportable scorer (scaling + VAE on the latent mean + scoring in one module).

`ExportableScorer` is THE function: evaluation (`trainer.scoring`) calls it and export turns exactly this
module into the ONNX graph, so offline scores and the agent's scores agree by construction. Its input is RAW
float32 windows `[B, C_in, L]` in physical units, channel order as in `run.json` `input_channels`: the model
channels first, then (regime scaling only) the operating-condition channels. Per time step the regime is the
nearest centroid of the condition vector (divided by `condition_scale`), computed in-graph with ArgMin +
Gather. Model channels marked in the optional `detrend` mask (run.json `detrend_channels`; the SKAB
benchmark's slowly wandering channels) are then centred on the window's own mean over time (ReduceMean + Sub
in the graph), so the VAE sees their shape within the window but not their level; without a mask the graph has
no such nodes. These standardised (and centred) model inputs are what the VAE reconstructs and what every
output below is computed on. Outputs `(score [B], channel_error [B, C_in], latent_mean [B, Z],
time_error [B, L])`. `channel_error` is the root-cause statistic: how far each channel's worst short stretch
of residual lies above what healthy windows show, in healthy standard deviations (0 = not above a typical
healthy window; see `ExportableScorer.peak_statistics`). The residual (reconstruction - model input,
standardised units) is divided by the channel's healthy RMS residual in the time step's operating regime;
over a moving window of `ROOT_CAUSE_SPAN` steps, two peaks per channel are taken: the largest mean squared
residual (energy: spikes, noise) and the largest squared mean residual (bias: offsets, drifts). A third
statistic looks at the model input itself: flatness, -log(the smallest mean squared step-to-step change over
`ROOT_CAUSE_SPAN` steps + `FLAT_EPS`), high where a reading stopped moving (a stuck sensor, whose residual
can be as small as a healthy one's). Each is centred and scaled by its mean and std on healthy validation
windows, and `channel_error` is the largest of the three, clipped at 0. The references are `ConvVAE` buffers
saved with the weights (`ExportableScorer.fit_root_cause_reference`, fitted on the same centred inputs;
without regimes a level offset over a whole window of a centred channel shows in no output). It was chosen on
faults injected into validation units (docs/evaluation.md): a mean over the window dilutes short or late
faults, and healthy error differs between regimes and channels. Condition channels are inputs only, so their
`channel_error` is 0. `time_error` is the squared error summed over channels; the score does not depend on the
root-cause references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SCORES = ("reconstruction", "elbo", "latent")
ROOT_CAUSE_SPAN = 5  # time steps of the moving window in the root-cause peak statistics
# Floor of the flatness statistic (standardised units squared): a frozen reading scores -log(FLAT_EPS), not
# infinity, so a rare natural flat stretch cannot outrank a real fault of a few sigma on another channel.
# Chosen on faults injected into validation units (docs/evaluation.md).
FLAT_EPS = 1e-3
PEAK_STATISTICS = 3  # energy, bias, flatness
# Reference rows for a statistic a checkpoint has no reference for: it can never be the largest.
_NEUTRAL_CENTRE = 1e9


@dataclass(frozen=True)
class VaeShape:
    """What the network needs to be rebuilt: its kind (`MODEL_KINDS`), channels in/out, window length and the
    layer sizes. `conv_vae` uses `hidden` (one strided layer per width) and `kernel_size`; `tcn_vae` uses
    `hidden` (exactly one width: its residual blocks' channels), `kernel_size` and `dilations`."""

    n_channels: int
    length: int
    latent_dim: int = 8
    hidden: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 5
    kind: str = "conv_vae"
    dilations: tuple[int, ...] = (1, 2, 4, 8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_channels": self.n_channels,
            "length": self.length,
            "latent_dim": self.latent_dim,
            "hidden": list(self.hidden),
            "kernel_size": self.kernel_size,
            "dilations": list(self.dilations),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VaeShape:
        # Checkpoints from before `kind` are Conv1D VAEs.
        return cls(
            int(data["n_channels"]),
            int(data["length"]),
            int(data["latent_dim"]),
            tuple(int(h) for h in data["hidden"]),
            int(data["kernel_size"]),
            str(data.get("kind", "conv_vae")),
            tuple(int(d) for d in data.get("dilations", (1, 2, 4, 8))),
        )


class VAE(nn.Module):
    """What every VAE kind shares: `encode` -> `(mu, logvar)`, `decode` -> a window `[B, C, L]`, the training
    pass, and the root-cause reference buffers that `ExportableScorer` fits and reads."""

    def __init__(self, shape: VaeShape) -> None:
        super().__init__()
        self.shape = shape
        # Root-cause references from healthy windows training never saw (set after training by
        # `ExportableScorer.fit_root_cause_reference`, saved with the weights): the mean squared residual
        # per channel [C] and per operating regime and channel [K, C] (K = 1 without regimes), and the healthy
        # mean and std of the three peak statistics (energy, bias, flatness) per channel [3, C].
        self.register_buffer("channel_error_scale", torch.ones(shape.n_channels))
        self.register_buffer("regime_error_scale", torch.ones(1, shape.n_channels))
        self.register_buffer("peak_centre", torch.zeros(PEAK_STATISTICS, shape.n_channels))
        self.register_buffer("peak_spread", torch.ones(PEAK_STATISTICS, shape.n_channels))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # `regime_error_scale` has one row per regime of the run that saved it: take its shape. A checkpoint
        # from before the peak statistics has only `channel_error_scale`: use it for every regime, with
        # neutral peak references (its channel_error is then uncalibrated, but it loads). A checkpoint from
        # before the flatness statistic has two reference rows: the third is made neutral (flatness never
        # wins), so its channel_error is what it was.
        regime_key = prefix + "regime_error_scale"
        centre_key, spread_key = prefix + "peak_centre", prefix + "peak_spread"
        if regime_key in state_dict:
            self.regime_error_scale = torch.empty_like(state_dict[regime_key])
        elif prefix + "channel_error_scale" in state_dict:
            state_dict[regime_key] = state_dict[prefix + "channel_error_scale"].reshape(1, -1)
            state_dict[centre_key] = torch.zeros(2, self.peak_centre.shape[1])
            state_dict[spread_key] = torch.ones(2, self.peak_spread.shape[1])
        if centre_key in state_dict and state_dict[centre_key].shape[0] == 2:
            channels = state_dict[centre_key].shape[1]
            state_dict[centre_key] = torch.cat([state_dict[centre_key],
                                                torch.full((1, channels), _NEUTRAL_CENTRE)])
            state_dict[spread_key] = torch.cat([state_dict[spread_key], torch.ones(1, channels)])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass with the reparameterisation trick: `(reconstruction, mu, logvar)`."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decode(z), mu, logvar


class ConvVAE(VAE):
    """Strided Conv1D encoder -> (mu, logvar); mirrored transposed-conv decoder cropped to the window
    length."""

    def __init__(self, shape: VaeShape) -> None:
        super().__init__(shape)
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

class TcnVAE(VAE):
    """Dilated residual Conv1D blocks at the window's full time resolution (non-causal, kernel `kernel_size`,
    one block per entry of `dilations`, `hidden[0]` channels). The encoder pools the blocks' output over time
    (mean and max) into (mu, logvar), so the latent says what the window holds rather than where; the decoder
    expands the latent to a quarter of the window, upsamples it x4 by two transposed convolutions, runs
    blocks with the dilations in reverse order and crops to the window length."""

    def __init__(self, shape: VaeShape) -> None:
        super().__init__(shape)
        if len(shape.hidden) != 1:
            raise ValueError(f"tcn_vae takes one width in hidden, got {list(shape.hidden)}")
        if shape.kernel_size % 2 == 0:
            raise ValueError(f"tcn_vae needs an odd kernel_size (same length out), got {shape.kernel_size}")
        width, k = shape.hidden[0], shape.kernel_size
        self.width, self.quarter = width, -(-shape.length // 4)

        def blocks(dilations: Sequence[int]) -> nn.ModuleList:
            return nn.ModuleList(nn.Conv1d(width, width, k, padding=d * (k // 2), dilation=d)
                                 for d in dilations)

        self.inp = nn.Conv1d(shape.n_channels, width, 1)
        self.blocks = blocks(shape.dilations)
        self.to_mu = nn.Linear(2 * width, shape.latent_dim)
        self.to_logvar = nn.Linear(2 * width, shape.latent_dim)
        self.from_latent = nn.Linear(shape.latent_dim, width * self.quarter)
        self.up = nn.Sequential(nn.ConvTranspose1d(width, width, 4, stride=2, padding=1), nn.GELU(),
                                nn.ConvTranspose1d(width, width, 4, stride=2, padding=1), nn.GELU())
        self.dec_blocks = blocks([*reversed(shape.dilations)])
        self.head = nn.Conv1d(width, shape.n_channels, 1)

    @staticmethod
    def _residual(h: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        for block in blocks:
            h = h + F.gelu(block(h))
        return h

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._residual(self.inp(x), self.blocks)
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return self.to_mu(pooled), self.to_logvar(pooled).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.from_latent(z).view(-1, self.width, self.quarter))
        return self.head(self._residual(h, self.dec_blocks))[:, :, : self.shape.length]


# The network of each `[model] kind` (trainer.config.MODEL_KINDS names the same ones without importing torch).
MODEL_KINDS: dict[str, type[VAE]] = {"conv_vae": ConvVAE, "tcn_vae": TcnVAE}


def build_vae(shape: VaeShape) -> VAE:
    """A fresh network of `shape.kind`."""
    if shape.kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {shape.kind!r}; expected one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[shape.kind](shape)


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
    `detrend` marks the model channels (one flag per VAE channel, condition channels excluded) that are
    centred on each window's mean after scaling; None, empty or all false: no centring (the graph is
    unchanged). The centring is of standardised values: with one scaler for every time step a raw level shift
    of a centred channel changes no output; with regime scaling it does where the regime changes within the
    window.
    """

    def __init__(
        self,
        vae: VAE,
        scaler: dict[str, Any],
        scoring: str = "reconstruction",
        latent_stats: dict[str, Any] | None = None,
        detrend: Sequence[bool] | None = None,
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
        rows, regimes = int(vae.regime_error_scale.shape[0]), int(mean.shape[0])
        if rows not in (1, regimes):
            raise ValueError(f"root-cause reference has {rows} regimes, the scaler {regimes}")
        # One reference row (a fresh VAE, an old checkpoint, no regimes): the same in every regime. Decided
        # here, not from shapes in forward, so the exported graph has no shape-dependent branch.
        self.per_regime_reference = self.regime and rows == regimes > 1
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
        flags = [bool(f) for f in detrend] if detrend is not None else []
        if flags and len(flags) != self.n_model:
            raise ValueError(f"detrend mask has {len(flags)} flags, the VAE {self.n_model} channels")
        self.register_buffer("detrend", torch.tensor(flags or [False] * self.n_model, dtype=torch.float32))
        # Decided here, like `per_regime_reference`: without centred channels the exported graph has no
        # ReduceMean/Sub for them, so scores and graphs of runs without a mask are exactly as before.
        self.centred = any(flags)

    def standardise(self, window: torch.Tensor) -> torch.Tensor:
        """Raw `[B, C_in, L]` -> standardised model channels `[B, C, L]` (per regime where configured), before
        any centring (`model_inputs` adds it)."""
        return self._standardise(window)[0]

    def model_inputs(self, window: torch.Tensor) -> torch.Tensor:
        """Raw `[B, C_in, L]` -> what the VAE reconstructs: standardised model channels `[B, C, L]`, those in
        the `detrend` mask centred on the window's mean over time."""
        return self._model_inputs(window)[0]

    def _model_inputs(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`model_inputs` and the regime of each time step `[B, L]` (None without regimes)."""
        z, regime = self._standardise(window)
        if self.centred:
            # The mask is 0 or 1 per channel: masked channels lose their window mean, the others subtract 0.
            z = z - z.mean(dim=2, keepdim=True) * self.detrend.view(1, -1, 1)
        return z, regime

    def _standardise(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardised model channels `[B, C, L]` and the regime of each time step `[B, L]` (None without
        regimes)."""
        x = window[:, : self.n_model, :]
        if not self.regime:
            return (x - self.mean[0].view(1, -1, 1)) * self.inv_std[0].view(1, -1, 1), None
        cond = window[:, self.n_model :, :] / self.condition_scale.view(1, -1, 1)  # [B, S, L]
        diff = cond.unsqueeze(1) - self.centroids.unsqueeze(0).unsqueeze(-1)  # [B, K, S, L]
        regime = (diff * diff).sum(dim=2).argmin(dim=1)  # [B, L]
        mean = self.mean[regime].permute(0, 2, 1)  # [B, C, L]
        inv_std = self.inv_std[regime].permute(0, 2, 1)
        return (x - mean) * inv_std, regime

    def peak_statistics(self, residual: torch.Tensor, regime: torch.Tensor | None,
                        inputs: torch.Tensor) -> torch.Tensor:
        """Energy, bias and flatness peaks `[B, 3, C]` of the residual `[B, C, L]` (reconstruction -
        standardised input) and of the model inputs `[B, C, L]`.

        The residual is divided by the healthy RMS residual of its channel in the time step's regime. Over
        every run of `ROOT_CAUSE_SPAN` steps: energy = mean of the squared residual, bias = square of the mean
        residual; each peak is the largest over the window. Flatness = -log(the smallest mean squared change
        between consecutive inputs over a run of `ROOT_CAUSE_SPAN` steps + `FLAT_EPS`).
        """
        reference = self.vae.regime_error_scale  # [K, C]; one row when not fitted per regime
        if regime is not None and self.per_regime_reference:
            inv_rms = torch.rsqrt(reference)[regime].permute(0, 2, 1)  # [B, C, L]
        else:
            inv_rms = torch.rsqrt(reference[0]).view(1, -1, 1)
        scaled = residual * inv_rms
        span = min(ROOT_CAUSE_SPAN, self.vae.shape.length)  # a constant in the exported graph
        energy = F.avg_pool1d(scaled * scaled, span, stride=1).amax(dim=2)
        bias = F.avg_pool1d(scaled, span, stride=1).pow(2).amax(dim=2)
        step = inputs[:, :, 1:] - inputs[:, :, :-1]
        quietest = F.avg_pool1d(step * step, max(span - 1, 1), stride=1).amin(dim=2)
        flatness = -torch.log(quietest + FLAT_EPS)
        return torch.stack([energy, bias, flatness], dim=1)

    @torch.no_grad()
    def fit_root_cause_reference(self, windows: np.ndarray, batch_size: int = 1024) -> None:
        """Set the VAE's root-cause references from healthy raw windows `[N, C_in, L]` (validation units):
        mean squared residual per channel and per regime and channel, then the mean and std of the peak
        statistics. The residuals are those `forward` computes (on the centred model inputs when a
        `detrend` mask is set), so build the scorer with its mask before fitting. Changes `channel_error`
        only, never the score."""
        if len(windows) == 0:
            raise ValueError("no healthy windows for the root-cause reference")
        data = np.ascontiguousarray(windows, dtype=np.float32)
        n_regimes = int(self.mean.shape[0]) if self.regime else 1
        sums = torch.zeros(n_regimes, self.n_model, dtype=torch.float64)
        counts = torch.zeros(n_regimes, dtype=torch.float64)
        parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        for start in range(0, len(data), batch_size):
            z, regime = self._model_inputs(torch.from_numpy(data[start : start + batch_size]))
            residual = self.vae.decode(self.vae.encode(z)[0]) - z
            parts.append((residual, regime, z))
            squared = (residual * residual).double()
            if regime is None:
                sums[0] += squared.sum(dim=(0, 2))
                counts[0] += squared.shape[0] * squared.shape[2]
            else:
                onehot = F.one_hot(regime, n_regimes).double()  # [B, L, K]
                sums += torch.einsum("bcl,blk->kc", squared, onehot)
                counts += onehot.sum(dim=(0, 1))
        overall = sums.sum(dim=0) / counts.sum()
        per_regime = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], overall[None])
        floor = 1e-6
        self.vae.channel_error_scale.copy_(overall.clamp(min=floor).float())
        self.vae.regime_error_scale = per_regime.clamp(min=floor).float()
        self.per_regime_reference = n_regimes > 1
        peaks = torch.cat([self.peak_statistics(r, g, z) for r, g, z in parts]).double()  # [N, 3, C]
        self.vae.peak_centre.copy_(peaks.mean(dim=0).float())
        std = peaks.std(dim=0, unbiased=False) if len(peaks) > 1 else torch.ones_like(peaks[0])
        self.vae.peak_spread.copy_(std.clamp(min=floor).float())

    def forward(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z, regime = self._model_inputs(window)
        mu, logvar = self.vae.encode(z)
        residual = self.vae.decode(mu) - z
        err = residual**2  # [B, C, L]
        peaks = (self.peak_statistics(residual, regime, z) - self.vae.peak_centre) / self.vae.peak_spread
        channel_error = torch.relu(peaks.amax(dim=1))
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
