"""Choosing the VAE's row rule and threshold margin on a development split of the SKAB files.

The leaderboard protocol fixes the split inside each file (first 400 rows train) but not how a method's
settings are chosen; tuning them on the test parts of all 34 files (as the leaderboard's own rows were) gives
no held-out estimate. Here the settings are chosen on the test parts of a fixed, named subset of files (the
development files, ``dev_files``), and the benchmark reports the metrics on all files and, separately, on the
held-out files, whose labels played no part in the choice.

Rule: among the candidates (every row rule x every margin), the one with the highest F1 on the development
files among those that meet the FAR and MAR limits there (the target's limits); when none does, the highest
F1. Ties go to the earlier candidate in the grid order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """One setting of the grid and its metrics on the development files."""

    row_score: str
    margin: float
    f1: float
    far_pct: float
    mar_pct: float

    def meets(self, max_far_pct: float, max_mar_pct: float) -> bool:
        return self.far_pct <= max_far_pct and self.mar_pct <= max_mar_pct

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_score": self.row_score,
            "margin": self.margin,
            "f1": self.f1,
            "far_pct": self.far_pct,
            "mar_pct": self.mar_pct,
        }


def in_subset(name: str, patterns: Sequence[str]) -> bool:
    """Whether file `name` (``folder/stem``) is named by `patterns`: a folder (``valve1``) or a file
    (``valve1/3``)."""
    folder = name.split("/", 1)[0]
    return any(pattern in (name, folder) for pattern in patterns)


def choose(candidates: Sequence[Candidate], max_far_pct: float, max_mar_pct: float) -> Candidate:
    """The candidate with the highest F1 among those within both limits, else the highest F1 overall
    (the first one on ties)."""
    if not candidates:
        raise ValueError("no candidate settings to choose from")
    within = [c for c in candidates if c.meets(max_far_pct, max_mar_pct)]
    pool = within or list(candidates)
    best = pool[0]
    for candidate in pool[1:]:
        if candidate.f1 > best.f1:
            best = candidate
    return best
