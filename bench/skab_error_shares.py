"""Which channels carry the SKAB VAE's error where it flags rows: per channel, the share of the squared
reconstruction error of the windows centred on flagged rows, on the anomaly-free pseudo-files (every flag a
false alarm) and on the development files' correctly flagged and falsely flagged rows. Held-out files are
not read (docs/benchmarks-skab.md, "Model settings").

    python bench/skab_error_shares.py --data-dir ../shared/data/skab [--config CFG] [--seed 0] [--out F]

Each file goes through the benchmark's own `run_file` (VAE only) at the setting the shipped development
selection chose (`mean`, 1.5 unless `--setting RULE MARGIN`); a flagged test row r stands for the window
centred on it (rows r - L/2 .. r + L/2 - 1, clipped to the file's windows). Prints JSON: per group, the
rows flagged and each channel's share of their windows' summed squared error, in %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import emit  # noqa: E402
from bench.skab_dev import dev_setup, with_seed  # noqa: E402
from trainer.benchmarks.skab import anomaly_free_parts, development_series  # noqa: E402
from trainer.benchmarks.skab_file import run_file  # noqa: E402
from trainer.benchmarks.skab_options import DEFAULT_CONFIG, SkabOptions  # noqa: E402
from trainer.benchmarks.skab_scoring import channel_indices, model_windows  # noqa: E402
from trainer.config import TrainerConfig  # noqa: E402
from trainer.data.series import Series  # noqa: E402

GROUPS = ("anomaly_free_flagged", "dev_true_alarms", "dev_false_alarms")


def flagged_errors(series: Series, config: TrainerConfig, options: SkabOptions,
                   setting: tuple[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel squared error of the windows centred on each flagged test row `[F, C]`, those rows'
    labels `[F]` and nothing else; from one run of the file."""
    result = run_file(series, config, options, ("vae",), setting)
    detrend = channel_indices(options.detrend_channels, series.channels, "data -> skab -> detrend_channels")
    length = config.windows.length
    windows = model_windows(series.values, result.scaler, length, detrend)
    with torch.no_grad():
        reconstruction = result.vae_model.eval()(torch.from_numpy(windows))[0].numpy()
    error = ((reconstruction - windows) ** 2).sum(axis=2)  # [N, C]
    flagged = result.scores["vae"] > 1.0
    rows = np.arange(options.train_rows, len(series))[flagged]
    index = np.clip(rows - length // 2, 0, len(windows) - 1)
    return error[index], result.labels[flagged], rows


def shares(errors: list[np.ndarray], channels: list[str]) -> dict[str, Any]:
    stacked = np.concatenate(errors) if errors else np.zeros((0, len(channels)))
    total = stacked.sum(axis=0)
    return {"rows": len(stacked),
            "share_pct": {c: round(float(100 * v / total.sum()), 1) if total.sum() > 0 else 0.0
                          for c, v in zip(channels, total, strict=True)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the SKAB folder (holding data/)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", nargs=2, metavar=("RULE", "MARGIN"), default=["mean", "1.5"])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    base, options = dev_setup(parser, args.config)
    config = with_seed(base, args.seed)
    setting = (args.setting[0], float(args.setting[1]))
    groups: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    channels: list[str] = []
    for series in development_series(args.data_dir, options):
        channels = list(series.channels)
        error, labels, _ = flagged_errors(series, config, options, setting)
        groups["dev_true_alarms"].append(error[labels == 1])
        groups["dev_false_alarms"].append(error[labels == 0])
    for part in anomaly_free_parts(args.data_dir, options):
        groups["anomaly_free_flagged"].append(flagged_errors(part, config, options, setting)[0])
    report = {"config": str(args.config), "seed": args.seed, "setting": list(setting),
              "dev_files": list(options.dev_files), **{g: shares(groups[g], channels) for g in GROUPS}}
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
