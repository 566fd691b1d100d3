"""Export end to end: a tiny model trained by the real trainer -> ONNX -> signed bundle -> ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import stat
import tarfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest

pytest.importorskip("torch")

from edge_agent.bundle import BundleError, read_bundle
from export import cli
from export.pipeline import ExportResult, export_run
from export.quantize import MIN_SPEARMAN, PrecisionMeasurements, decide_precision
from export.run_dir import ExportError
from tests.support.bundles import make_keypair, run_model

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).resolve().parents[2] / "edge_agent" / "schemas" / "bundle-manifest.schema.json"
TINY_CONFIG = """
[data]
source = "synthetic"
[data.synthetic]
n_series = 8
length = 160
n_channels = 3
seed = 0
[windows]
length = 16
stride = 4
train_stride = 4
[model]
latent_dim = 3
hidden = [8, 8]
kernel_size = 3
kl_warmup_epochs = 1
[training]
epochs = 30
batch_size = 64
threads = 1
[calibration]
method = "percentile"
target_far = 0.05
[evaluation]
score = "reconstruction"
"""
REPEATS = 3  # latency repeats: the numbers are recorded, never asserted


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.config import load_config
    from trainer.run import fit_run

    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.toml"
    config.write_text(TINY_CONFIG)
    fit_run(load_config(config), root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return make_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def exported(run_dir: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("out") / "tiny.bundle"
    return export_run(run_dir, out, precision="auto", sign_key=keys.private_path, name="tiny",
                      version="1.0.0", model_name="pump", latency_repeats=REPEATS)


def test_round_trip_scores_equal_torch(exported: ExportResult, run_dir: Path, keys, tmp_path: Path) -> None:
    from export.run_dir import load_run
    from trainer.scoring import score_windows

    bundle = read_bundle(exported.path, trusted_keys=keys.public_path, extract_to=tmp_path / "x")
    assert bundle.key_id == keys.key_id
    model = bundle.manifest.model("pump")
    inputs = load_run(run_dir)
    windows = inputs.evaluation.windows
    ort_out = run_model(bundle.model_path("pump"), windows)
    torch_score = score_windows(inputs.scorer, windows).score
    if model.precision == "fp32":
        np.testing.assert_allclose(ort_out["score"], torch_score, rtol=1e-4, atol=1e-6)
    assert ort_out["channel_error"].shape == (len(windows), 3)
    assert ort_out["time_error"].shape == (len(windows), 16)
    assert ort_out["latent_mean"].shape == (len(windows), 3)
    # the reference I/O reproduces, and covers normal and top-scoring windows
    reference = bundle.reference("pump")
    again = run_model(bundle.model_path("pump"), reference["window"])
    for role in ("score", "channel_error", "latent_mean", "time_error"):
        np.testing.assert_allclose(again[role], reference[role], rtol=model.reference.rtol,
                                   atol=model.reference.atol)
    assert reference["score"][-4:].min() > np.median(reference["score"][:4])


def test_manifest_validates_and_threshold_is_recalibrated_on_ort_scores(exported: ExportResult,
                                                                       run_dir: Path, tmp_path: Path) -> None:
    from edge_agent.bundle import flatline_reference
    from trainer.calibration import calibrate

    bundle = read_bundle(exported.path, extract_to=tmp_path / "x")
    manifest_json = json.loads((bundle.root / "manifest.json").read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(manifest_json)
    model = bundle.manifest.model("pump")
    calibration = np.load(run_dir / "calibration.npz")["windows"]
    ort_scores = run_model(bundle.model_path("pump"), calibration)["score"]
    assert model.threshold.value == pytest.approx(calibrate(ort_scores, "percentile", 0.05).value, rel=1e-9)
    assert model.input.channels == ("ch_0", "ch_1", "ch_2")
    assert [level.level for level in model.severity] == ["warning", "high", "critical"]
    assert model.severity[0].min_score == model.threshold.value
    assert len(model.drift_reference.sample_latents) == len(calibration)
    assert model.metrics["model_bytes"] == bundle.model_path("pump").stat().st_size
    # schema 2: the flat-line list from the run's normal windows (calibration + the sample of fit windows)
    assert manifest_json["schema_version"] == 2
    sample = np.load(run_dir / "train_sample.npz")["windows"]
    assert model.flatline is not None
    assert model.flatline.healthy_windows == len(calibration) + len(sample)
    expected = flatline_reference(list(model.input.channels), np.concatenate([calibration, sample]))
    assert model.flatline.channels == tuple(expected["channels"]) == ("ch_0", "ch_1", "ch_2")  # noise moves


def test_precision_decision_follows_the_guard(exported: ExportResult) -> None:
    model = exported.manifest.model("pump")
    m = model.precision_decision.measurements
    replay = decide_precision("auto", PrecisionMeasurements(m["roc_auc_fp32"], m["roc_auc_int8"],
                                                            m["spearman_int8"], m["latency_ms_fp32"],
                                                            m["latency_ms_int8"]))
    assert replay.chosen == model.precision
    assert replay.reason == model.precision_decision.reason
    assert m["roc_auc_int8"] is not None


@pytest.mark.parametrize("member", ["manifest.json", "signature", "models/pump.onnx", "reference/pump.npz"])
def test_bit_flip_in_any_member_fails_verification(exported: ExportResult, keys, tmp_path: Path,
                                                   member: str) -> None:
    with tarfile.open(exported.path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    data = bytearray(members[member])
    data[len(data) // 2] ^= 0x01
    members[member] = bytes(data)
    flipped = tmp_path / "flipped.bundle"
    with tarfile.open(flipped, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, __import__("io").BytesIO(content))
    with pytest.raises(BundleError):
        read_bundle(flipped, trusted_keys=keys.public_path, extract_to=tmp_path / "x")


def test_int8_guard_picks_fp32_when_int8_loses_accuracy(run_dir: Path, tmp_path: Path) -> None:
    """One encoder channel gets a huge bias whose output the next layer ignores: fp32 is unchanged, but
    the int8 activation range of that tensor swallows every other channel."""
    from trainer.train import load_checkpoint, save_checkpoint

    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    vae, metadata = load_checkpoint(broken / "checkpoint.pt")
    import torch

    with torch.no_grad():
        vae.encoder[0].bias[0] = 1e4
        vae.encoder[2].weight[:, 0, :] = 0.0
    save_checkpoint(broken / "checkpoint.pt", vae, metadata)
    auto = export_run(broken, tmp_path / "auto.bundle", precision="auto", latency_repeats=REPEATS)
    assert auto.decision.chosen == "fp32"
    assert "Spearman vs fp32" in auto.decision.reason
    assert auto.measurements.spearman_int8 is not None
    assert auto.measurements.spearman_int8 < 0.99
    forced = export_run(broken, tmp_path / "forced.bundle", precision="int8", latency_repeats=REPEATS)
    assert forced.manifest.model(forced.manifest.models[0].name).precision == "int8"
    assert forced.measurements.spearman_int8 is not None
    assert "int8 requested (guard:" in forced.decision.reason
    assert forced.measurements.to_dict()["roc_auc_drop"] is not None


def test_a_tcn_run_exports_and_onnx_runtime_agrees_with_torch(keys, tmp_path: Path) -> None:
    from export.run_dir import load_run
    from trainer.config import load_config
    from trainer.run import fit_run
    from trainer.scoring import score_windows

    config = tmp_path / "tcn.toml"
    config.write_text(TINY_CONFIG.replace("hidden = [8, 8]",
                                          'kind = "tcn_vae"\nhidden = [8]\ndilations = [1, 2]'))
    fit_run(load_config(config), tmp_path / "run", progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["model_shape"]["kind"] == "tcn_vae"
    assert run["model_shape"]["dilations"] == [1, 2]
    result = export_run(tmp_path / "run", tmp_path / "tcn.bundle", precision="auto",
                        sign_key=keys.private_path, model_name="pump", latency_repeats=REPEATS)
    model = result.manifest.model("pump")
    assert model.precision_decision.measurements["roc_auc_int8"] is not None  # int8 was built and measured
    bundle = read_bundle(result.path, trusted_keys=keys.public_path, extract_to=tmp_path / "x")
    windows = load_run(tmp_path / "run").evaluation.windows
    ort_out = run_model(bundle.model_path("pump"), windows)
    torch_score = score_windows(load_run(tmp_path / "run").scorer, windows).score
    if model.precision == "fp32":
        np.testing.assert_allclose(ort_out["score"], torch_score, rtol=1e-4, atol=1e-6)
    else:  # int8: the guard's rank agreement held
        assert model.precision_decision.measurements["spearman_int8"] >= MIN_SPEARMAN
    assert ort_out["channel_error"].shape == (len(windows), 3)
    assert ort_out["time_error"].shape == (len(windows), 16)
    # the config's kind is checked against the checkpoint's
    text = (tmp_path / "run" / "config.toml").read_text()
    (tmp_path / "run" / "config.toml").write_text(text.replace('kind = "tcn_vae"', 'kind = "conv_vae"')
                                                  .replace("dilations = [1, 2]\n", ""))
    with pytest.raises(ExportError,
                       match=r"model\.kind: config\.toml says conv_vae, the checkpoint has tcn_vae"):
        export_run(tmp_path / "run", tmp_path / "again.bundle")


def _no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_and_partial_run_dirs(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.bundle"
    with pytest.raises(ExportError, match="run directory not found"):
        export_run(tmp_path / "nope", out)
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "calibration.npz").unlink()
    with pytest.raises(ExportError, match=r"incomplete run directory, missing calibration\.npz"):
        export_run(partial, out)
    _no_output(out)


def test_checkpoint_not_matching_config(run_dir: Path, tmp_path: Path) -> None:
    mismatched = tmp_path / "mismatched"
    shutil.copytree(run_dir, mismatched)
    config = (mismatched / "config.toml").read_text().replace("latent_dim = 3", "latent_dim = 4")
    (mismatched / "config.toml").write_text(config)
    out = tmp_path / "x.bundle"
    with pytest.raises(ExportError, match=r"checkpoint does not match its config: model\.latent_dim: "
                                          r"config\.toml says 4, the checkpoint has 3"):
        export_run(mismatched, out)
    run = json.loads((mismatched / "run.json").read_text())
    run["window_length"] = 20
    (mismatched / "run.json").write_text(json.dumps(run))
    with pytest.raises(ExportError, match=r"window_length: checkpoint has 16, run\.json has 20"):
        export_run(mismatched, out)
    _no_output(out)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sample_period_s", 0, "sample_period_s must be a positive number of seconds"),
    ("sample_period_s", "1", "sample_period_s must be a positive number of seconds"),
    ("stride", 0, "stride must be a positive integer"),
    ("window_length", 16.0, "window_length must be a positive integer"),
    ("input_channels", [], "input_channels must be a non-empty list of channel names"),
])
def test_bad_run_values_are_named_before_any_work(run_dir: Path, tmp_path: Path, key: str, value: object,
                                                  message: str) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(run_dir, changed)
    run = json.loads((changed / "run.json").read_text())
    run[key] = value
    (changed / "run.json").write_text(json.dumps(run))
    out = tmp_path / "x.bundle"
    with pytest.raises(ExportError, match=rf"run\.json: {message}"):
        export_run(changed, out)
    _no_output(out)


def test_detrend_channels_must_name_model_channels_and_match_the_checkpoint(run_dir: Path,
                                                                            tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(run_dir, changed)
    run = json.loads((changed / "run.json").read_text())
    run["detrend_channels"] = ["ch_1"]
    (changed / "run.json").write_text(json.dumps(run))
    out = tmp_path / "x.bundle"
    with pytest.raises(ExportError, match=r'detrend_channels: checkpoint has \[\], run\.json has \["ch_1"\]'):
        export_run(changed, out)
    # a checkpoint without the key (older runs): run.json decides, and its names are checked
    from export.run_dir import load_run
    from trainer.train import load_checkpoint, save_checkpoint

    vae, metadata = load_checkpoint(changed / "checkpoint.pt")
    metadata.pop("detrend_channels")
    save_checkpoint(changed / "checkpoint.pt", vae, metadata)

    assert load_run(changed).scorer.detrend.tolist() == [0.0, 1.0, 0.0]
    run["detrend_channels"] = ["flow"]
    (changed / "run.json").write_text(json.dumps(run))
    with pytest.raises(ExportError, match=r"detrend_channels: \['flow'\] not among the model channels"):
        export_run(changed, out)
    _no_output(out)


def test_bad_keys_and_existing_output(run_dir: Path, keys, tmp_path: Path) -> None:
    out = tmp_path / "x.bundle"
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(BundleError, match="not an unencrypted PEM private key"):
        export_run(run_dir, out, sign_key=garbage)
    with pytest.raises(BundleError, match="not an unencrypted PEM private key"):
        export_run(run_dir, out, sign_key=keys.public_path)  # a public key is the wrong key
    with pytest.raises(BundleError, match="cannot read private key"):
        export_run(run_dir, out, sign_key=tmp_path / "absent.key")
    _no_output(out)
    out.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_run(run_dir, out)
    assert out.read_bytes() == b"keep me"


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-trainer")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_keygen_and_export(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("keygen", "--out", str(tmp_path / "keys")) == 0
    assert stat.S_IMODE((tmp_path / "keys" / "signing.key").stat().st_mode) == 0o600
    assert _cli("keygen", "--out", str(tmp_path / "keys")) == 1
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "cli.bundle"
    assert _cli("export", "--run", str(run_dir), "--out", str(out), "--precision", "fp32", "--sign-key",
                str(tmp_path / "keys" / "signing.key"), "--name", "cli", "--version", "2",
                "--latency-repeats", str(REPEATS)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["precision"] == "fp32"
    assert summary["reason"] == "fp32 requested"
    assert summary["flatline"] == {"channels": ["ch_0", "ch_1", "ch_2"], "left_out": []}
    bundle = read_bundle(out, trusted_keys=tmp_path / "keys", extract_to=tmp_path / "x")
    assert (bundle.manifest.name, bundle.manifest.version) == ("cli", "2")
    assert _cli("export", "--run", str(run_dir), "--out", str(out)) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_export_warns_about_what_a_gateway_will_refuse_or_need(
        run_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Unsigned, and with the model named after the data source: both legal, both worth a warning."""
    caplog.set_level(logging.WARNING, logger="export.cli")
    assert _cli("export", "--run", str(run_dir), "--out", str(tmp_path / "u.bundle"), "--precision", "fp32",
                "--latency-repeats", str(REPEATS)) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("the bundle is not signed: a gateway refuses it unless") for w in warnings)
    assert any("(the run's data source, the default)" in w and "--model-name" in w for w in warnings)
    caplog.clear()
    assert _cli("export", "--run", str(run_dir), "--out", str(tmp_path / "n.bundle"), "--precision", "fp32",
                "--model-name", "pump", "--latency-repeats", str(REPEATS)) == 0
    assert not any("--model-name" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("argv", "message"), [
    (["--version", "1" * 65], "argument --version: '1111"),
    (["--name", "pump line 3"], "argument --name: 'pump line 3': 1-128 characters"),
    (["--latency-repeats", "0"], "argument --latency-repeats: must be at least 1, got 0"),
])
def test_cli_refuses_bad_arguments_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        _cli("export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "b.bundle"), *argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_device_profile_it_does_not_know(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt name used to be a warning, and the bundle it wrote was refused by every gateway with a real
    profile: it is an argument error naming the known profiles, before any work."""
    with pytest.raises(SystemExit) as info:
        _cli("export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "b.bundle"),
             "--device-profile", "x86-64-ipc", "--device-profile", "jetson-orin-nan")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device-profile: 'jetson-orin-nan': no such device profile (known: " in err
    for known in ("jetson-orin", "x86-64-ipc", "generic or any: every gateway"):
        assert known in err
    assert "give the path of its file" in err
    # known names pass the check; the missing run directory is what fails then
    assert _cli("export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "b.bundle"),
                "--device-profile", "x86-64-ipc", "--device-profile", "generic") == 1
    assert "run directory not found" in capsys.readouterr().err
    assert not (tmp_path / "b.bundle").exists()



def test_guard_decides_on_validation_and_test_auc_is_only_measured(exported: ExportResult,
                                                                   run_dir: Path) -> None:
    from export.run_dir import load_run
    from trainer.run import adjusted_scores, auc_or_none
    from trainer.scoring import score_windows

    model = exported.manifest.model("pump")
    measured = model.precision_decision.measurements
    assert measured["guard_set"] == "validation"  # the synthetic validation series hold both classes
    assert measured["int8_calibration"] == "train_sample.npz"
    inputs = load_run(run_dir)
    assert inputs.guard is inputs.validation
    with np.load(run_dir / "validation.npz") as blob:
        assert measured["guard_windows"] == len(blob["windows"])
    assert model.metrics["guard_set"] == "validation"
    assert model.metrics["guard_roc_auc_fp32"] == measured["roc_auc_fp32"]

    def torch_auc(data) -> float | None:  # type: ignore[no-untyped-def]
        raw = score_windows(inputs.scorer, data.windows).score
        return auc_or_none(data.labels, adjusted_scores(raw, data.series, inputs.run["score_baseline"]))

    # the guard measured validation; the metrics' roc_auc_fp32 is the test set's, for the record
    assert measured["roc_auc_fp32"] == pytest.approx(torch_auc(inputs.validation), abs=1e-3)
    assert model.metrics["roc_auc_fp32"] == pytest.approx(torch_auc(inputs.evaluation), abs=1e-3)
    assert model.metrics["roc_auc"] == model.metrics[f"roc_auc_{model.precision}"]


def test_old_run_dirs_fall_back_with_a_warning(run_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from export.run_dir import load_run

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for name in ("train_sample.npz", "validation.npz", "config.toml"):
        (old / name).unlink()
    run = json.loads((old / "run.json").read_text())
    run["validation_scores"] = run.pop("calibration_scores")  # the key's name before the rename
    assert run.pop("detrend_channels") == []  # runs from before the centring mask lack the key
    # runs from before the model kinds name no kind or dilations, in run.json or in the checkpoint
    assert (run["model_shape"].pop("kind"), run["model_shape"].pop("dilations")) == ("conv_vae", [1, 2, 4, 8])
    (old / "run.json").write_text(json.dumps(run))
    import torch

    blob = torch.load(old / "checkpoint.pt", weights_only=True)
    blob["shape"] = json.dumps(run["model_shape"])
    torch.save(blob, old / "checkpoint.pt")
    with caplog.at_level("WARNING", logger="export.run_dir"):
        inputs = load_run(old)
    assert not inputs.scorer.centred
    assert inputs.calibration_settings.margin == 1.0
    assert inputs.quant_calibration_source == "calibration.npz"
    assert inputs.quant_calibration is inputs.calibration
    assert inputs.guard_set == "evaluation"
    assert inputs.calibration_scores == run["validation_scores"]
    assert "no train_sample.npz" in caplog.text
    assert "falls back to the evaluation (test) windows" in caplog.text
    # without config.toml the method's inputs come back from run.json's threshold params
    assert inputs.calibration_settings.method == "percentile"
    assert inputs.calibration_settings.target_far == pytest.approx(0.05)
    assert inputs.calibration_settings.params == {}  # q = 1 - target rate: derived, not a given parameter
    result = export_run(old, tmp_path / "old.bundle", precision="fp32", latency_repeats=REPEATS)
    model = result.manifest.model(result.manifest.models[0].name)
    assert model.precision_decision.measurements["guard_set"] == "evaluation"
    assert model.threshold.method == "percentile"


def test_a_run_with_normal_windows_only_keeps_fp32_and_says_why(run_dir: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A plant's own history has no labelled faults: no ROC-AUC can guard int8, so auto keeps fp32."""
    normal = tmp_path / "normal"
    shutil.copytree(run_dir, normal)
    for name in ("validation.npz", "evaluation.npz"):
        with np.load(normal / name) as blob:
            arrays = {key: blob[key] for key in blob.files}
        if "labels" in arrays:
            arrays["labels"] = np.zeros_like(arrays["labels"])
        np.savez(normal / name, **arrays)
    with caplog.at_level("INFO", logger="export.run_dir"):
        result = export_run(normal, tmp_path / "normal.bundle", precision="auto", latency_repeats=REPEATS)
    assert "no labelled windows of both classes" in caplog.text
    assert "falls back to the evaluation (test) windows" not in caplog.text
    model = result.manifest.model(result.manifest.models[0].name)
    assert model.precision == "fp32"
    assert "ROC-AUC could not be measured" in model.precision_decision.reason


def test_int8_with_nothing_to_quantise_falls_back_to_fp32(run_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import export.pipeline

    def nothing_to_quantise(fp32_path: Path, out_path: Path, windows: np.ndarray) -> None:
        raise ExportError(f"{fp32_path}: no Conv/ConvTranspose/Gemm/MatMul nodes inside the network")

    monkeypatch.setattr(export.pipeline, "quantize_int8", nothing_to_quantise)
    auto = export_run(run_dir, tmp_path / "auto.bundle", precision="auto", latency_repeats=REPEATS)
    assert auto.decision.chosen == "fp32"
    assert auto.decision.reason.startswith("int8 quantisation failed:")
    assert "no Conv" in auto.manifest.model(auto.manifest.models[0].name).precision_decision.reason
    with pytest.raises(ExportError, match=r"int8 quantisation failed: .*no Conv"):
        export_run(run_dir, tmp_path / "forced.bundle", precision="int8", latency_repeats=REPEATS)
    _no_output(tmp_path / "forced.bundle")


def test_garbage_checkpoint_is_a_clean_export_error(run_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.integration.test_trainer_cli import garbage_checkpoint

    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    for kind in ("empty", "text", "hostile"):
        (broken / "checkpoint.pt").write_bytes(garbage_checkpoint(kind))
        out = tmp_path / f"{kind}.bundle"
        assert _cli("export", "--run", str(broken), "--out", str(out)) == 1
        err = capsys.readouterr().err
        assert f"{broken / 'checkpoint.pt'}: cannot load checkpoint" in err
        assert "not a valid trainer checkpoint" in err
        _no_output(out)


def test_cli_takes_a_gateway_profile_by_path_and_names_it_after_the_file(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A gateway's own profile (unknown here by name) is given as its file: the manifest lists the file's
    stem, the name the gateway gives the profile it loads from that file."""
    shipped = Path(__file__).resolve().parents[2] / "device_profiles" / "x86-64-ipc.toml"
    own = tmp_path / "line2-box.toml"
    own.write_text(shipped.read_text())
    out = tmp_path / "own.bundle"
    assert _cli("export", "--run", str(run_dir), "--out", str(out), "--precision", "fp32",
                "--latency-repeats", str(REPEATS), "--device-profile", str(own),
                "--device-profile", "jetson-orin") == 0
    capsys.readouterr()
    bundle = read_bundle(out, extract_to=tmp_path / "x")  # unsigned: no keys to check
    assert bundle.manifest.compatibility.device_profiles == ("line2-box", "jetson-orin")
    # a profile file is checked as strictly as the gateway checks it
    broken = tmp_path / "broken.toml"
    broken.write_text(shipped.read_text().replace("min_cpus", "min_cpu"))
    for profile, message in ((str(broken), f"{broken}: min_cpu: unknown key"),
                             (str(tmp_path / "absent.toml"), "absent.toml does not exist")):
        with pytest.raises(SystemExit):
            _cli("export", "--run", str(run_dir), "--out", str(tmp_path / "b.bundle"),
                 "--device-profile", profile)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b.bundle").exists()
