"""`edge-trainer fit` + `evaluate` through the CLI on a tiny synthetic config; `benchmark cmapss` on a
slice of
real C-MAPSS when ../shared/data is present."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from trainer.cli import main

SYNTHETIC = """
[data]
source = "synthetic"
val_fraction = 0.2
calibration_fraction = 0.2

[data.synthetic]
n_series = 10
length = 200
n_channels = 3
seed = 1

[windows]
length = 24
stride = 4
train_stride = 2

[model]
latent_dim = 3
hidden = [8, 16]
kl_warmup_epochs = 1

[training]
epochs = 4
batch_size = 64
threads = 1

[calibration]
method = "percentile"
target_far = 0.02
"""


@pytest.mark.integration
def test_fit_then_evaluate_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(SYNTHETIC)
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    for name in (
        "checkpoint.pt",
        "config.toml",
        "run.json",
        "calibration.npz",
        "evaluation.npz",
        "validation.npz",
        "train_sample.npz",
    ):
        assert (run_dir / name).is_file(), name
    run = json.loads((run_dir / "run.json").read_text())
    from trainer.config import load_config

    written, given = load_config(run_dir / "config.toml"), load_config(config)
    assert (written.model, written.training, written.calibration) == (
        given.model,
        given.training,
        given.calibration,
    )
    with np.load(run_dir / "train_sample.npz") as blob:
        # int8 calibration data for export: training (fit) windows only, capped
        assert 0 < len(blob["windows"]) <= 1024
        assert set(blob["series"].tolist()) <= set(run["splits"]["fit"])
    assert len(run["calibration_scores"]) > 0
    assert "validation_scores" not in run
    assert run["channels"] == ["ch_0", "ch_1", "ch_2"]
    assert run["window_length"] == 24
    assert run["threshold"]["value"] == pytest.approx(fitted["threshold"])
    assert run["scoring"] in ("reconstruction", "elbo", "latent")
    from trainer.train import load_checkpoint

    vae, _ = load_checkpoint(run_dir / "checkpoint.pt")
    np.testing.assert_allclose(vae.channel_error_scale.numpy(), run["channel_error_reference"], rtol=1e-6)
    assert len(run["channel_error_reference"]) == 3
    with np.load(run_dir / "calibration.npz") as blob:
        assert blob["windows"].shape[1:] == (3, 24)
        # calibration windows come from series training never saw
        assert not set(blob["series"].tolist()) & set(run["splits"]["fit"])

    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.9  # the synthetic fault is a 1.5 sigma shift plus noise: easy
    with (eval_dir / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["series", "end", "label", "score", "threshold", "is_anomaly"]
    assert len(rows) == metrics["n_windows"]
    assert all(int(r["is_anomaly"]) == int(float(r["score"]) > float(r["threshold"])) for r in rows)
    report = (eval_dir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4
    assert "src='http" not in report  # offline: every image is embedded


@pytest.mark.integration
def test_fit_reports_config_errors_with_the_key_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(SYNTHETIC.replace("latent_dim = 3", "latent_dims = 3"))
    assert main(["fit", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "model -> latent_dims: unknown key" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "e")]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.data
@pytest.mark.slow
def test_cmapss_benchmark_on_a_slice(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    # A slice has too few calibration windows for POT's tail fit: same protocol, percentile threshold.
    shipped = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "cmapss_fd001.toml"
    config = tmp_path / "fd001_slice.toml"
    config.write_text(shipped.read_text().replace('method = "pot"', 'method = "percentile"'))
    code = main(
        [
            "benchmark",
            "cmapss",
            "--data-dir",
            str(data_dir / "cmapss"),
            "--subset",
            "FD001",
            "--out",
            str(out),
            "--config",
            str(config),
            "--max-units",
            "24",
            "--epochs",
            "2",
            "--rootcause-trials",
            "10",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["protocol"]["window_length"] == 50
    assert summary["protocol"]["label_rul"] == 30
    assert set(summary["baselines"]) == {"pca_t2q", "isolation_forest"}
    assert summary["vae"]["roc_auc"] is not None
    assert 0 <= summary["vae"]["roc_auc"] <= 1
    assert set(summary["root_cause"]["by_size"]) == {"1", "2", "3", "5"}
    assert set(summary["root_cause"]["per_fault"]["stuck"]) == {"frozen"}
    assert set(summary["root_cause"]["per_fault"]["step"]) == {"1", "2", "3", "5"}
    assert set(summary["root_cause_validation"]["by_size"]) == {"1", "2", "3", "5"}
    assert summary["protocol_warning"] is None
    # the run's config.toml is the effective config: the command-line overrides are in it
    from trainer.config import load_config

    effective = load_config(out / "run" / "config.toml")
    assert effective.training.epochs == 2
    assert effective.data.cmapss is not None
    assert effective.data.cmapss.max_units == 24
    assert effective.data.cmapss.data_dir == str(data_dir / "cmapss")
    with (out / "scores.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == [
            "unit",
            "cycle_end",
            "rul_end",
            "label",
            "score",
            "threshold",
            "is_anomaly",
        ]
        rows = list(reader)
    assert all(int(r["label"]) == int(float(r["rul_end"]) < 30) for r in rows)
    assert (out / "run" / "run.json").is_file()
    assert (out / "report.html").is_file()


def _write_csv(path: Path, values: np.ndarray, labels: np.ndarray) -> None:
    lines = ["time,a,b,c,label"]
    for i, (row, label) in enumerate(zip(values, labels, strict=True)):
        lines.append(f"{1_700_000_000 + i},{row[0]:.5f},{row[1]:.5f},{row[2]:.5f},{int(label)}")
    path.write_text("\n".join(lines) + "\n")


def _csv_config(tmp_path: Path, paths: list[str], *, data: str = "", label: bool = True,
                windows: str | None = None, tail: str = "") -> Path:
    """`csv.toml` reading `paths` (channels a, b, c; the `label` column unless `label` is false) with the
    tiny model of SYNTHETIC: `data` goes into [data] before its tables, `windows` replaces everything from
    [windows] on, `tail` follows it."""
    config = tmp_path / "csv.toml"
    config.write_text(
        '[data]\nsource = "csv"\n' + data + "[data.csv]\n"
        f"paths = {json.dumps(paths)}\n"
        'timestamp_column = "time"\nchannels = ["a", "b", "c"]\n'
        + ('label_column = "label"\n' if label else "")
        + "[windows]" + (windows or SYNTHETIC.split("[windows]", 1)[1]) + tail
    )
    return config


@pytest.mark.integration
def test_fit_and_evaluate_on_csv_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.data.synthetic import make_series

    paths = []
    series = make_series(2, 1000, 3, seed=5) + make_series(2, 300, 3, seed=6, anomalous=True)
    for i, item in enumerate(series):
        path = tmp_path / f"run{i}.csv"
        _write_csv(path, item.values, item.labels)
        paths.append(str(path))
    config = _csv_config(tmp_path, paths, data='[data.units]\na = "bar"\nc = "degC"\n')
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    assert run["channels"] == ["a", "b", "c"]
    assert run["units"] == ["bar", None, "degC"]  # [data.units], in channel order, for the bundle
    assert run["splits"]["test"] == ["run3"]  # one anomalous file validates, the other tests
    assert "run2" in run["splits"]["val_labelled"]  # the validating file is named too
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 0
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] is not None
    assert "test_note" not in metrics
    capsys.readouterr()
    # healthy recordings only: the test windows are the calibration windows, and metrics.json says so
    text = config.read_text()
    config.write_text(text.replace(f"paths = {json.dumps(paths)}", f"paths = {json.dumps(paths[:2])}"))
    healthy, healthy_eval = tmp_path / "healthy", tmp_path / "healthy_eval"
    assert main(["fit", "--config", str(config), "--out", str(healthy), "--quiet"]) == 0
    assert main(["evaluate", "--run", str(healthy), "--out", str(healthy_eval)]) == 0
    metrics = json.loads((healthy_eval / "metrics.json").read_text())
    assert metrics["test_note"].startswith("no labelled series: the test windows are the calibration windows")
    test = metrics["test"]
    assert test["tp"] + test["fn"] == 0  # no anomalous window at all
    assert test["recall"] is None  # undefined, not "0 % caught and 0 % missed"
    assert test["mar"] is None
    assert test["precision"] is None if test["fp"] == 0 else test["precision"] == 0.0
    assert test["far"] == pytest.approx(test["fp"] / (test["fp"] + test["tn"]))
    report = (healthy_eval / "report.html").read_text()
    assert "test_note" in report
    assert "&quot;recall&quot;: null" in report  # the metrics block, JSON inside HTML
    headings = re.findall(r"<h2>(.*?)</h2>", report)  # CSV data: files and UTC times, not C-MAPSS units
    assert "Scores over time per file" in headings
    assert not [h for h in headings if "per unit" in h]
    capsys.readouterr()


@pytest.mark.integration
def test_csv_config_mistakes_are_named_before_training(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A unit for a channel the data lacks, or a typo in [data.csv]: the error names the config file and
    the key, comes before any epoch, and leaves no RUN_DIR behind."""
    from trainer.data.synthetic import make_series

    paths = []
    for i, item in enumerate(make_series(3, 200, 3, seed=5)):
        _write_csv(tmp_path / f"run{i}.csv", item.values, np.zeros(len(item.values)))
        paths.append(str(tmp_path / f"run{i}.csv"))
    config = _csv_config(tmp_path, paths, data='[data.units]\nbb = "bar"\n', label=False)
    run_dir = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{config}: data -> units -> bb: no such channel in the data (channels: a, b, c)" in err
    assert "epoch" not in err
    assert not run_dir.exists()
    config = _csv_config(tmp_path, paths, label=False)
    config.write_text(config.read_text().replace("channels =", "chanels ="))
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 2
    # the misspelt key is named, not the required one reported missing
    assert (f"{config}: data -> csv -> chanels: unknown key (did you mean channels?) (value: ['a', 'b', 'c'])"
            in capsys.readouterr().err)
    assert not run_dir.exists()



