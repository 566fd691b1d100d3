"""A SKAB benchmark file's VAE as a RUN_DIR that `edge-trainer export --run` turns into a bundle
(`edge-trainer benchmark skab --export-runs DIR`).

The benchmark's VAE reads rows standardised by the file's scaler with the ``detrend_channels`` centred on each
window's mean (`skab_scoring.model_windows`); the RUN_DIR records the scaler and those channels
(``detrend_channels``), so the exported graph takes raw windows and does both itself
(`trainer.torch_model.ExportableScorer`). The agent scores each window as it arrives, which is the causal
``end`` row rule; the threshold is the benchmark's own for that rule on the file's training part
(`skab_file.rescore_vae`: margin x the 99 % quantile of the training windows' scores), written as a
threshold spec with ``params.margin`` so that export keeps the margin when it recalibrates on the exported
graph's scores.

RUN_DIR contents (the layout of `trainer.run`):
  checkpoint.pt      the benchmark's weights, with root-cause references fitted on the training part's
                     early-stopping windows (healthy, not fitted on; the benchmark's own checkpoint keeps
                     neutral references)
  run.json           as `fit_run` writes it, plus ``skab`` (file, rule, margin, the benchmark's threshold spec
                     and the file's test-part metrics under the ``end`` rule)
  config.toml        the benchmark config
  calibration.npz    the training part's raw windows: the protocol calibrates on them (the model was fitted on
                     most of them; there are no others without labels)
  train_sample.npz   the windows the VAE was fitted on (int8 calibration)
  evaluation.npz     the raw windows ending in the test part, labelled by their last row (the ``end`` rule)
No validation.npz: the file has no labelled rows outside its test part, so export's int8 guard decides on the
test windows and says so in the manifest (``guard_set: "evaluation"``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trainer.calibration import ThresholdSpec, score_quantiles, with_margin
from trainer.config import TrainerConfig
from trainer.data.series import Series
from trainer.data.windows import StandardScaler, WindowSet, sliding_windows, window_end_rows
from trainer.metrics import skab_metrics
from trainer.run import calibration_sample, run_header, train_sample, write_run_files
from trainer.scoring import build_scorer, detrend_mask, score_windows
from trainer.torch_model import VAE

EXPORT_ROW_SCORE = "end"  # the agent's rule: one score per window, as the window's last row arrives


def raw_windows(series: Series, length: int) -> WindowSet:
    """Stride-1 raw windows `[N, C, L]` of the whole file (window i ends at row i + L - 1), labelled by their
    last row."""
    end_row = window_end_rows(len(series), length)
    stamps = series.timestamps if series.timestamps is not None else np.arange(len(series), dtype=float)
    data = np.ascontiguousarray(np.swapaxes(sliding_windows(series.values, length, 1), 1, 2), np.float32)
    labels = None if series.labels is None else np.asarray(series.labels)[end_row].astype(np.int64)
    return WindowSet(data, list(series.channels), np.full(len(data), series.name, dtype=object), end_row,
                     np.asarray(stamps, dtype=np.float64)[end_row], labels)


def write_run_dir(
    run_dir: Path,
    series: Series,
    model: VAE,
    scaler: StandardScaler,
    *,
    config: TrainerConfig,
    detrend_channels: Sequence[str],
    train_rows: int,
    early_stopping: np.ndarray,
    threshold: dict[str, Any],
    test_rows: np.ndarray,
    history: dict[str, Any],
    benchmark_setting: tuple[str, float],
) -> dict[str, Any]:
    """Write one file's RUN_DIR (see the module docstring); returns run.json's content.

    `early_stopping` marks the training windows held out for early stopping, `threshold` is the benchmark's
    threshold spec for the ``end`` rule (`skab_file.rescore_vae`) and `test_rows` the file's test-row scores
    under it (divided by that threshold). `model` is not changed.
    """
    if threshold.get("row_score") != EXPORT_ROW_SCORE:
        raise ValueError(f"SKAB file {series.name}: the exported threshold must be for the "
                         f"{EXPORT_ROW_SCORE!r} row rule, got {threshold.get('row_score')!r}")
    if series.labels is None:
        raise ValueError(f"SKAB file {series.name}: no labels")
    length = config.windows.length
    channels = list(series.channels)
    windows = raw_windows(series, length)
    n_train = train_rows - length + 1
    training = windows.subset(np.arange(n_train))
    mask = detrend_mask(channels, detrend_channels)
    vae = copy.deepcopy(model)  # the references below must not reach the benchmark's own checkpoint
    scorer = build_scorer(vae, scaler.to_dict(), "reconstruction", None, mask)
    scorer.fit_root_cause_reference(training.data[early_stopping])
    train_scores = score_windows(scorer, training.data).score.astype(np.float64)
    spec = with_margin(
        ThresholdSpec(threshold["method"], dict(threshold["params"]), float(threshold["value"]),
                      threshold.get("target_false_alarm_rate")),
        float(threshold["margin"]),
    ).to_dict()
    labels = np.asarray(series.labels)[train_rows:].astype(np.int8)
    run: dict[str, Any] = {
        **run_header(config),
        "data_source": "skab",
        "channels": channels,
        "input_channels": channels,
        "units": [config.data.units.get(c) for c in channels],
        "condition_channels": [],
        "window_length": length,
        "stride": 1,
        "sample_period_s": config.windows.sample_period_s,
        "scaler": scaler.to_dict(),
        "detrend_channels": [c for c, centred in zip(channels, mask, strict=True) if centred],
        "scoring": "reconstruction",
        "latent_stats": None,
        "channel_error_reference": vae.channel_error_scale.tolist(),
        "score_baseline": None,
        "threshold": spec,
        "score_quantiles": score_quantiles(train_scores),
        "calibration_scores": calibration_sample(train_scores, config.training.seed),
        "metrics": {},
        "history": history,
        "model_shape": vae.shape.to_dict(),
        "healthy_min_rul": None,
        # one file, split in time by the protocol: the parts are named by their rows, so `evaluate` does not
        # take the test part for the calibration data (its "in-sample" note is for runs without labelled data)
        "splits": {"fit": [f"{series.name} rows 0-{train_rows - 1}"],
                   "val": [f"{series.name} rows 0-{train_rows - 1}"],
                   "calibration": [f"{series.name} rows 0-{train_rows - 1}"],
                   "test": [f"{series.name} rows {train_rows}-{len(series.values) - 1}"]},
        "skab": {
            "file": series.name,
            "train_rows": train_rows,
            "row_score": EXPORT_ROW_SCORE,
            "threshold_margin": float(threshold["margin"]),
            "benchmark_threshold": threshold,
            "benchmark_vae_setting": {"row_score": benchmark_setting[0],
                                      "threshold_margin": benchmark_setting[1]},
            "test_metrics": skab_metrics(labels, (np.asarray(test_rows) > 1.0).astype(np.int8)),
            "calibration": "the training part's windows (the protocol's threshold data)",
        },
    }
    write_run_files(run_dir, vae, run, config,
                    windows={"calibration": training,
                             "train_sample": train_sample(training.subset(~early_stopping)),
                             "evaluation": windows.subset(windows.end_row >= train_rows)},
                    extra_metadata={"model_config": asdict(config.model)})
    return run
