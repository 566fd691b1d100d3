"""Choosing the SKAB VAE's row rule and margin on development files, and the options that ask for it."""

from __future__ import annotations

import pytest

from edge_agent.configtools import ConfigError
from trainer.benchmarks.skab_options import parse_options
from trainer.benchmarks.skab_select import Candidate, choose, in_subset


def test_subset_names_folders_or_files() -> None:
    assert in_subset("valve1/3", ["valve1"])
    assert in_subset("valve1/3", ["other", "valve1/3"])
    assert not in_subset("valve1/3", ["valve1/30", "valve"])
    assert not in_subset("valve2/0", [])


def test_choice_prefers_candidates_within_the_limits() -> None:
    loose = Candidate("mean", 1.25, f1=0.85, far_pct=24.9, mar_pct=9.9)  # best F1, FAR over the limit
    tight = Candidate("mean", 1.5, f1=0.83, far_pct=13.8, mar_pct=21.4)
    tighter = Candidate("min", 1.5, f1=0.77, far_pct=3.2, mar_pct=35.9)  # MAR over the limit
    assert choose([loose, tight, tighter], max_far_pct=15, max_mar_pct=25) == tight
    # none within: the highest F1; ties go to the first in grid order
    assert choose([tighter, loose], max_far_pct=1, max_mar_pct=1) == loose
    twin = Candidate("end", 2.0, f1=0.85, far_pct=30.0, mar_pct=5.0)
    assert choose([loose, twin], max_far_pct=1, max_mar_pct=1) == loose
    with pytest.raises(ValueError, match="no candidate"):
        choose([], 15, 25)


def test_selection_options_are_strict() -> None:
    options = parse_options(
        {
            "dev_files": ["valve1"],
            "select_row_scores": ["min", "mean"],
            "select_margins": [1, 1.5],
            "select_max_far_pct": 10,
        }
    )
    assert options.selects
    assert options.select_margins == (1.0, 1.5)
    assert (options.select_max_far_pct, options.select_max_mar_pct) == (10.0, 25.0)
    assert not parse_options({"dev_files": ["valve1"]}).selects  # split reported, nothing chosen
    with pytest.raises(ConfigError, match="select_row_scores -> 1: must be one of end, min, mean"):
        parse_options({"dev_files": ["v"], "select_row_scores": ["min", "max"], "select_margins": [1]})
    with pytest.raises(ConfigError, match="select_margins -> 0: must be a positive number"):
        parse_options({"dev_files": ["v"], "select_row_scores": ["min"], "select_margins": [0]})
    with pytest.raises(ConfigError, match="select_margins: select_row_scores and select_margins are given"):
        parse_options({"dev_files": ["v"], "select_row_scores": ["min"]})
    with pytest.raises(ConfigError, match="dev_files: selection needs the development files"):
        parse_options({"select_row_scores": ["min"], "select_margins": [1.5]})


@pytest.mark.parametrize(("label", "kind"), [(0, "anomalous"), (1, "normal")])
def test_development_files_with_one_class_only_are_refused(label: int, kind: str) -> None:
    import numpy as np

    from trainer.benchmarks.skab import select_vae_setting
    from trainer.benchmarks.skab_file import FileResult
    from trainer.benchmarks.skab_options import DEFAULT_CONFIG
    from trainer.config import load_config

    options = parse_options({"dev_files": ["valve1"]})
    one_class = FileResult("valve1/0", np.arange(5), np.full(5, label), {}, {})
    with pytest.raises(ValueError, match=rf"dev_files \['valve1'\]: their test parts hold no {kind} rows"):
        select_vae_setting([one_class], load_config(DEFAULT_CONFIG), options)


def test_the_leaderboard_table_writes_an_undefined_rate_as_n_a(tmp_path) -> None:
    """Test parts of one class (a `train_rows` past the anomaly): FAR % has nothing to count and is None."""
    import numpy as np

    from trainer.benchmarks.skab_file import FileResult
    from trainer.benchmarks.skab_outputs import write_outputs
    from trainer.metrics import skab_metrics

    labels = np.ones(4, dtype=np.int8)
    result = FileResult("other/1", np.arange(4.0), labels, {"pca_t2q": np.array([2.0, 2.0, 0.5, 2.0])}, {})
    summary = {"pca_t2q": skab_metrics(labels, np.array([1, 1, 0, 1]))}
    assert summary["pca_t2q"]["far_pct"] is None
    write_outputs(tmp_path, [result], summary, leaderboard=[], meta={}, models=("pca_t2q",))
    assert "| pca_t2q (this run) | 0.86 | n/a | 25.00 |" in (tmp_path / "leaderboard.md").read_text()
