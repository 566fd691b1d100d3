"""How `fit` splits a user's CSV files: by whole files, with a file's gap segments kept together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.config import load_config
from trainer.datasets import Splits, load_splits

WINDOWS = '[windows]\nlength = 8\nstride = 1\nsample_period_s = 1.0\n'


def write_csv(path: Path, rows: int, *, dropouts: tuple[int, ...] = (), anomaly: bool = False,
              seed: int = 0) -> str:
    """`rows` samples 1 s apart; each dropout removes 10 samples from that row (longer than max_gap)."""
    rng = np.random.default_rng(seed)
    gone = {r for start in dropouts for r in range(start, start + 10)}
    lines = ["time,a,b,label"]
    for i in range(rows):
        if i not in gone:
            label = int(anomaly and rows // 2 <= i < rows // 2 + 20)
            lines.append(f"{1_700_000_000 + i},{rng.normal():.4f},{rng.normal():.4f},{label}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def splits_for(tmp_path: Path, paths: list[str], split: str = "auto", seed: int = 0) -> Splits:
    config = tmp_path / "csv.toml"
    config.write_text(f'[data]\nsource = "csv"\nsplit = "{split}"\nsplit_seed = {seed}\n[data.csv]\n'
                      f'paths = {json.dumps(paths)}\n'
                      'timestamp_column = "time"\nchannels = ["a", "b"]\nlabel_column = "label"\n' + WINDOWS)
    return load_splits(load_config(config).data)


def test_gap_segments_of_one_file_are_not_three_recordings(tmp_path: Path) -> None:
    """One long healthy file with two dropouts near its end reads as three segments (2900, 40, 40 rows).
    They are one recording: the split cuts it in time, and fit gets the bulk of it, instead of one 40-row
    segment being the whole fit set and the 2900 rows calibration."""
    healthy = write_csv(tmp_path / "healthy.csv", 3000, dropouts=(2900, 2950))
    faulty = write_csv(tmp_path / "faulty.csv", 400, anomaly=True, seed=1)
    for seed in range(6):
        splits = splits_for(tmp_path, [healthy, faulty], seed=seed)
        fit_rows = sum(len(s) for s in splits.fit)
        other = sum(len(s) for s in splits.val) + sum(len(s) for s in splits.calibration)
        assert fit_rows > 2 * other, seed
    assert {s.name for s in splits.test} == {"faulty"}


def test_a_files_segments_go_to_one_split_together(tmp_path: Path) -> None:
    paths = [write_csv(tmp_path / f"run{i}.csv", 600, dropouts=(300,) if i == 0 else (), seed=i)
             for i in range(5)]
    splits = splits_for(tmp_path, paths, split="series")
    placed = {name: part for part in ("fit", "val", "calibration")
              for name in (s.name for s in getattr(splits, part))}
    assert {"run0#0", "run0#1"} <= set(placed)
    assert placed["run0#0"] == placed["run0#1"]
    assert len({n.split("#")[0] for n in placed}) == 5


def test_files_sampled_at_another_period_than_the_windows_are_refused(tmp_path: Path) -> None:
    """Data 10 s apart with the default 1 s windows period: the bundle would tell the agent to window on a
    1 s grid, where most points are stale."""
    path = tmp_path / "slow.csv"
    path.write_text("time,a,b,label\n" + "".join(f"{1_700_000_000 + 10 * i},{i % 3},{i % 5},0\n"
                                                 for i in range(300)))
    config = tmp_path / "csv.toml"
    config.write_text(f'[data]\nsource = "csv"\n[data.csv]\npaths = ["{path}"]\n'
                      'timestamp_column = "time"\nchannels = ["a", "b"]\nlabel_column = "label"\n' + WINDOWS)
    data = load_config(config).data
    with pytest.raises(ValueError, match=rf"{path}: samples every 10 s, but windows -> sample_period_s is 1"):
        load_splits(data, 1.0)
    assert sum(len(s) for s in load_splits(data, 10.0).fit) > 0
