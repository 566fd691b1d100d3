"""A SKAB benchmark model (per-window centred channels) -> RUN_DIR (`benchmark skab --export-runs`) -> signed
bundle -> ONNX Runtime, scoring as the benchmark and the trainer's scorer do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from edge_agent.bundle import read_bundle
from export.pipeline import export_run
from export.run_dir import load_run
from tests.integration.test_benchmark_skab import run_cli, write_config, write_synthetic_skab
from tests.support.bundles import make_keypair, run_model
from trainer.benchmarks.skab_scoring import channel_indices, model_windows
from trainer.data.skab import CHANNELS, labelled_files, read_skab_file
from trainer.data.windows import StandardScaler
from trainer.scoring import build_scorer, score_windows
from trainer.train import load_checkpoint

pytestmark = pytest.mark.integration

CENTRED = ["Temperature", "Thermocouple"]  # write_config's detrend_channels


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic benchmark (2 files, margin 1.5, `min` rule) run with `--export-runs`."""
    root = tmp_path_factory.mktemp("skab")
    data = write_synthetic_skab(root / "skab")
    config = write_config(root, epochs=3)
    code = run_cli(["--data-dir", str(data), "--out", str(root / "out"), "--config", str(config),
                    "--models", "vae", "--export-runs", str(root / "runs")])
    assert code == 0
    return root


def test_run_directory_records_the_centring_and_the_causal_threshold(benchmark: Path) -> None:
    run_dir = benchmark / "runs" / "valve1_0"
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((benchmark / "out" / "metrics.json").read_text())
    assert run["detrend_channels"] == CENTRED
    assert run["input_channels"] == list(CHANNELS)
    # the benchmark's own threshold machinery for the `end` rule, the run's margin (1.5 here), not its `min`
    spec = run["skab"]["benchmark_threshold"]
    assert (spec["row_score"], spec["margin"]) == ("end", 1.5)
    assert metrics["files"][0]["thresholds"]["vae"]["row_score"] == "min"
    assert run["threshold"]["value"] == spec["threshold"] == 1.5 * spec["value"]
    assert run["threshold"]["params"] == {"q": 0.99, "margin": 1.5}
    # the benchmark's checkpoint is untouched (neutral root-cause references); the RUN_DIR's is fitted
    benchmark_vae, _ = load_checkpoint(benchmark / "out" / "models" / "valve1_0.pt")
    exported_vae, metadata = load_checkpoint(run_dir / "checkpoint.pt")
    assert np.all(benchmark_vae.channel_error_scale.numpy() == 1.0)
    assert not np.all(exported_vae.channel_error_scale.numpy() == 1.0)
    assert metadata["detrend_channels"] == CENTRED
    for key in ("encoder.0.weight", "head.bias"):
        assert np.array_equal(benchmark_vae.state_dict()[key], exported_vae.state_dict()[key])
    # the trainer's scorer built from the RUN_DIR scores the benchmark's windows as the benchmark did
    inputs = load_run(run_dir)
    assert inputs.scorer.centred
    series = read_skab_file(labelled_files(benchmark / "skab")[0])
    scaler = StandardScaler(np.asarray(run["scaler"]["mean"]), np.asarray(run["scaler"]["std"]))
    length = run["window_length"]
    prepared = model_windows(series.values, scaler, length, channel_indices(CENTRED, CHANNELS, "test"))
    identity = StandardScaler(np.zeros(len(CHANNELS)), np.ones(len(CHANNELS))).to_dict()
    as_benchmark = build_scorer(exported_vae, identity, "reconstruction", None)  # inputs already prepared
    benchmark_scores = score_windows(as_benchmark, prepared).score
    raw = np.concatenate([inputs.calibration.windows, inputs.evaluation.windows])
    np.testing.assert_allclose(score_windows(inputs.scorer, raw).score, benchmark_scores, rtol=1e-4,
                               atol=1e-6)


