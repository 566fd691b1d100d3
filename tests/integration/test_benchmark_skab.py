"""`edge-trainer benchmark skab` end to end: synthetic SKAB-format files always, 2 real files when present."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from trainer.benchmarks import skab
from trainer.benchmarks.skab_file import rescore_vae, run_file
from trainer.benchmarks.skab_options import parse_options
from trainer.config import load_config
from trainer.data.skab import CHANNELS, labelled_files, read_skab_file
from trainer.train import load_checkpoint

TINY_CONFIG = """
[data]
source = "skab"
[data.skab]
train_rows = {train_rows}
row_score = "{row_score}"
threshold_margin = 1.5
detrend_channels = ["Temperature", "Thermocouple"]
anomaly_free_rows = {anomaly_free_rows}
{extra}
[windows]
length = {length}
[model]
latent_dim = 4
hidden = [8, 8]
beta = 0.01
kl_warmup_epochs = 1
[training]
epochs = {epochs}
batch_size = 64
patience = 3
threads = 1
[calibration]
method = "percentile"
target_far = 0.01
[calibration.params]
q = 0.99
"""


def write_config(
    tmp_path: Path,
    epochs: int = 4,
    row_score: str = "min",
    train_rows: int = 150,
    length: int = 20,
    anomaly_free_rows: int = 0,
    extra: str = "",
) -> Path:
    """A tiny config; the real protocol (400 training rows, windows of 60) is `trainer/configs/skab.toml`."""
    path = tmp_path / "skab.toml"
    path.write_text(
        TINY_CONFIG.format(
            epochs=epochs,
            row_score=row_score,
            train_rows=train_rows,
            length=length,
            anomaly_free_rows=anomaly_free_rows,
            extra=extra,
        ),
        encoding="utf-8",
    )
    return path


def write_synthetic_skab(root: Path, n_files: int = 2, rows: int = 250, anomaly_start: int = 200) -> Path:
    """Files in SKAB's format: correlated sine channels plus noise; rows from `anomaly_start` get a step of
    +6 standard deviations on one channel and are labelled 1."""
    rng = np.random.default_rng(0)
    header = "datetime;" + ";".join(CHANNELS) + ";anomaly;changepoint"
    for i in range(n_files):
        t = np.arange(rows)
        base = np.sin(2 * np.pi * t / 37.0)
        values = np.stack(
            [base * (1 + 0.1 * c) + 0.05 * rng.normal(size=rows) for c in range(len(CHANNELS))], 1
        )
        labels = (t >= anomaly_start).astype(int)
        values[labels == 1, i % len(CHANNELS)] += 6 * values[:, 0].std()
        folder = root / "data" / ("valve1" if i % 2 == 0 else "other")
        folder.mkdir(parents=True, exist_ok=True)
        lines = [header] + [
            f"2020-03-09 10:{(s // 60) % 60:02d}:{s % 60:02d};"
            + ";".join(f"{v:.5f}" for v in values[s])
            + f";{float(labels[s])};0.0"
            for s in range(rows)
        ]
        (folder / f"{i}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("valve1", "valve2", "other"):
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
    t = np.arange(2 * rows)  # the anomaly-free run: the same process, no fault, no label columns
    values = np.stack(
        [
            np.sin(2 * np.pi * t / 37.0) * (1 + 0.1 * c) + 0.05 * rng.normal(size=len(t))
            for c in range(len(CHANNELS))
        ],
        1,
    )
    free = root / "data" / "anomaly-free"
    free.mkdir(parents=True, exist_ok=True)
    (free / "anomaly-free.csv").write_text(
        "\n".join(
            ["datetime;" + ";".join(CHANNELS)]
            + [
                f"2020-03-08 10:{(s // 60) % 60:02d}:{s % 60:02d};" + ";".join(f"{v:.5f}" for v in values[s])
                for s in range(len(t))
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    (root / "LEADERBOARD.md").write_text(
        "### Outlier detection problem\n| Algorithm | F1 | FAR, % | MAR, %\n|---|---|---|---\n"
        "|Conv-AE |0.78 | 13.55 | 28.02\n\n### Changepoint detection problem\n| x | 1 | 2 | 3\n",
        encoding="utf-8",
    )
    return root


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    skab.add_arguments(parser)
    return skab.run(parser.parse_args(argv))


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.integration
def test_synthetic_step_faults_are_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab")
    out = tmp_path / "out"
    config = write_config(tmp_path, anomaly_free_rows=250)
    assert run_cli(["--data-dir", str(data), "--out", str(out), "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files_used"] == 2
    assert summary["test_rows"] == 2 * 100
    # the anomaly-free run, cut into 2 pseudo-files of 250 rows, has 2 x 100 normal "test" rows
    assert summary["anomaly_free"]["pseudo_files"] == 2
    assert summary["anomaly_free"]["test_rows"] == 200
    assert summary["anomaly_free"]["vae"]["far_pct"] < 15
    for name in ("vae", "pca_t2q"):
        assert summary["models"][name]["f1"] > 0.8, name
        assert summary["models"][name]["far_pct"] < 15, name
    # Isolation Forest ranks the faulty rows higher, though its threshold is conservative (as on SKAB)
    assert summary["models"]["isolation_forest"]["roc_auc"] > 0.7
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["leaderboard"] == [
        {"algorithm": "Conv-AE", "f1": 0.78, "far_pct": 13.55, "mar_pct": 28.02}
    ]
    scores = read_scores(out / "scores.csv")
    assert len(scores) == 200
    assert list(scores[0]) == ["file", "datetime", "label", "score", "is_anomaly"]
    assert {row["file"] for row in scores} == {"valve1/0", "other/1"}
    assert all(row["is_anomaly"] == str(int(float(row["score"]) > 1.0)) for row in scores)
    assert "Conv-AE (leaderboard)" in (out / "leaderboard.md").read_text()
    assert (out / "scores_pca_t2q.csv").is_file()
    ratios = metrics["files"][0]["train_lag1_variance_ratio"]
    assert set(ratios) == set(CHANNELS)
    _, checkpoint = load_checkpoint(out / "models" / "valve1_0.pt")
    assert checkpoint["detrend_channels"] == ["Temperature", "Thermocouple"]


SELECTION = """
dev_files = ["valve1"]
select_row_scores = ["min", "mean"]
select_margins = [1.0, 1.5, 3.0]
"""


@pytest.mark.integration
def test_settings_chosen_on_dev_files_and_held_out_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic_skab(tmp_path / "skab")  # valve1/0 (development) and other/1 (held out)
    out = tmp_path / "out"
    config = write_config(tmp_path, anomaly_free_rows=250, extra=SELECTION)
    assert run_cli(["--data-dir", str(data), "--out", str(out), "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out)
    selection = summary["vae_setting"]["selection"]
    candidates = selection["candidates_on_dev"]
    assert [(c["row_score"], c["margin"]) for c in candidates] == [
        (rule, margin) for rule in ("min", "mean") for margin in (1.0, 1.5, 3.0)
    ]
    chosen = selection["chosen"]
    assert chosen in candidates
    within = [c for c in candidates if c["far_pct"] <= 15 and c["mar_pct"] <= 25]
    assert chosen["f1"] == max(c["f1"] for c in within or candidates)
    setting = summary["vae_setting"]
    assert (setting["row_score"], setting["threshold_margin"]) == (chosen["row_score"], chosen["margin"])
    subsets = summary["subsets"]
    assert subsets["dev"]["files"] == ["valve1/0"]
    assert subsets["held_out"]["files"] == ["other/1"]
    dev_vae = subsets["dev"]["models"]["vae"]
    assert dev_vae["f1"] == pytest.approx(chosen["f1"])  # the dev metrics are those of the chosen setting
    for key in ("tp", "fp", "fn", "tn"):
        parts = sum(subsets[part]["models"]["vae"][key] for part in ("dev", "held_out"))
        assert parts == summary["models"]["vae"][key], key
    # the baselines keep the config's row_score and margin; the VAE's threshold names its row rule
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["files"][1]["thresholds"]["vae"]["row_score"] == chosen["row_score"]
    assert metrics["files"][1]["thresholds"]["vae"]["margin"] == chosen["margin"]
    assert metrics["files"][1]["thresholds"]["pca_t2q"]["margin"] == 1.5
    _, checkpoint = load_checkpoint(out / "models" / "other_1.pt")
    assert checkpoint["threshold"] == metrics["files"][1]["thresholds"]["vae"]
    scores = read_scores(out / "scores.csv")
    assert all(row["is_anomaly"] == str(int(float(row["score"]) > 1.0)) for row in scores)


@pytest.mark.integration
def test_rescoring_matches_a_run_with_that_setting(tmp_path: Path) -> None:
    data = write_synthetic_skab(tmp_path / "skab", n_files=1)
    config = load_config(write_config(tmp_path, epochs=2))
    options = parse_options(config.data.generic.options if config.data.generic else {})
    series = read_skab_file(labelled_files(data)[0])
    plain = run_file(series, config, options, ("vae",))
    direct = run_file(series, config, options, ("vae",), vae_setting=("mean", 2.0))
    rows, spec = rescore_vae(plain, ("mean", 2.0), config, options)
    np.testing.assert_allclose(rows, direct.scores["vae"], rtol=1e-6)
    assert spec == direct.thresholds["vae"]
    rows, spec = rescore_vae(plain, (options.row_score, options.threshold_margin), config, options)
    np.testing.assert_allclose(rows, plain.scores["vae"], rtol=1e-6)
    assert spec == plain.thresholds["vae"]


@pytest.mark.integration
def test_bad_arguments_give_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab", n_files=1)
    config = write_config(tmp_path)
    assert (
        run_cli(
            [
                "--data-dir",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--config",
                str(config),
                "--files",
                "valve9/1",
            ]
        )
        == 2
    )
    assert "no SKAB file(s) ['valve9/1']" in capsys.readouterr().out
    config.write_text(config.read_text().replace("row_score", "row_scor"), encoding="utf-8")
    assert run_cli(["--data-dir", str(data), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "data -> skab -> row_scor: unknown key" in capsys.readouterr().out
    config.write_text(
        config.read_text().replace('"Thermocouple"', '"Thermo"').replace("row_scor", "row_score"),
        encoding="utf-8",
    )
    assert run_cli(["--data-dir", str(data), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "data -> skab -> detrend_channels: unknown channel(s) ['Thermo']" in capsys.readouterr().out
    config.write_text(
        config.read_text().replace('"Thermo"', '"Thermocouple"') + '\n[evaluation]\nscore = "latent"\n',
        encoding="utf-8",
    )
    assert run_cli(["--data-dir", str(data), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "evaluation -> score: the SKAB benchmark scores by reconstruction error" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.data
def test_real_skab_slice(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = run_cli(
        [
            "--data-dir",
            str(data_dir / "skab"),
            "--out",
            str(out),
            "--config",
            str(write_config(tmp_path, epochs=3, train_rows=400, length=60)),
            "--files",
            "valve1/0",
            "other/3",
            "--models",
            "vae",
            "pca_t2q",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["files_used"] == 2
    scores = read_scores(out / "scores.csv")
    assert len(scores) == summary["test_rows"]
    labels = np.array([int(r["label"]) for r in scores])
    assert 0 < labels.sum() < len(labels)  # both files hold normal and anomalous test rows
    assert summary["models"]["vae"]["tp"] + summary["models"]["vae"]["fn"] == labels.sum()
    leaderboard = json.loads((out / "metrics.json").read_text())["leaderboard"]
    assert {"algorithm": "Conv-AE", "f1": 0.78, "far_pct": 13.55, "mar_pct": 28.02} in leaderboard
