"""How `fit` splits a user's CSV files: by whole files, with a file's gap segments kept together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.config import DataConfig, load_config
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


def _timed_file(tmp_path: Path, name: str, start: int, step: int,
                csv_keys: str = "") -> tuple[Path, DataConfig]:
    """A 300-row file of channels a and b (label 0) whose times are `start + step * i`, and the [data] of a
    config reading it (with `csv_keys` added to its [data.csv])."""
    path = tmp_path / name
    path.write_text("time,a,b,label\n"
                    + "".join(f"{start + step * i},{i % 3},{i % 5},0\n" for i in range(300)))
    config = tmp_path / "csv.toml"
    config.write_text(f'[data]\nsource = "csv"\n[data.csv]\npaths = ["{path}"]\n' + csv_keys
                      + 'timestamp_column = "time"\nchannels = ["a", "b"]\nlabel_column = "label"\n'
                      + WINDOWS)
    return path, load_config(config).data


def test_files_sampled_at_another_period_than_the_windows_are_refused(tmp_path: Path) -> None:
    """Data 10 s apart with the default 1 s windows period: the bundle would tell the agent to window on a
    1 s grid, where most points are stale."""
    path, data = _timed_file(tmp_path, "slow.csv", 1_700_000_000, 10)
    with pytest.raises(ValueError, match=rf"{path}: samples every 10 s, but windows -> sample_period_s is 1"):
        load_splits(data, 1.0)
    assert sum(len(s) for s in load_splits(data, 10.0).fit) > 0


def test_files_with_the_same_name_in_different_folders_stay_apart_in_the_splits(tmp_path: Path) -> None:
    """day1/pump.csv, day2/pump.csv, ...: one series name per file, so run.json's splits, scores.csv and the
    per-asset baselines tell them apart."""
    paths = []
    for i, folder in enumerate(("day1", "day2", "day3", "day4")):
        (tmp_path / folder).mkdir()
        paths.append(write_csv(tmp_path / folder / "pump.csv", 300, seed=i))
    (tmp_path / "fault").mkdir()
    paths.append(write_csv(tmp_path / "fault" / "pump.csv", 300, anomaly=True, seed=9))
    splits = splits_for(tmp_path, paths, split="series")
    placed = {part: [s.name for s in getattr(splits, part)] for part in ("fit", "val", "calibration", "test")}
    assert sorted(n for part in ("fit", "val", "calibration") for n in placed[part]) == [
        "day1/pump", "day2/pump", "day3/pump", "day4/pump"]
    assert placed["test"] == ["fault/pump"]
    time_split = splits_for(tmp_path, paths[:4], split="time")  # each file cut in time: one name per file
    assert [s.name for s in time_split.calibration] == ["day1/pump", "day2/pump", "day3/pump", "day4/pump"]


def test_every_file_labelled_names_the_label_column(tmp_path: Path) -> None:
    paths = [write_csv(tmp_path / f"run{i}.csv", 200, anomaly=True, seed=i) for i in range(2)]
    with pytest.raises(ValueError, match=r"every file holds rows labelled 1 in label_column 'label' "
                                         r"\(40 of 400 rows, 10 %\).*Is 'label' the anomaly label"):
        splits_for(tmp_path, paths)


def test_a_labelled_files_segments_are_all_scored_and_kept_together(tmp_path: Path) -> None:
    """A fault recording cut by a dropout: its healthy segment before the fault is not fitted on, and its two
    segments are not split between validation (score choice, int8 guard) and test: one fault event would be
    both chosen on and tested on."""
    healthy = [write_csv(tmp_path / f"healthy{i}.csv", 600, seed=i) for i in range(3)]
    # 400 rows, a dropout at row 100, the fault at rows 200-219: segments fault#0 (normal) and fault#1
    fault = write_csv(tmp_path / "fault.csv", 400, dropouts=(100,), anomaly=True, seed=7)
    other = write_csv(tmp_path / "other.csv", 400, anomaly=True, seed=8)
    for paths, val_names, test_names in (
            ([*healthy, fault], set(), {"fault#0", "fault#1"}),
            ([*healthy, fault, other], {"fault#0", "fault#1"}, {"other"}),
            ([*healthy, other, fault], {"other"}, {"fault#0", "fault#1"})):
        for seed in range(3):
            splits = splits_for(tmp_path, paths, seed=seed)
            fitted = {s.name for part in (splits.fit, splits.val, splits.calibration) for s in part}
            assert fitted == {"healthy0", "healthy1", "healthy2"}
            assert {s.name for s in splits.val_labelled} - fitted == val_names
            assert {s.name for s in splits.test} == test_names


def test_a_period_a_thousand_times_the_windows_hints_at_milliseconds(tmp_path: Path) -> None:
    """A millisecond counter small enough to pass as seconds (year < 9999): the 1000 s period is not a
    sample_period_s to set, it is the timestamp unit."""
    _, data = _timed_file(tmp_path, "counter.csv", 5_000_000_000, 1000)
    with pytest.raises(ValueError, match=r"samples every 1000 s, .* \(the timestamps look like Unix "
                                         r"milliseconds read as seconds: set data -> csv -> "
                                         r'timestamp_format = "unix_ms"'):
        load_splits(data, 1.0)
    _, data = _timed_file(tmp_path, "counter.csv", 5_000_000_000, 1000, 'timestamp_format = "unix_ms"\n')
    assert sum(len(s) for s in load_splits(data, 1.0).fit) > 0


def test_a_row_of_any_split_is_named_by_file_and_line(tmp_path: Path) -> None:
    # 500 rows, 10 dropped from row 100 (a long gap: two segments); cut in time, the calibration block is
    # the end of the second segment
    path = write_csv(tmp_path / "pump.csv", 500, dropouts=(100,))
    splits = splits_for(tmp_path, [path], split="time")
    calibration = splits.calibration[-1]
    assert calibration.name == "pump#1"
    # the last row of the file is on line 491 (header + 500 rows - 10 dropped)
    assert splits.origin.row(calibration, len(calibration) - 1) == f"{path}: line 491"
    first = splits.fit[0]
    assert splits.origin.row(first, 0) == f"{path}: line 2"
    assert splits.origin.file("pump#1") == path
