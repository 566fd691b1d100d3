"""How often the flat-line check would fire on real test data: for each run directory (`edge-trainer fit`,
`benchmark cmapss --out DIR` -> DIR/run, `benchmark skab --export-runs DIR` -> DIR/<file>), the `flatline`
list export would write (`edge_agent.bundle.flatline_reference` on the run's calibration windows and its
sample of fit windows), and how many of the run's evaluation (test) windows have a listed channel that does
not change at all, split by label. On data without stuck sensors every such window is a false alert.

    .venv/bin/python bench/flatline_check.py --run RUN_DIR [RUN_DIR ...] [--out F]

Prints JSON: per run and in total.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import emit
from edge_agent.bundle import flatline_reference


def check_run(run_dir: Path) -> dict[str, Any]:
    from export.pipeline import healthy_windows
    from export.run_dir import load_run

    # as export reads it, so the list is the one export writes (its int8-guard warnings are not this bench's)
    logging.getLogger("export.run_dir").setLevel(logging.ERROR)
    inputs = load_run(run_dir)
    channels = inputs.input_channels
    reference = flatline_reference(channels, healthy_windows(inputs))
    windows = inputs.evaluation.windows
    labels = inputs.evaluation.labels if inputs.evaluation.labels is not None else np.zeros(len(windows), int)
    index = [channels.index(c) for c in reference["channels"]]
    flat = (np.ptp(windows[:, index, :], axis=2) == 0).any(axis=1) if index else np.zeros(len(windows), bool)
    return {"run": str(run_dir), "channels": channels, "checked": reference["channels"],
            "healthy_windows": reference["healthy_windows"], "test_windows": len(windows),
            "test_windows_normal": int((labels == 0).sum()), "flat_normal": int((flat & (labels == 0)).sum()),
            "flat_anomalous": int((flat & (labels == 1)).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, nargs="+", required=True, help="run directories")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    runs = [check_run(path) for path in args.run]
    total = {key: sum(r[key] for r in runs) for key in ("test_windows", "test_windows_normal", "flat_normal",
                                                          "flat_anomalous")}
    return emit({"runs": runs, "total": total}, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
