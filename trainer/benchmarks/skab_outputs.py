"""What a SKAB benchmark run writes: the point-wise metrics per model (`summarise`), metrics.json, the
scores CSVs and leaderboard.md (`write_outputs`), each file's VAE checkpoint (`save_vae_models`) and, with
``--export-runs``, each file's VAE as a RUN_DIR for `edge-trainer export` (`export_run_dirs`)."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from trainer.benchmarks.skab_file import FileResult, rescore_vae, validation_mask
from trainer.benchmarks.skab_options import SkabOptions
from trainer.config import TrainerConfig
from trainer.data.skab import CHANNELS, read_skab_file
from trainer.data.windows import StandardScaler
from trainer.metrics import binary_metrics, skab_metrics

log = logging.getLogger(__name__)


def summarise(results: list[FileResult], models: tuple[str, ...]) -> dict[str, Any]:
    """Point-wise metrics over the concatenated test parts, per model."""
    labels = np.concatenate([r.labels for r in results])
    summary: dict[str, Any] = {}
    for name in models:
        scores = np.concatenate([r.scores[name] for r in results])
        metrics = skab_metrics(labels, (scores > 1.0).astype(np.int8))
        ranking = binary_metrics(labels, scores, 1.0)
        summary[name] = {**metrics, "roc_auc": ranking["roc_auc"], "pr_auc": ranking["pr_auc"]}
    return summary


def write_outputs(
    out: Path,
    results: list[FileResult],
    summary: dict[str, Any],
    *,
    leaderboard: list[dict[str, Any]],
    meta: dict[str, Any],
    models: tuple[str, ...],
) -> None:
    """metrics.json, scores.csv (the first model: the VAE), scores_<baseline>.csv and leaderboard.md (the
    VAE checkpoints are already in `out/models/`)."""
    out.mkdir(parents=True, exist_ok=True)
    per_file = [
        {
            "file": r.name,
            "rows": len(r.labels),
            "anomalous_rows": int(r.labels.sum()),
            "vae_epochs": r.vae_epochs,
            "train_lag1_variance_ratio": r.lag1_ratio,
            "thresholds": r.thresholds,
            **{f"{m}_predicted_rows": int((r.scores[m] > 1.0).sum()) for m in models},
        }
        for r in results
    ]
    document = {**meta, "models": summary, "leaderboard": leaderboard, "files": per_file}
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    for i, name in enumerate(models):
        target = out / ("scores.csv" if i == 0 else f"scores_{name}.csv")
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "datetime", "label", "score", "is_anomaly"])
            for r in results:
                for ts, label, score in zip(r.timestamps, r.labels, r.scores[name], strict=True):
                    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
                    writer.writerow([r.name, stamp, int(label), f"{score:.6g}", int(score > 1.0)])
    lines = ["| Algorithm | F1 | FAR, % | MAR, % |", "|---|---|---|---|"]
    lines += [
        f"| {name} (this run) | {_cell(m['f1'])} | {_cell(m['far_pct'])} | {_cell(m['mar_pct'])} |"
        for name, m in summary.items()
    ]
    lines += [
        f"| {r['algorithm']} (leaderboard) | {r['f1']:g} | {r['far_pct']:g} | {r['mar_pct']:g} |"
        for r in leaderboard
    ]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def save_vae_models(
    model_dir: Path, results: list[FileResult], config: TrainerConfig, options: SkabOptions
) -> None:
    """Each file's VAE as a checkpoint named after the file (weights, scaler, threshold spec)."""
    for r in results:
        if r.vae_model is None or r.scaler is None:
            continue
        _save_vae(
            model_dir / f"{r.name.replace('/', '_')}.pt",
            r.vae_model,
            r.name,
            r.scaler,
            config=config,
            threshold=r.thresholds["vae"],
            detrend_channels=options.detrend_channels,
        )


def _save_vae(
    path: Path,
    model: Any,
    name: str,
    scaler: StandardScaler,
    *,
    config: TrainerConfig,
    threshold: dict[str, Any],
    detrend_channels: tuple[str, ...],
) -> None:
    from trainer.train import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "file": name,
        "channels": list(CHANNELS),
        "scaler": scaler.to_dict(),
        # model inputs: rows scaled by `scaler`, then these channels centred on each window's own mean
        "detrend_channels": list(detrend_channels),
        "window_length": config.windows.length,
        "scoring": "reconstruction",
        "threshold": threshold,  # includes the row rule the threshold applies to
        "model_config": asdict(config.model),
        "train_config": asdict(config.training),
    }
    save_checkpoint(path, model, metadata)


def export_run_dirs(
    out: Path,
    results: list[FileResult],
    paths: list[Path],
    config: TrainerConfig,
    options: SkabOptions,
    *,
    setting: tuple[str, float],
    margin: float | None = None,
) -> list[Path]:
    """A RUN_DIR per file under `out` (`out/<folder>_<file>/`) for `edge-trainer export --run`
    (`trainer.benchmarks.skab_export`): the file's VAE with the causal ``end`` row rule and its threshold from
    the training part by that rule (`rescore_vae`), with `margin` (default: the VAE setting's margin).
    `paths` are the files of `results`, in the same order."""
    from trainer.benchmarks.skab_export import EXPORT_ROW_SCORE, write_run_dir

    written: list[Path] = []
    n_train_windows = options.train_rows - config.windows.length + 1
    export_setting = (EXPORT_ROW_SCORE, setting[1] if margin is None else margin)
    for result, path in zip(results, paths, strict=True):
        if result.vae_model is None or result.scaler is None:
            continue
        rows, spec = rescore_vae(result, export_setting, config, options)
        run_dir = out / result.name.replace("/", "_")
        write_run_dir(
            run_dir,
            read_skab_file(path),
            result.vae_model,
            result.scaler,
            config=config,
            detrend_channels=options.detrend_channels,
            train_rows=options.train_rows,
            early_stopping=validation_mask(n_train_windows, options),
            threshold=spec,
            test_rows=rows,
            history=result.vae_history,
            benchmark_setting=setting,
        )
        log.info("%s: run directory %s (row rule end, threshold %.6g)", result.name, run_dir,
                 spec["threshold"])
        written.append(run_dir)
    return written


def _cell(value: float | None) -> str:
    """A metric in the leaderboard table: two decimals, `n/a` when undefined (a rate with nothing to count:
    test parts of one class, possible with a `train_rows` other than the protocol's)."""
    return "n/a" if value is None else f"{value:.2f}"