@pytest.mark.integration
def test_evaluate_names_what_is_damaged_in_a_run_directory(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(SYNTHETIC)
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    run_json = run_dir / "run.json"
    good = run_json.read_text()
    run_json.write_text(good[: len(good) // 2])
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 2
    assert f"{run_json}: not valid JSON" in capsys.readouterr().err
    run_json.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "threshold"}))
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 2
    assert f"{run_json}: missing threshold; the run directory is damaged" in capsys.readouterr().err
    run_json.write_text(good)
    windows = run_dir / "evaluation.npz"
    windows.write_bytes(windows.read_bytes()[:200])
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{windows}: cannot read the windows" in err
    assert "Traceback" not in err
    assert not eval_dir.exists()  # nothing written for a run that cannot be evaluated


class _Hostile:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        import os

        return (os.getcwd, ())  # harmless, but `weights_only=True` must refuse any callable


def garbage_checkpoint(kind: str) -> bytes:
    """Bytes of a broken or hostile checkpoint file."""
    import pickle

    if kind == "hostile":
        return pickle.dumps(_Hostile(), protocol=2)
    return {"empty": b"", "text": b"not a checkpoint\n" * 10}[kind]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["empty", "text", "hostile"])
def test_evaluate_refuses_a_garbage_checkpoint_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"channels": ["a"], "input_channels": ["a"], "scaler": {},
                                                  "scoring": "reconstruction", "threshold": {"value": 1.0},
                                                  "score_baseline": None}))
    (run_dir / "checkpoint.pt").write_bytes(garbage_checkpoint(kind))
    assert main(["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'checkpoint.pt'}: not a valid trainer checkpoint" in err
    assert "Traceback" not in err


@pytest.mark.integration
def test_benchmark_warns_when_the_protocol_is_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "cmapss_fd001.toml"
    config = tmp_path / "changed.toml"
    config.write_text(shipped.read_text().replace("length = 50", "length = 40"))
    code = main(
        [
            "benchmark",
            "cmapss",
            "--data-dir",
            str(tmp_path / "no-data"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2  # no data here: the warning comes before any work
    assert "protocol changed: window_length = 40 (protocol: 50)" in capsys.readouterr().err


@pytest.mark.integration
def test_fit_keeps_an_existing_run_and_leaves_no_half_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.toml"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")  # an earlier run: fit used to replace it without a word
    config.write_text(SYNTHETIC)
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 2
    assert f"{run_dir} is not empty: a run directory holds one run" in capsys.readouterr().err
    assert (run_dir / "run.json").read_text() == "{}"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet", "--overwrite"]) == 0
    assert json.loads((run_dir / "run.json").read_text())["threshold"]["value"] > 0
    capsys.readouterr()
    # POT needs 10 exceedances of its initial quantile: 90 calibration windows cannot give them, which is
    # found before training (`scores_needed`), and no directory is made
    pot = SYNTHETIC.replace('method = "percentile"', 'method = "pot"')
    config.write_text(pot)  # target_far 0.02: POT's default init_quantile 0.98 leaves no tail beyond it
    fresh = tmp_path / "fresh"
    assert main(["fit", "--config", str(config), "--out", str(fresh), "--quiet"]) == 2
    assert (f"{config}: calibration -> target_far: method 'pot': target_far 0.02 is not beyond the initial "
            "quantile 0.98; lower init_quantile below 1 - target_far (0.98) or use 'percentile' (found "
            "before training)") in capsys.readouterr().err
    config.write_text(pot.replace("target_far = 0.02", "target_far = 0.01"))
    assert main(["fit", "--config", str(config), "--out", str(fresh), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"{config}: calibration -> method: method 'pot' needs at least 452 calibration scores with "
            "these settings, got 90: 90 calibration window(s) of 24 samples, one every 4 rows, from 2 "
            "series") in err
    assert 'or method = "mad" or "sigma", which need 10 (found before training)' in err
    assert not fresh.exists()
    # Enough windows, but all alike: the recording's calibration block is a stopped machine (every value
    # constant), so every calibration window scores the same and POT finds none above its initial quantile.
    # That shows only after training: the error names the section, and the directory fit made is removed
    values = np.random.default_rng(0).normal(size=(4000, 3))
    values[-700:] = [0.5, -0.2, 1.0]
    _write_csv(tmp_path / "stopped.csv", values, np.zeros(4000))
    windows = SYNTHETIC.split("[windows]", 1)[1].replace("stride = 4", "stride = 1").replace(
        'method = "percentile"', 'method = "pot"').replace("target_far = 0.02", "target_far = 0.01")
    stopped = _csv_config(tmp_path, [str(tmp_path / "stopped.csv")], label=False,
                          data='split = "time"\ncalibration_fraction = 0.15\n', windows=windows)
    assert main(["fit", "--config", str(stopped), "--out", str(fresh), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{stopped}: calibration: method 'pot': only 0 score(s) exceed" in err
    assert "(577 calibration windows from 1 series)" in err
    assert not fresh.exists()
    config.write_text(SYNTHETIC.replace("target_far = 0.02", "target_far = 1.0"))
    assert main(["fit", "--config", str(config), "--out", str(fresh), "--quiet"]) == 2
    assert "calibration -> target_far: must be less than 1" in capsys.readouterr().err


@pytest.mark.integration
def test_csv_files_with_one_name_and_a_sparse_label_through_fit_and_evaluate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """day1/pump.csv, day2/pump.csv, ...: one series per file in run.json's splits and in scores.csv. A file
    labelled on two single rows (a change point) that no window ends on: fit and evaluate both say so."""
    import logging

    from trainer.data.synthetic import make_series

    healthy = make_series(4, 400, 3, seed=5)
    faulty = make_series(1, 400, 3, seed=6, anomalous=True)
    paths = []
    for i, item in enumerate(healthy):
        (tmp_path / f"day{i}").mkdir()
        _write_csv(tmp_path / f"day{i}" / "pump.csv", item.values, np.zeros(len(item.values)))
        paths.append(str(tmp_path / f"day{i}" / "pump.csv"))
    labels = np.zeros(400)
    labels[[201, 302]] = 1  # window ends (length 24, stride 4) are rows 23, 27, ...: 201 and 302 are none
    _write_csv(tmp_path / "pump_fault.csv", faulty[0].values, labels)
    paths.append(str(tmp_path / "pump_fault.csv"))
    config = _csv_config(tmp_path, paths, data='split = "series"\n',
                         tail='[evaluation]\nscore_baseline = "per_asset_initial"\n')
    run_dir, eval_dir = tmp_path / "run", tmp_path / "eval"
    caplog.set_level(logging.WARNING)
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 0
    missed = ("has 2 row(s) labelled 1 but none of its 95 window(s) is labelled 1: a window's label is its "
              "last row's, and with stride 4 no window ends on a labelled row")
    assert f"test windows: series 'pump_fault' ({paths[-1]}) {missed}" in caplog.text
    run = json.loads((run_dir / "run.json").read_text())
    normal = sorted(run["splits"]["fit"] + run["splits"]["val"] + run["splits"]["calibration"])
    assert normal == ["day0/pump", "day1/pump", "day2/pump", "day3/pump"]
    assert run["splits"]["test"] == ["pump_fault"]
    caplog.clear()
    assert main(["evaluate", "--run", str(run_dir), "--out", str(eval_dir)]) == 0
    assert f"{run_dir / 'evaluation.npz'}: series 'pump_fault' {missed}" in caplog.text
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] is None
    # healthy files only: the test windows are the calibration files' own, one series name per file
    config.write_text(config.read_text().replace(f"paths = {json.dumps(paths)}",
                                                 f"paths = {json.dumps(paths[:4])}"))
    healthy_run, healthy_eval = tmp_path / "healthy", tmp_path / "healthy_eval"
    assert main(["fit", "--config", str(config), "--out", str(healthy_run), "--quiet"]) == 0
    assert main(["evaluate", "--run", str(healthy_run), "--out", str(healthy_eval)]) == 0
    with (healthy_eval / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    calibration = json.loads((healthy_run / "run.json").read_text())["splits"]["calibration"]
    assert sorted({r["series"] for r in rows}) == calibration
    for name in calibration:  # the per-asset baseline starts at each file's first window
        assert float(next(r for r in rows if r["series"] == name)["score"]) == 0.0
    capsys.readouterr()


@pytest.mark.integration
def test_too_few_calibration_windows_fail_before_training(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.data.synthetic import make_series

    paths = []
    for i, item in enumerate(make_series(3, 300, 3, seed=5)):
        _write_csv(tmp_path / f"run{i}.csv", item.values, np.zeros(len(item.values)))
        paths.append(str(tmp_path / f"run{i}.csv"))
    config = _csv_config(tmp_path, paths, label=False,
                         windows=SYNTHETIC.split("[windows]", 1)[1].replace("stride = 4", "stride = 50"))
    run_dir = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"{config}: windows -> stride: need at least 10 scores to calibrate, got 6: 6 calibration "
            "window(s) of 24 samples, one every 50 rows, from 1 series (300 rows); use a smaller windows -> "
            "stride") in err
    assert "epoch" not in err
    assert not run_dir.exists()
