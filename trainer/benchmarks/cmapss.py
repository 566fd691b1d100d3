"""`edge-trainer benchmark cmapss`: the C-MAPSS protocol of docs/evaluation.md end to end.

Fit (healthy windows of fit units) -> score choice (validation units) -> threshold (healthy windows of
calibration units) -> evaluate on `test_FD00x` (windows of 50, stride 1, anomalous when RUL at the last cycle
< 30) -> PCA T-squared+Q and Isolation Forest on the same standardised windows of the same split, thresholds
calibrated the same way -> root-cause attribution on faults injected into healthy test windows (and into
healthy windows of the calibration units: `root_cause_validation`, the data the statistic was chosen on).
Leaves in OUT: `run/` (a RUN_DIR for export), `metrics.json`, `scores.csv`, `report.html`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.configtools import ConfigError
from trainer.baselines import IsolationForestBaseline, PcaT2Q
from trainer.calibration import calibrate
from trainer.cli import at_least
from trainer.config import TrainerConfig, load_config
from trainer.evaluate import evaluate_run, load_run
from trainer.metrics import binary_metrics
from trainer.rootcause import DEFAULT_SIZES, evaluate_root_cause
from trainer.run import PreparedData, adjusted_scores, auc_or_none, fit_run, prepare, scale_windows
from trainer.scoring import build_scorer, score_windows
from trainer.torch_model import SCORES

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIGS = {
    "FD001": "cmapss_fd001.toml",
    "FD002": "cmapss_fd002.toml",
    "FD003": "cmapss_fd001.toml",
    "FD004": "cmapss_fd002.toml",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `edge-trainer benchmark cmapss`."""
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with train_/test_/RUL_FD00x.txt")
    parser.add_argument("--subset", choices=sorted(DEFAULT_CONFIGS), default="FD001")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="benchmark config (default: trainer/configs/cmapss_fd001.toml for FD001/FD003, "
        "cmapss_fd002.toml for FD002/FD004)",
    )
    parser.add_argument(
        "--max-units", type=at_least(1), default=None, help="only the first N train and test units (smoke)"
    )
    parser.add_argument("--epochs", type=at_least(1), default=None, help="override training epochs (smoke)")
    parser.add_argument(
        "--rootcause-trials",
        type=at_least(0),
        default=200,
        help="faulted windows per fault type and size (0 skips root cause)",
    )


def benchmark_config(args: argparse.Namespace) -> TrainerConfig:
    """The config with data dir, subset and smoke overrides from the command line applied."""
    config = load_config(args.config or CONFIGS / DEFAULT_CONFIGS[args.subset])
    if config.data.cmapss is None:
        raise ConfigError(
            "data -> source",
            'a C-MAPSS benchmark config needs source = "cmapss"',
            config.data.source,
            config.source_path,
        )
    source = dataclasses.replace(
        config.data.cmapss,
        data_dir=str(args.data_dir),
        subset=args.subset,
        max_units=args.max_units if args.max_units is not None else config.data.cmapss.max_units,
    )
    training = config.training
    if args.epochs is not None:
        training = dataclasses.replace(training, epochs=args.epochs)
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, cmapss=source), training=training
    )


PROTOCOL = {"window_length": 50, "stride": 1, "label_rul": 30}  # docs/evaluation.md (the seed's rule)


def protocol_changes(config: TrainerConfig) -> list[str]:
    """How `config` departs from the published C-MAPSS test protocol (empty when it follows it)."""
    actual = {
        "window_length": config.windows.length,
        "stride": config.windows.stride,
        "label_rul": config.data.cmapss.label_rul if config.data.cmapss else None,
    }
    return [
        f"{key} = {actual[key]} (protocol: {expected})"
        for key, expected in PROTOCOL.items()
        if actual[key] != expected
    ]


def run_baselines(data: PreparedData, config: TrainerConfig) -> dict[str, Any]:
    """PCA T2+Q and Isolation Forest on flattened standardised windows of the same split."""
    n_model = len(data.channels)

    def flat(windows: np.ndarray) -> np.ndarray:
        return scale_windows(data.scaler, windows, n_model).reshape(len(windows), -1)

    fit, cal, test = flat(data.fit.data), flat(data.calibration.data), flat(data.test.data)
    results: dict[str, Any] = {}
    for model in (PcaT2Q(seed=config.training.seed), IsolationForestBaseline(seed=config.training.seed)):
        started = time.monotonic()
        model.fit(fit)
        threshold = calibrate(
            model.score(cal),
            config.calibration.method,
            config.calibration.target_far,
            **config.calibration.params,
        )
        assert data.test.labels is not None
        metrics = binary_metrics(data.test.labels, model.score(test), threshold.value)
        results[model.name] = {**metrics, "seconds": round(time.monotonic() - started, 1)}
    return results


