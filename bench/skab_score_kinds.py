"""Which window score should the SKAB benchmark's VAE use? Reconstruction error, negative ELBO and latent
density, judged where the benchmark may judge settings: the development files (`[data.skab] dev_files`) and
the anomaly-free run, never the held-out files (docs/benchmarks-skab.md, "Score kind").

    python bench/skab_score_kinds.py --data-dir ../shared/data/skab [--seeds 0 1 2] [--out F]

For each seed, each development file and each anomaly-free pseudo-file is run by the benchmark's own
`run_file` (shipped config). The VAE it trained then scores the same model inputs three ways
(`trainer.scoring.build_scorer`; the latent density's reference is the latent mean of the windows it was
fitted on), and each kind goes through the benchmark's unchanged development selection (row rule x margin)
and the anomaly-free check. Prints JSON: per seed and kind, the chosen setting with its development F1, FAR
and MAR, and the anomaly-free FAR under it; and the means over seeds.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skab_dev import seeds_main  # noqa: E402
from trainer.benchmarks.skab import anomaly_free_parts, development_series, select_vae_setting  # noqa: E402
from trainer.benchmarks.skab_file import FileResult, rescore_vae, run_file, validation_mask  # noqa: E402
from trainer.benchmarks.skab_options import SkabOptions  # noqa: E402
from trainer.benchmarks.skab_scoring import channel_indices, model_windows  # noqa: E402
from trainer.config import TrainerConfig  # noqa: E402
from trainer.data.series import Series  # noqa: E402
from trainer.data.windows import StandardScaler  # noqa: E402
from trainer.scoring import build_scorer, latent_statistics, score_windows  # noqa: E402

KINDS = ("reconstruction", "elbo", "latent")


def kind_results(series: Series, config: TrainerConfig, options: SkabOptions) -> dict[str, FileResult]:
    """One file through `run_file` (VAE only), its window scores recomputed by each score kind."""
    result = run_file(series, config, options, ("vae",))
    assert result.vae_model is not None
    assert result.scaler is not None
    detrend = channel_indices(options.detrend_channels, series.channels, "data -> skab -> detrend_channels")
    windows = model_windows(series.values, result.scaler, config.windows.length, detrend)
    n_train = options.train_rows - config.windows.length + 1
    fitted = windows[:n_train][~validation_mask(n_train, options)]
    n = windows.shape[1]
    identity = StandardScaler(np.zeros(n), np.ones(n)).to_dict()
    stats = latent_statistics(score_windows(build_scorer(result.vae_model, identity, "reconstruction", None),
                                            fitted).latent_mean)
    out = {}
    for kind in KINDS:
        scorer = build_scorer(result.vae_model, identity, kind, stats if kind == "latent" else None)
        out[kind] = dataclasses.replace(result, vae_window_scores=np.asarray(
            score_windows(scorer, windows).score, dtype=np.float64))
    return out


def one_seed(data_dir: Path, config: TrainerConfig, options: SkabOptions) -> dict[str, Any]:
    dev: dict[str, list[FileResult]] = {kind: [] for kind in KINDS}
    for series in development_series(data_dir, options):
        for kind, result in kind_results(series, config, options).items():
            dev[kind].append(result)
    normal: dict[str, list[FileResult]] = {kind: [] for kind in KINDS}
    for part in anomaly_free_parts(data_dir, options):
        for kind, result in kind_results(part, config, options).items():
            normal[kind].append(result)
    out = {}
    for kind in KINDS:
        chosen, _candidates = select_vae_setting(dev[kind], config, options)
        setting = (chosen.row_score, chosen.margin)
        flagged = sum(int((rescore_vae(r, setting, config, options)[0] > 1.0).sum()) for r in normal[kind])
        rows = sum(len(r.labels) for r in normal[kind])
        out[kind] = {"chosen_on_dev": chosen.to_dict(),
                     "anomaly_free_far_pct": round(100.0 * flagged / rows, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    return seeds_main(argv, __doc__, one_seed)


if __name__ == "__main__":
    raise SystemExit(main())
