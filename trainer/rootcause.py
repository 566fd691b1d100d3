"""Root-cause evaluation: inject single-channel faults into healthy windows and check `channel_error` ranks
the faulty channel first (top-1) or among the first three (top-3).

Faults (sizes in units of the channel's standard deviation sigma from the run's scaler, in the regime of each
time step for regime scaling), applied to one random model channel from a random onset in the window's second
half to its end:

- `step`: a constant offset of +-size sigma.
- `drift`: a ramp from 0 to +-size sigma.
- `stuck`: the reading freezes at its value at the onset (a pure frozen value: no offset, so `size` does not
  apply; it is evaluated once, reported under the size key "frozen" and left out of the per-size totals).
- `spikes`: a burst of 5 single-sample spikes of +-size sigma at random steps.
- `noise`: added Gaussian noise of standard deviation size sigma.

`channel_error` is clipped at 0 (a channel no worse than healthy reads 0), so channels can tie; ties rank in
channel order, as the agent's root cause does (`edge_agent.decisions.root_cause`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainer.data.windows import RegimeScaler, StandardScaler, scaler_from_dict
from trainer.scoring import score_windows
from trainer.torch_model import ExportableScorer

FAULTS = ("step", "drift", "stuck", "spikes", "noise")
UNSIZED_FAULTS = ("stuck",)  # no size: the fault is the frozen value itself
UNSIZED_KEY = "frozen"
DEFAULT_SIZES = (1.0, 2.0, 3.0, 5.0)
TARGET_TOP1, TARGET_FROM_SIZE = 0.90, 3.0  # issue target: top-1 >= 0.90 for faults of 3 sigma and more


def channel_sigma(scaler: StandardScaler | RegimeScaler, windows: np.ndarray, n_model: int) -> np.ndarray:
    """Per-window, per-channel, per-step sigma `[N, C, L]` of the model channels (regime-aware)."""
    n, _, length = windows.shape
    if isinstance(scaler, RegimeScaler):
        conditions = np.swapaxes(windows[:, n_model:], 1, 2).reshape(n * length, -1)
        std = scaler.std[scaler.assign(conditions)].reshape(n, length, n_model)
        return np.swapaxes(std, 1, 2)
    return np.broadcast_to(scaler.std.reshape(1, n_model, 1), (n, n_model, length)).copy()


def inject(
    window: np.ndarray,
    sigma: np.ndarray,
    channel: int,
    fault: str,
    size: float,
    *,
    onset: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A copy of raw `window` `[C_in, L]` with `fault` of `size` sigma on `channel` from `onset`."""
    out = window.astype(np.float64).copy()
    sign = rng.choice((-1.0, 1.0))
    s = sigma[channel, onset:]
    span = out.shape[1] - onset
    if fault == "step":
        out[channel, onset:] += sign * size * s
    elif fault == "drift":
        out[channel, onset:] += sign * size * s * np.linspace(1.0 / span, 1.0, span)
    elif fault == "stuck":
        out[channel, onset:] = out[channel, onset]
    elif fault == "spikes":
        steps = rng.choice(span, size=min(5, span), replace=False)
        out[channel, onset + steps] += rng.choice((-1.0, 1.0), size=len(steps)) * size * s[steps]
    elif fault == "noise":
        out[channel, onset:] += rng.normal(0.0, 1.0, span) * size * s
    else:
        raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(FAULTS)}")
    return out.astype(np.float32)


def evaluate_root_cause(
    scorer: ExportableScorer,
    scaler: dict[str, Any],
    healthy: np.ndarray,
    *,
    sizes: Sequence[float] = DEFAULT_SIZES,
    faults: Sequence[str] = FAULTS,
    n_trials: int = 200,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1 / top-3 attribution accuracy per fault and size on `n_trials` faulted healthy windows each.

    Returns `{"per_fault": {fault: {size: {"top1", "top3", "n"}}}, "by_size": {size: {"top1", "top3", "n"}},
    "target": {...}}` (sizes keyed as written, e.g. "3"; an unsized fault such as `stuck` under "frozen" only,
    not in `by_size`). `target` checks every fault at sizes >= 3 sigma (and every unsized fault) against
    top-1 >= 0.90 and lists those below.
    """
    if len(healthy) == 0:
        raise ValueError("no healthy windows to inject faults into")
    rng = np.random.default_rng(seed)
    fitted = scaler_from_dict(scaler)
    n_model = scorer.n_model
    length = healthy.shape[2]
    per_fault: dict[str, dict[str, dict[str, float]]] = {}
    totals: dict[str, list[int]] = {f"{size:g}": [0, 0, 0] for size in sizes}
    below: list[str] = []
    for fault in faults:
        per_fault[fault] = {}
        unsized = fault in UNSIZED_FAULTS
        for size in sizes[:1] if unsized else sizes:
            key = UNSIZED_KEY if unsized else f"{size:g}"
            picks = rng.integers(0, len(healthy), n_trials)
            base = healthy[picks]
            sigma = channel_sigma(fitted, base, n_model)
            channels = rng.integers(0, n_model, n_trials)
            onsets = rng.integers(length // 2, length - 4, n_trials)
            faulty = np.stack(
                [
                    inject(base[i], sigma[i], int(channels[i]), fault, size, onset=int(onsets[i]), rng=rng)
                    for i in range(n_trials)
                ]
            )
            error = score_windows(scorer, faulty).channel_error[:, :n_model]
            order = np.argsort(-error, axis=1, kind="stable")  # ties keep channel order, as in the agent
            top1 = int(np.sum(order[:, 0] == channels))
            top3 = int(np.sum(np.any(order[:, :3] == channels[:, None], axis=1)))
            per_fault[fault][key] = {"top1": top1 / n_trials, "top3": top3 / n_trials, "n": n_trials}
            if (unsized or size >= TARGET_FROM_SIZE) and top1 / n_trials < TARGET_TOP1:
                below.append(f"{fault} {key}{'' if unsized else ' sigma'}: top-1 {top1 / n_trials:.2f}")
            if not unsized:
                bucket = totals[key]
                bucket[0] += top1
                bucket[1] += top3
                bucket[2] += n_trials
            if progress:
                progress(
                    f"root cause {fault} {key}{'' if unsized else ' sigma'}: top-1 {top1 / n_trials:.2f}, "
                    f"top-3 {top3 / n_trials:.2f}"
                )
    by_size = {size: {"top1": t1 / n, "top3": t3 / n, "n": n} for size, (t1, t3, n) in totals.items() if n}
    target = {"top1_at_least": TARGET_TOP1, "from_size_sigma": TARGET_FROM_SIZE, "met": not below,
              "below": below}
    return {"per_fault": per_fault, "by_size": by_size, "target": target, "n_channels": n_model,
            "faults": list(faults)}
