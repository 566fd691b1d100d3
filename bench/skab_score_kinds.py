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

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import emit  # noqa: E402
from bench.skab_dev import dev_setup, seed_means, with_seed  # noqa: E402
from trainer.benchmarks.skab import anomaly_free_parts, development_series, select_vae_setting  # noqa: E402
from trainer.benchmarks.skab_file import FileResult, rescore_vae, run_file, validation_mask  # noqa: E402
from trainer.benchmarks.skab_options import DEFAULT_CONFIG, SkabOptions  # noqa: E402
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the SKAB folder (holding data/)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    base, options = dev_setup(parser, args.config)
    runs = {}
    for seed in args.seeds:
        runs[str(seed)] = one_seed(args.data_dir, with_seed(base, seed), options)
        print(f"seed {seed} done", file=sys.stderr)
    report = {"config": str(args.config), "dev_files": list(options.dev_files), "seeds": runs,
              "mean_over_seeds": seed_means(runs)}
    return emit(report, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