def test_evaluate_on_a_run_directory_reports_the_held_out_test_part(benchmark: Path, tmp_path: Path) -> None:
    """The protocol splits one file in time: the run names its parts by their rows, so `evaluate` does not
    call the test part the calibration data (an in-sample estimate)."""
    from trainer.cli import main

    run_dir = benchmark / "runs" / "valve1_0"
    run = json.loads((run_dir / "run.json").read_text())
    rows = len(read_skab_file(labelled_files(benchmark / "skab")[0]).values)
    train = run["skab"]["train_rows"]
    assert run["splits"]["calibration"] == [f"valve1/0 rows 0-{train - 1}"]
    assert run["splits"]["test"] == [f"valve1/0 rows {train}-{rows - 1}"]
    assert main(["evaluate", "--run", str(run_dir), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "test_note" not in metrics
    assert metrics["test"]["roc_auc"] is not None


def test_exported_bundle_scores_a_window_as_the_trainer_does(benchmark: Path, tmp_path: Path) -> None:
    keys = make_keypair(tmp_path / "keys")
    run_dir = benchmark / "runs" / "other_1"
    result = export_run(run_dir, tmp_path / "valve.bundle", precision="fp32", sign_key=keys.private_path,
                        name="skab-other-1", version="1.0.0", model_name="valve", latency_repeats=3)
    bundle = read_bundle(result.path, trusted_keys=keys.public_path, extract_to=tmp_path / "x")
    model = bundle.manifest.model("valve")
    assert model.input.channels == tuple(CHANNELS)
    inputs = load_run(run_dir)
    window = inputs.evaluation.windows[-1:]  # one raw window in physical units, as the agent sends it
    got = run_model(bundle.model_path("valve"), window)
    want = score_windows(inputs.scorer, window)
    np.testing.assert_allclose(got["score"], want.score, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["channel_error"], want.channel_error, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got["time_error"], want.time_error, rtol=1e-4, atol=1e-6)
    # a level shift of a centred channel does not move the bundle's score; one of the flow channel does
    shifted = window.copy()
    shifted[:, CHANNELS.index("Temperature")] += 5.0
    np.testing.assert_allclose(run_model(bundle.model_path("valve"), shifted)["score"], got["score"],
                               rtol=1e-4, atol=1e-6)
    flow = window.copy()
    flow[:, CHANNELS.index("Volume Flow RateRMS")] += 5.0
    assert run_model(bundle.model_path("valve"), flow)["score"][0] > 1.01 * got["score"][0]
    # threshold: margin x the 99 % quantile of the graph's own scores of the training part's windows
    from trainer.calibration import calibrate

    ort_train = run_model(bundle.model_path("valve"), inputs.calibration.windows)["score"]
    quantile = calibrate(ort_train, "percentile", 0.01, q=0.99).value
    assert model.threshold.value == pytest.approx(1.5 * quantile, rel=1e-9)
    assert model.threshold.params["margin"] == 1.5
    assert model.threshold.value == pytest.approx(inputs.run["threshold"]["value"], rel=1e-4)
    # the bundle flags the test windows as the benchmark's `end` rule flags the test rows
    evaluation = run_model(bundle.model_path("valve"), inputs.evaluation.windows)["score"]
    skab = inputs.run["skab"]["test_metrics"]
    labels = inputs.evaluation.labels
    assert int(np.sum((evaluation > model.threshold.value) & (labels == 1))) == skab["tp"]
    assert int(np.sum((evaluation > model.threshold.value) & (labels == 0))) == skab["fp"]


def test_export_runs_needs_the_vae(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_skab(tmp_path / "skab", n_files=1)
    code = run_cli(["--data-dir", str(data), "--out", str(tmp_path / "out"), "--config",
                    str(write_config(tmp_path)), "--models", "pca_t2q", "--export-runs", str(tmp_path / "r")])
    assert code == 2
    assert "include vae in --models" in capsys.readouterr().out


@pytest.mark.data
@pytest.mark.slow
def test_real_skab_file_exports_with_the_causal_rule(data_dir: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code = run_cli(["--data-dir", str(data_dir / "skab"), "--out", str(tmp_path / "out"), "--config",
                    str(write_config(tmp_path, epochs=3, train_rows=400, length=60)), "--files", "valve1/0",
                    "--models", "vae", "--export-runs", str(runs), "--export-margin", "1.5"])
    assert code == 0
    result = export_run(runs / "valve1_0", tmp_path / "valve1_0.bundle", precision="fp32",
                        latency_repeats=3)
    model = result.manifest.models[0]
    assert model.threshold.params["margin"] == 1.5
    assert result.parity.max_rel_score_error < 1e-4
    run = json.loads((runs / "valve1_0" / "run.json").read_text())
    assert run["skab"]["row_score"] == "end"
    assert model.threshold.value == pytest.approx(run["threshold"]["value"], rel=1e-4)
