"""`edge-trainer fit --config CONFIG --out RUN_DIR` and `edge-trainer evaluate --run RUN_DIR --out
EVAL_DIR`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge_agent.configtools import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the `fit` and `evaluate` commands."""
    fit = subparsers.add_parser("fit", help="train a VAE from a TOML config and calibrate its threshold")
    fit.add_argument("--config", required=True, help="training config (see trainer/configs/)")
    fit.add_argument("--out", required=True, help="run directory to write (checkpoint, run.json, windows)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the run in --out when it holds one (default: refuse a non-empty --out)")
    fit.set_defaults(func=run_fit)
    evaluate = subparsers.add_parser(
        "evaluate", help="score a run's test windows: metrics, scores.csv, report"
    )
    evaluate.add_argument("--run", required=True, help="run directory written by `fit`")
    evaluate.add_argument("--out", required=True, help="directory for metrics.json, scores.csv, report.html")
    evaluate.set_defaults(func=run_evaluate)


def _logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_fit(args: argparse.Namespace) -> int:
    """`fit`: exit 0 on success, 2 on a config or data error (printed, no traceback)."""
    _logging()
    from trainer.config import load_config
    from trainer.run import fit_run

    out = Path(args.out)
    if not args.overwrite and out.is_dir() and any(out.iterdir()):
        print(f"edge-trainer fit: {out} is not empty: a run directory holds one run (its checkpoint is what "
              "export reads); give a new --out, or --overwrite to replace that run", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        run = fit_run(config, out, progress=not args.quiet)
    except (ConfigError, ValueError, OSError) as exc:  # OSError: --out is a file, say
        print(f"edge-trainer fit: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "run": args.out,
                "scoring": run["scoring"],
                "score_baseline": run["score_baseline"],
                "threshold": run["threshold"]["value"],
                "validation": run["metrics"].get("validation"),
            },
            indent=1,
        )
    )
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """`evaluate`: exit 0 on success, 2 when the run directory is missing or broken."""
    _logging()
    from trainer.evaluate import evaluate_run

    try:
        metrics = evaluate_run(args.run, args.out)
    except (ValueError, OSError, KeyError) as exc:
        print(f"edge-trainer evaluate: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps({k: metrics[k] for k in ("test", "validation_run_to_failure") if k in metrics}, indent=1)
    )
    return 0
