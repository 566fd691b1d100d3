"""`edge-trainer evaluate` on a CSV run of healthy recordings: undefined rates are null, and the report speaks
of files and UTC times, not of C-MAPSS units and raw Unix seconds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from trainer.cli import main

pytestmark = pytest.mark.integration

CONFIG = """
[data]
source = "csv"
[data.csv]
paths = {paths}
timestamp_column = "time"
channels = ["a", "b", "c"]
label_column = "label"
[windows]
length = 24
stride = 4
train_stride = 2
[model]
latent_dim = 3
hidden = [8, 16]
kl_warmup_epochs = 1
[training]
epochs = 3
batch_size = 64
threads = 1
[calibration]
method = "percentile"
target_far = 0.02
"""
START = 1_772_690_400  # 2026-03-05T06:00:00Z


def test_healthy_csv_run_reports_null_rates_and_a_per_file_utc_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.data.synthetic import make_series

    paths = []
    for i, series in enumerate(make_series(3, 400, 3, seed=7)):
        lines = ["time,a,b,c,label"] + [f"{START + 86_400 * i + t},{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},0"
                                        for t, r in enumerate(series.values)]
        path = tmp_path / f"day{i}.csv"
        path.write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    config = tmp_path / "healthy.toml"
    config.write_text(CONFIG.format(paths=json.dumps(paths)))
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert printed["test"] == test
    assert test["tp"] + test["fn"] == 0  # no anomalous window at all
    assert test["recall"] is None  # undefined, not "0 % caught and 0 % missed"
    assert test["mar"] is None
    assert test["precision"] is None if test["fp"] == 0 else test["precision"] == 0.0
    assert test["far"] == pytest.approx(test["fp"] / (test["fp"] + test["tn"]))
    report = (eval_dir / "report.html").read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", report)
    assert "Scores over time per file" in headings
    assert not [h for h in headings if "per unit" in h]
    assert "&quot;recall&quot;: null" in report  # the metrics block, JSON inside HTML
