"""RUN_DIR bookkeeping: the git commit with its dirty flag, and the capped training-window sample."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from trainer.data.windows import WindowSet
from trainer.run import git_commit, train_sample


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_git_commit_marks_a_dirty_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("not part of the code")
    assert git_commit(tmp_path) == head  # untracked files do not make it dirty
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{head}-dirty"


def test_train_sample_is_capped_and_spread_over_the_fit_windows() -> None:
    n = 3000
    fit = WindowSet(
        np.arange(n * 2 * 4, dtype=np.float32).reshape(n, 2, 4),
        ["a", "b"],
        np.array([f"s{i // 1000}" for i in range(n)], dtype=object),
        np.arange(n),
        np.arange(n, dtype=np.float64),
    )
    sample = train_sample(fit, limit=1024)
    assert len(sample) == 1024
    assert set(sample.series.tolist()) == {"s0", "s1", "s2"}  # every fit series is represented
    assert sample.end_row[0] == 0
    assert sample.end_row[-1] == n - 1
    small = train_sample(fit.subset(np.arange(10)), limit=1024)
    assert len(small) == 10
