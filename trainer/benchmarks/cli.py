"""`edge-trainer benchmark cmapss|skab`: the published protocols end to end, with the classic baselines."""

from __future__ import annotations

from typing import Any

from trainer.benchmarks import cmapss, skab

BENCHMARKS = {
    "cmapss": (cmapss, "NASA C-MAPSS turbofan run-to-failure (one subset)"),
    "skab": (skab, "SKAB water-circulation testbed, the outlier-detection leaderboard protocol"),
}


def register(subparsers: Any) -> None:
    """Add `benchmark` with one sub-command per benchmark (each module gives `add_arguments` and `run`)."""
    parser = subparsers.add_parser(
        "benchmark", help="run a benchmark protocol end to end", description=__doc__.splitlines()[0]
    )
    inner = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module, help_text) in BENCHMARKS.items():
        sub = inner.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
