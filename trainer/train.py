"""The training loop (`fit_vae`) and checkpoints.

CPU-friendly: AdamW, cosine LR schedule, early stopping on validation loss (best weights restored), gradient
clipping, seeded everything, a plain-stderr progress line with live losses (redrawn in place on a terminal;
one line per epoch into a log file or pipe). Checkpoints hold only tensors and
JSON-able primitives so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.torch_model import VAE, VaeShape, beta_at, build_vae, vae_loss

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch losses (per window, reconstruction summed over the window) and the epoch kept."""

    train_loss: list[float] = field(default_factory=list)
    train_recon: list[float] = field(default_factory=list)
    train_kl: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_recon: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int, threads: int) -> None:
    """Deterministic CPU training: seeds for torch/numpy, deterministic kernels, a thread count (2 cores)."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - torch's default init draws from its own generator; this covers legacy users
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def fit_vae(
    train_windows: np.ndarray,
    val_windows: np.ndarray,
    model_config: ModelConfig,
    train_config: TrainConfig,
    progress: bool = True,
    *,
    stream: TextIO | None = None,
) -> tuple[VAE, History]:
    """Fit a VAE of `model_config.kind` on standardised windows `[N, C, L]`; early-stop on `val_windows`' loss
    (same beta).

    Returns the model with the best validation weights (in eval mode) and the loss history.
    """
    if len(train_windows) == 0 or len(val_windows) == 0:
        raise ValueError(
            f"need training and validation windows, got {len(train_windows)} and {len(val_windows)}"
        )
    seed_everything(train_config.seed, train_config.threads)
    _, n_channels, length = train_windows.shape
    model = build_vae(VaeShape(n_channels, length, model_config.latent_dim, model_config.hidden,
                               model_config.kernel_size, model_config.kind, model_config.dilations))
    x_train = torch.from_numpy(np.ascontiguousarray(train_windows, dtype=np.float32))
    x_val = torch.from_numpy(np.ascontiguousarray(val_windows, dtype=np.float32))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=train_config.epochs, eta_min=train_config.learning_rate * 0.05
    )
    generator = torch.Generator().manual_seed(train_config.seed)
    history = History()
    best_state: dict[str, torch.Tensor] = {}
    best_val, stale, started = math.inf, 0, time.monotonic()
    out = stream or sys.stderr
    live = out.isatty()  # a terminal: the progress line is redrawn in place with \r as batches go by
    for epoch in range(train_config.epochs):
        beta = beta_at(epoch, model_config.beta, model_config.kl_warmup_epochs)
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        sums = np.zeros(3)
        n_batches = math.ceil(len(x_train) / train_config.batch_size)
        for b in range(n_batches):
            batch = x_train[order[b * train_config.batch_size : (b + 1) * train_config.batch_size]]
            recon, mu, logvar = model(batch)
            loss, rec, kl = vae_loss(batch, recon, mu, logvar, beta)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimiser.step()
            sums += (loss.item(), rec.item(), kl.item())
            if progress and live and (b % 20 == 0 or b == n_batches - 1):
                out.write(
                    f"\repoch {epoch + 1}/{train_config.epochs} [{b + 1}/{n_batches}] "
                    f"loss {sums[0] / (b + 1):.3f} recon {sums[1] / (b + 1):.3f} kl {sums[2] / (b + 1):.3f}"
                )
                out.flush()
        val_loss, val_recon = evaluate_loss(model, x_val, beta, train_config.batch_size)
        history.train_loss.append(sums[0] / n_batches)
        history.train_recon.append(sums[1] / n_batches)
        history.train_kl.append(sums[2] / n_batches)
        history.val_loss.append(val_loss)
        history.val_recon.append(val_recon)
        history.learning_rate.append(schedule.get_last_lr()[0])
        schedule.step()
        if progress:
            if not live:  # a log file or pipe: one line per epoch instead of a line redrawn with \r
                out.write(f"epoch {epoch + 1}/{train_config.epochs} loss {history.train_loss[-1]:.3f} "
                          f"recon {history.train_recon[-1]:.3f} kl {history.train_kl[-1]:.3f}")
            out.write(f"  val {val_loss:.3f} (beta {beta:.3g})\n")
            out.flush()
        # During KL warm-up the loss scale changes with beta, so only compare once beta is at full weight.
        warm = epoch + 1 >= model_config.kl_warmup_epochs
        if val_loss < best_val or not warm or not best_state:
            best_val = val_loss if warm else math.inf
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.best_epoch, stale = epoch, 0
        else:
            stale += 1
            if stale >= train_config.patience:
                log.info("early stop after epoch %d: no val improvement for %d epochs", epoch + 1, stale)
                break
    model.load_state_dict(best_state)
    history.seconds = time.monotonic() - started
    log.info(
        "trained %d epochs in %.1f s, best epoch %d (val loss %.3f)",
        len(history.val_loss),
        history.seconds,
        history.best_epoch + 1,
        history.val_loss[history.best_epoch],
    )
    return model.eval(), history


@torch.no_grad()
def evaluate_loss(model: VAE, x: torch.Tensor, beta: float, batch_size: int) -> tuple[float, float]:
    """Mean loss and reconstruction term over `x`, decoding the latent mean (deterministic)."""
    model.eval()
    total = rec_total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        recon, mu, logvar = model(batch)
        loss, rec, _ = vae_loss(batch, recon, mu, logvar, beta)
        total += loss.item() * len(batch)
        rec_total += rec.item() * len(batch)
    return total / len(x), rec_total / len(x)


def save_checkpoint(path: str | Path, model: VAE, metadata: dict[str, Any]) -> None:
    """Weights + `metadata` (config, scaler, channel names, threshold spec, ...: JSON-able) in one file."""
    try:
        text = json.dumps(metadata)
    except TypeError as exc:
        raise TypeError(f"checkpoint metadata must be JSON-able: {exc}") from exc
    torch.save(
        {"state_dict": model.state_dict(), "shape": json.dumps(model.shape.to_dict()), "metadata": text},
        Path(path),
    )


CHECKPOINT_ERRORS: tuple[type[BaseException], ...] = (
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    RuntimeError,
    ValueError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def load_checkpoint(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """The model (eval mode) and metadata from `save_checkpoint`, loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict):
            raise TypeError(f"expected a dict of weights and metadata, got {type(blob).__name__}")
        model = build_vae(VaeShape.from_dict(json.loads(blob["shape"])))
        model.load_state_dict(blob["state_dict"])
        metadata = json.loads(blob["metadata"])
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    except CHECKPOINT_ERRORS as exc:
        # A garbage or hostile file: pickle refuses it under weights_only, a truncated zip, wrong contents.
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a valid trainer checkpoint ({type(exc).__name__}: {detail})") from exc
    return model.eval(), metadata
