"""Label-free ways to cut the SKAB VAE's false alarms (row rules, run length), judged where the benchmark
may judge settings: the development files (`[data.skab] dev_files`) and the anomaly-free run, never the
held-out files (docs/benchmarks-skab.md, "Row rules and run length").

    python bench/skab_row_rules.py --data-dir ../shared/data/skab [--config CFG] [--seeds 0 1 2] [--out F]

- **Pointwise rows.** The benchmark's row rules give a row the scores of whole windows (`end`, `min`, `mean`),
  so a window that holds a few anomalous rows lends its score to the normal rows beside them: most
  development false alarms lie within a window of an anomaly's edges. Here a row gets the squared
  reconstruction error *at its own position*, averaged over the windows covering it (``pointwise_mean``: mean
  over channels; ``pointwise_max``: the largest channel). Calibrated like the shipped rules: margin x the
  configured quantile of the training part's rows by the same rule, from training windows only. The margin
  grid reaches down to 0.4, since one row's error is heavier-tailed than a window's.
- **Quantile rows.** A row gets the q-quantile of the scores of the windows covering it, for q between the
  shipped `min` (q = 0) and near `mean`: a window that lends a high score to a normal row beside an anomaly
  sways a low quantile less than the mean (``quantile``: every q of `QUANTILES` x the shipped margins, one
  grid).
- **Run length.** The shipped row rules, with runs of flagged rows shorter than k rows dropped
  (``min_run_30`` ...): a false alarm that is a short blip goes, a long anomaly stays.

For each seed every development file and anomaly-free pseudo-file is run once by the benchmark's own
`run_file` (VAE only, shipped config); each variant goes through the benchmark's unchanged selection rule
(`trainer.benchmarks.skab_select.choose`, the target's limits) and the anomaly-free check. Prints JSON: per
seed and variant the chosen setting with its development F1, FAR and MAR and the anomaly-free FAR under it;
the development false alarms, and how many lie within a window's length of an anomaly's edge; and the means
over seeds.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skab_dev import seeds_main  # noqa: E402
from trainer.benchmarks.skab import anomaly_free_parts, development_series  # noqa: E402
from trainer.benchmarks.skab_file import FileResult, rescore_vae, run_file  # noqa: E402
from trainer.benchmarks.skab_options import SkabOptions  # noqa: E402
from trainer.benchmarks.skab_scoring import channel_indices, model_windows, threshold_spec  # noqa: E402
from trainer.benchmarks.skab_select import Candidate, choose  # noqa: E402
from trainer.config import TrainerConfig  # noqa: E402
from trainer.data.series import Series  # noqa: E402
from trainer.metrics import skab_metrics  # noqa: E402

POINTWISE = ("pointwise_mean", "pointwise_max")
MIN_RUNS = (30, 60, 120)
QUANTILES = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75)
LOW_MARGINS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Run:
    """One file's VAE run: the benchmark's result and the squared error per window, channel and position."""

    result: FileResult
    error: np.ndarray  # [N, C, L]


def pointwise_rows(per_position: np.ndarray, n_rows: int) -> np.ndarray:
    """Row scores from per-position window errors `[N, L]` of stride-1 windows (window i covers rows
    i .. i + L - 1): row r gets the mean of `per_position[i, r - i]` over the windows i covering it."""
    n_windows, length = per_position.shape
    if n_windows != n_rows - length + 1:
        raise ValueError(f"{n_windows} windows of {length} for {n_rows} rows")
    sums, counts = np.zeros(n_rows), np.zeros(n_rows)
    for position in range(length):
        sums[position : position + n_windows] += per_position[:, position]
        counts[position : position + n_windows] += 1
    return sums / counts


def quantile_rows(window_scores: np.ndarray, n_rows: int, q: float) -> np.ndarray:
    """Row scores from stride-1 window scores: row r gets the q-quantile of the scores of the windows
    covering it (windows r - L + 1 .. r, clipped to the file's windows)."""
    length = n_rows - len(window_scores) + 1
    padded = np.concatenate([np.full(length - 1, np.nan), window_scores, np.full(length - 1, np.nan)])
    return np.nanquantile(np.lib.stride_tricks.sliding_window_view(padded, length), q, axis=1)


def drop_short_runs(flags: np.ndarray, min_run: int) -> np.ndarray:
    """`flags` (0/1) with every run of consecutive 1s shorter than `min_run` set to 0."""
    flags = np.asarray(flags, dtype=np.int8)
    edges = np.diff(np.concatenate([[0], flags, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    out = flags.copy()
    for start, end in zip(starts, ends, strict=True):
        if end - start < min_run:
            out[start:end] = 0
    return out


def false_alarms_near_edges(labels: np.ndarray, flags: np.ndarray, distance: int) -> tuple[int, int]:
    """(false alarms, those within `distance` rows of a label change) in one file's test rows."""
    false = np.flatnonzero((flags == 1) & (labels == 0))
    edges = np.flatnonzero(np.diff(labels.astype(np.int8))) + 0.5  # between rows e and e + 1
    if len(false) == 0 or len(edges) == 0:
        return len(false), 0
    nearest = np.abs(false[:, None] - edges[None, :]).min(axis=1)
    return len(false), int((nearest <= distance).sum())


def run(series: Series, config: TrainerConfig, options: SkabOptions) -> Run:
    result = run_file(series, config, options, ("vae",))
    assert result.vae_model is not None
    assert result.scaler is not None
    detrend = channel_indices(options.detrend_channels, series.channels, "data -> skab -> detrend_channels")
    windows = model_windows(series.values, result.scaler, config.windows.length, detrend)
    with torch.no_grad():
        reconstruction = result.vae_model.eval()(torch.from_numpy(windows))[0].numpy()
    return Run(result, (reconstruction - windows) ** 2)


def pointwise_flags(item: Run, reduce: str, margin: float, config: TrainerConfig,
                    options: SkabOptions) -> np.ndarray:
    per_position = item.error.mean(axis=1) if reduce == "pointwise_mean" else item.error.max(axis=1)
    n_rows = options.train_rows + len(item.result.labels)
    n_train = options.train_rows - config.windows.length + 1
    train_rows = pointwise_rows(per_position[:n_train], options.train_rows)
    value, _spec = threshold_spec(train_rows, config, margin, residual=True)
    return (pointwise_rows(per_position, n_rows)[options.train_rows :] > value).astype(np.int8)


def quantile_flags(item: Run, rule: str, margin: float, config: TrainerConfig,
                   options: SkabOptions) -> np.ndarray:
    q = float(rule.removeprefix("quantile_"))
    scores = np.asarray(item.result.vae_window_scores, dtype=np.float64)
    n_train = options.train_rows - config.windows.length + 1
    value, _spec = threshold_spec(quantile_rows(scores[:n_train], options.train_rows, q), config, margin,
                                  residual=True)
    n_rows = options.train_rows + len(item.result.labels)
    return (quantile_rows(scores, n_rows, q)[options.train_rows :] > value).astype(np.int8)


def window_flags(item: Run, setting: tuple[str, float], min_run: int, config: TrainerConfig,
                 options: SkabOptions) -> np.ndarray:
    flags = (rescore_vae(item.result, setting, config, options)[0] > 1.0).astype(np.int8)
    return drop_short_runs(flags, min_run)


Flagger = Callable[[Run, str, float], np.ndarray]
Grid = list[tuple[str, float]]


def variants(config: TrainerConfig, options: SkabOptions) -> dict[str, tuple[Grid, Flagger]]:
    """Each variant's grid of (rule, margin) and how it flags one file's test rows under a grid point."""
    shipped = [(rule, m) for rule in options.select_row_scores for m in options.select_margins]
    out: dict[str, tuple[Grid, Flagger]] = {
        "shipped": (shipped, lambda item, rule, m: window_flags(item, (rule, m), 1, config, options))}
    margins = sorted({*LOW_MARGINS, *options.select_margins})
    for reduce in POINTWISE:
        out[reduce] = ([(reduce, m) for m in margins],
                       lambda item, rule, m: pointwise_flags(item, rule, m, config, options))
    out["quantile"] = ([(f"quantile_{q}", m) for q in QUANTILES for m in options.select_margins],
                       lambda item, rule, m: quantile_flags(item, rule, m, config, options))
    for k in MIN_RUNS:
        out[f"min_run_{k}"] = (shipped, lambda item, rule, m, k=k: window_flags(item, (rule, m), k, config,
                                                                                options))
    return out


def one_seed(data_dir: Path, config: TrainerConfig, options: SkabOptions) -> dict[str, Any]:
    dev = [run(series, config, options) for series in development_series(data_dir, options)]
    normal = [run(part, config, options) for part in anomaly_free_parts(data_dir, options)]
    labels = np.concatenate([item.result.labels for item in dev])
    out = {}
    for name, (grid, flag) in variants(config, options).items():
        candidates = []
        for rule, margin in grid:
            m = skab_metrics(labels, np.concatenate([flag(item, rule, margin) for item in dev]))
            candidates.append(Candidate(rule, margin, m["f1"], m["far_pct"], m["mar_pct"]))
        chosen = choose(candidates, options.select_max_far_pct, options.select_max_mar_pct)
        flagged = sum(int(flag(item, chosen.row_score, chosen.margin).sum()) for item in normal)
        rows = sum(len(item.result.labels) for item in normal)
        near = [false_alarms_near_edges(item.result.labels, flag(item, chosen.row_score, chosen.margin),
                                        config.windows.length) for item in dev]
        out[name] = {"chosen_on_dev": chosen.to_dict(),
                     "anomaly_free_far_pct": round(100.0 * flagged / rows, 2),
                     "dev_false_alarms": sum(n for n, _ in near),
                     "dev_false_alarms_within_a_window_of_an_edge": sum(k for _, k in near)}
    return out


def main(argv: list[str] | None = None) -> int:
    return seeds_main(argv, __doc__, one_seed)


if __name__ == "__main__":
    raise SystemExit(main())