def score_diagnostics(run_dir: Path, data: PreparedData) -> dict[str, Any]:
    """Test ROC-AUC of every score kind with and without the per-asset baseline. Reported for the record
    (does a per-asset offset help?); the run's choice was made on validation units only."""
    run, scorer = load_run(run_dir)
    baseline = {"kind": "per_asset_initial", "windows": 10, "statistic": "median"}
    result: dict[str, Any] = {}
    for kind in SCORES:
        raw = score_windows(
            build_scorer(scorer.vae, run["scaler"], kind, run["latent_stats"]), data.test.data
        ).score
        result[kind] = {
            "plain": auc_or_none(data.test.labels, raw),
            "per_asset_initial_10": auc_or_none(
                data.test.labels, adjusted_scores(raw, data.test.series, baseline)
            ),
        }
    return result


def run_benchmark(config: TrainerConfig, out: Path, rootcause_trials: int = 200) -> dict[str, Any]:
    """The whole protocol; returns the summary also written to OUT/metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = prepare(config)
    run = fit_run(config, out / "run", progress=sys.stderr.isatty(), prepared=data)
    fitted = time.monotonic()
    evaluation = evaluate_run(out / "run", out)
    evaluated = time.monotonic()
    baselines = run_baselines(data, config)
    changes = protocol_changes(config)
    summary: dict[str, Any] = {
        "subset": config.data.cmapss.subset if config.data.cmapss else None,
        "protocol_warning": f"protocol changed: {'; '.join(changes)}; these numbers are not comparable "
        "with the published C-MAPSS protocol"
        if changes
        else None,
        "protocol": {
            "window_length": config.windows.length,
            "stride": config.windows.stride,
            "label_rul": config.data.cmapss.label_rul if config.data.cmapss else None,
            "healthy_min_rul": data.splits.healthy_min_rul,
            "n_regimes": data.splits.n_regimes,
            "units": {k: len(v) for k, v in run["splits"].items()},
            "windows": {
                "fit": len(data.fit),
                "calibration": len(data.calibration),
                "validation": len(data.val_labelled),
                "test": len(data.test),
            },
            "channels": data.channels,
        },
        "vae": {
            **evaluation.get("test", {}),
            "scoring": run["scoring"],
            "score_baseline": run["score_baseline"],
            "epochs": len(run["history"]["val_loss"]),
            "best_epoch": run["history"]["best_epoch"] + 1,
        },
        "baselines": baselines,
        "validation_score_choice": run["metrics"]["score_candidates"],
        "validation_run_to_failure": evaluation.get("validation_run_to_failure"),
        "test_healthy_windows": evaluation.get("test_healthy_windows"),
        "test_auc_by_score_for_the_record": score_diagnostics(out / "run", data),
        "seconds": {"fit": round(fitted - started, 1), "evaluate": round(evaluated - fitted, 1)},
    }
    vae_auc = summary["vae"].get("roc_auc") or 0.0
    summary["vae_beats_baselines"] = all(vae_auc > (b.get("roc_auc") or 0.0) for b in baselines.values())
    if rootcause_trials > 0:
        _, scorer = load_run(out / "run")
        assert data.test.rul is not None
        assert data.splits.healthy_min_rul is not None
        healthy = data.test.data[data.test.rul >= data.splits.healthy_min_rul]
        rc_started = time.monotonic()
        summary["root_cause"] = evaluate_root_cause(
            scorer,
            run["scaler"],
            healthy,
            sizes=DEFAULT_SIZES,
            n_trials=rootcause_trials,
            seed=config.training.seed,
        )
        summary["seconds"]["root_cause"] = round(time.monotonic() - rc_started, 1)
        # The same faults in healthy windows of the calibration training units (not the validation units
        # the root-cause references come from): the data the attribution statistic was chosen on.
        summary["root_cause_validation"] = evaluate_root_cause(
            scorer,
            run["scaler"],
            data.calibration.data,
            sizes=DEFAULT_SIZES,
            n_trials=rootcause_trials,
            seed=config.training.seed,
        )
    summary["seconds"]["total"] = round(time.monotonic() - started, 1)
    (out / "metrics.json").write_text(
        json.dumps({**evaluation, "benchmark": summary}, indent=1), encoding="utf-8"
    )
    return summary


def run(args: argparse.Namespace) -> int:
    """Entry point of `edge-trainer benchmark cmapss`; prints the JSON summary."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = benchmark_config(args)
        changes = protocol_changes(config)
        if changes:
            print(f"warning: protocol changed: {'; '.join(changes)}", file=sys.stderr)
        summary = run_benchmark(config, args.out, args.rootcause_trials)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        log.error("benchmark cmapss: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "validation_score_choice"}, indent=1))
    return 0
