"""docs/training.md stays true: its data generator and `fan.toml` run through the trainer's own reader and
splitter, giving the splits and the gap warning the guide quotes (no training: that is the guide's
measurement)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from edge_agent.compat import tomllib
from trainer.config import parse_config
from trainer.datasets import load_splits

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def block(language: str, containing: str) -> str:
    for body in re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S):
        if containing in body:
            return body
    raise AssertionError(f"no {language} block with {containing!r} in {DOC}")


def test_worked_example_reads_and_splits_as_the_guide_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # the guide runs from an empty directory: its paths are relative to it
    exec(compile(block("python", "def recording"), "make_data.py", "exec"), {})  # the guide's own snippet
    assert len(list((tmp_path / "data").glob("*.csv"))) == 8
    text = block("toml", 'source = "csv"')
    config = parse_config(tomllib.loads(text), "fan.toml")
    caplog.set_level(logging.WARNING, logger="trainer.data.csv_reader")
    splits = load_splits(config.data, config.windows.sample_period_s)
    names = {part: sorted({s.name for s in getattr(splits, part)})
             for part in ("fit", "val", "calibration", "val_labelled", "test")}
    assert names == {"fit": ["run01", "run02", "run03", "run05"], "val": ["run06"],
                     "calibration": ["run04#0", "run04#1"], "val_labelled": ["fault01", "run06"],
                     "test": ["fault02"]}
    quoted = re.search(r"WARNING trainer\.data\.csv_reader: (.*)\n", DOC.read_text())
    assert quoted is not None
    assert quoted.group(1) in caplog.text
