"""Strict manifest parsing, and agreement with the published JSON Schema."""

from __future__ import annotations

import copy
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from edge_agent.bundle import BundleFormatError, Manifest, UnsupportedSchemaError, default_severity
from tests.support.bundles import build_test_bundle

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "edge_agent" / "schemas" / "bundle-manifest.schema.json"


@pytest.fixture(scope="module")
def manifest_dict(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = build_test_bundle(tmp_path_factory.mktemp("bundle"))
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        return json.load(handle)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def test_written_manifest_validates_against_the_schema(manifest_dict, validator) -> None:
    validator.validate(manifest_dict)


def test_round_trip_is_lossless(manifest_dict) -> None:
    manifest = Manifest.from_dict(manifest_dict)
    assert manifest.to_dict() == manifest_dict
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    model = manifest.model("pump")
    assert model.input.shape == (3, 32)
    assert model.root_cause.channels == model.input.channels
    drift = model.drift_reference.arrays()
    assert drift["latent_cov"].shape == (3, 3)
    assert drift["sample_latents"].shape == (256, 3)


def test_unknown_model_name_lists_the_known_ones(manifest_dict) -> None:
    with pytest.raises(KeyError, match="models: pump"):
        Manifest.from_dict(manifest_dict).model("fan")


def test_severity_for_picks_the_highest_level_reached(manifest_dict) -> None:
    model = Manifest.from_dict(manifest_dict).model("pump")
    warning, high, critical = (level.min_score for level in model.severity)
    assert model.severity_for(warning * 0.99) is None
    assert model.severity_for(warning) == "warning"
    assert model.severity_for((high + critical) / 2) == "high"
    assert model.severity_for(critical * 10) == "critical"


def test_default_severity_rule() -> None:
    ladder = default_severity(2.0, {"0.999": 4.0})
    assert ladder == [{"level": "warning", "min_score": 2.0}, {"level": "high", "min_score": 4.0},
                      {"level": "critical", "min_score": 8.0}]
    assert default_severity(2.0, {"0.999": 1.0})[1]["min_score"] == 3.0


def _model(d: dict[str, Any]) -> dict[str, Any]:
    return d["models"][0]


Mutation = Callable[[dict[str, Any]], None]

# (mutation, key path named in the error, message fragment, does the JSON Schema also reject it?)
INVALID: list[tuple[str, Mutation, str, str, bool]] = [
    ("unknown key", lambda d: _model(d)["input"].update(colour="red"),
     "models -> 0 -> input -> colour", "unknown key", True),
    ("wrong type", lambda d: _model(d)["input"].update(window_length="32"),
     "models -> 0 -> input -> window_length", "expected an integer", True),
    ("missing key", lambda d: _model(d).pop("debounce"), "models -> 0 -> debounce", "required", True),
    ("reserved modality", lambda d: _model(d).update(modality="image"),
     "models -> 0 -> modality", "reserved", True),
    ("unknown modality", lambda d: _model(d).update(modality="smell"),
     "models -> 0 -> modality", "must be one of", True),
    ("bad sha256", lambda d: _model(d).update(sha256="ABC"), "models -> 0 -> sha256", "64 lowercase hex",
     True),
    ("bad precision", lambda d: _model(d).update(precision="fp16"), "models -> 0 -> precision", "one of",
     True),
    ("non-UTC time", lambda d: d.update(created_at="2026-01-01T00:00:00+02:00"), "created_at", "UTC", True),
    ("unsafe file name", lambda d: d["files"].update({"../x": "0" * 64}), "files -> ../x", "..", True),
    ("bad bundle name", lambda d: d.update(name="a b"), "name", "letters, digits", True),
    # a version names the gateway's directory for the bundle, where at most 64 characters fit
    ("version too long", lambda d: d.update(version="1" * 65), "version", "1-64 characters", True),
    ("no models", lambda d: d.update(models=[]), "models", "at least one", True),
    ("negative stride", lambda d: _model(d)["input"].update(stride=0), "models -> 0 -> input -> stride",
     "at least 1", True),
    ("NaN metric", lambda d: _model(d)["metrics"].update(roc_auc_fp32=float("nan")),
     "models -> 0 -> metrics -> roc_auc_fp32", "finite", False),
    ("units per channel", lambda d: _model(d)["input"].update(units=["bar"]), "models -> 0 -> input -> units",
     "one entry", False),
    ("duplicate channel", lambda d: _model(d)["input"].update(channels=["a", "a", "b"]),
     "models -> 0 -> input -> channels -> 1", "duplicate", True),
    ("severity order", lambda d: _model(d)["severity"].reverse(), "models -> 0 -> severity -> 1 -> min_score",
     "ascending", False),
    ("k > n", lambda d: _model(d)["debounce"].update(k=5, n=3), "models -> 0 -> debounce -> k",
     "at most 3", False),
    ("model file not listed", lambda d: _model(d).update(file="models/other.onnx"), "models -> 0 -> file",
     "listed in files", False),
    ("root cause channels", lambda d: _model(d)["root_cause"]["channels"].reverse(),
     "models -> 0 -> root_cause -> channels", "must equal input", False),
    ("quantiles decrease", lambda d: _model(d)["score_quantiles"].update({"0.999": 0.0}),
     "models -> 0 -> score_quantiles -> 0.999", "must not decrease", False),
    ("cov shape", lambda d: _model(d)["drift_reference"]["latent_cov"].pop(),
     "models -> 0 -> drift_reference -> latent_cov", "3 x 3", False),
    ("chosen != precision", lambda d: _model(d)["precision_decision"].update(chosen="int8"),
     "models -> 0 -> precision_decision -> chosen", "must equal", False),
]


@pytest.mark.parametrize(("mutate", "path", "message", "schema_rejects"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_manifests_name_the_key_path(manifest_dict, validator, mutate: Mutation, path: str,
                                            message: str, schema_rejects: bool) -> None:
    data = copy.deepcopy(manifest_dict)
    mutate(data)
    with pytest.raises(BundleFormatError) as info:
        Manifest.from_dict(data, bundle="b.bundle")
    assert info.value.path == path
    assert message in str(info.value)
    assert str(info.value).startswith("b.bundle: manifest.json: ")
    if schema_rejects:
        assert not validator.is_valid(data)


def test_unknown_schema_version_is_its_own_error(manifest_dict, validator) -> None:
    data = copy.deepcopy(manifest_dict)
    data["schema_version"] = 3
    with pytest.raises(UnsupportedSchemaError, match="unsupported schema_version 3: this code reads "
                                                     "schema_version 1 and 2"):
        Manifest.from_dict(data)
    assert not validator.is_valid(data)


def test_version_2_lists_the_flatline_channels_and_version_1_has_none(manifest_dict, validator) -> None:
    """Export writes version 2 with `flatline`; a version 1 manifest (older bundles) is still read, without
    a flat-line check, and round-trips without the key. Each version refuses the other's form."""
    assert manifest_dict["schema_version"] == 2
    flatline = Manifest.from_dict(manifest_dict).model("pump").flatline
    assert flatline is not None
    assert flatline.channels == ("pressure", "flow", "vibration")  # noise in every normal window
    assert flatline.healthy_windows == 512

    old = copy.deepcopy(manifest_dict)
    old["schema_version"] = 1
    del _model(old)["flatline"]
    validator.validate(old)
    parsed = Manifest.from_dict(old)
    assert parsed.model("pump").flatline is None
    assert parsed.to_dict() == old

    mixed = copy.deepcopy(old)
    _model(mixed)["flatline"] = _model(manifest_dict)["flatline"]
    with pytest.raises(BundleFormatError,
                       match=r"models -> 0 -> flatline: needs schema_version 2 \(this manifest says 1\)"):
        Manifest.from_dict(mixed)
    assert not validator.is_valid(mixed)
    missing = copy.deepcopy(manifest_dict)
    del _model(missing)["flatline"]
    with pytest.raises(BundleFormatError, match=r"models -> 0 -> flatline"):
        Manifest.from_dict(missing)
    assert not validator.is_valid(missing)


@pytest.mark.parametrize(("channels", "problem"), [
    (["pressure", "torque"], r"names \['torque'\], which are not input channels"),
    (["flow", "pressure"], "must list input channels once each, in input order"),
    (["flow", "flow"], "must list input channels once each, in input order"),
])
def test_flatline_channels_must_be_input_channels_in_order(manifest_dict, channels, problem) -> None:
    data = copy.deepcopy(manifest_dict)
    _model(data)["flatline"]["channels"] = channels
    with pytest.raises(BundleFormatError, match=r"models -> 0 -> flatline -> channels: " + problem):
        Manifest.from_dict(data)


def test_flatline_reference_leaves_out_channels_that_hold_still_for_over_half_a_window() -> None:
    from edge_agent.bundle import flatline_reference

    rng = np.random.default_rng(0)
    windows = rng.normal(size=(20, 5, 16))
    windows[7, 1, :] = 4.0  # b held still for a whole window once (a setpoint, a slow reading)
    windows[3, 2, 4:12] = 1.0  # c held one value for 8 samples = half a window: still checked
    windows[9, 3, 3:12] = 1.0  # d for 9: a flat window would be less than twice that, so d is left out
    windows[:, 4, :] = rng.integers(0, 2, size=(20, 16)) * 40.0 + 60.0  # e: a two-valued setting
    windows[5, 4, :] = np.r_[np.full(12, 100.0), np.full(4, 60.0)]  # ... that once held 100 for 12 samples
    assert flatline_reference(["a", "b", "c", "d", "e"], windows) == {"channels": ["a", "c"],
                                                                      "healthy_windows": 20}
    assert flatline_reference(["a", "b"], windows[:0, :2]) == {"channels": [], "healthy_windows": 0}


def test_null_baseline_and_per_asset_baseline(manifest_dict, validator) -> None:
    data = copy.deepcopy(manifest_dict)
    _model(data)["score_baseline"] = {"kind": "per_asset_initial", "windows": 20, "statistic": "median"}
    baseline = Manifest.from_dict(data).model("pump").score_baseline
    assert baseline is not None
    assert baseline.windows == 20
    validator.validate(data)


def test_test_bundle_overrides_replace_model_or_top_level_values(tmp_path: Path) -> None:
    path = build_test_bundle(tmp_path, channels=["a", "b"], window_length=8, stride=4,
                             debounce={"k": 1, "n": 1, "clear_windows": 2},
                             created_at="2026-01-01T00:00:00Z")
    with tarfile.open(path) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        manifest = Manifest.from_dict(json.load(handle))
    assert manifest.created_at == "2026-01-01T00:00:00Z"
    assert manifest.model("pump").debounce.clear_windows == 2
    with pytest.raises(TypeError, match="unknown override 'colour'"):
        build_test_bundle(tmp_path / "other", colour="red")
