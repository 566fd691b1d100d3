"""Trainer TOML configs: the shipped ones parse; unknown keys and bad values are errors naming the key
path."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.configtools import ConfigError
from trainer.config import load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "trainer" / "configs"


@pytest.mark.parametrize("name", ["cmapss_fd001.toml", "cmapss_fd002.toml", "synthetic.toml", "skab.toml"])
def test_shipped_configs_parse(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.source_path.endswith(name)
    assert config.windows.length >= 2 ** len(config.model.hidden)


def test_cmapss_configs_follow_the_protocol() -> None:
    fd001, fd002 = load_config(CONFIGS / "cmapss_fd001.toml"), load_config(CONFIGS / "cmapss_fd002.toml")
    assert fd001.data.cmapss is not None
    assert fd002.data.cmapss is not None
    assert (fd001.data.cmapss.n_regimes, fd002.data.cmapss.n_regimes) == (1, 6)
    assert fd001.windows.length == 50
    assert fd001.windows.stride == 1
    assert fd001.data.cmapss.label_rul == 30


def _minimal() -> dict:
    return {
        "data": {"source": "synthetic", "synthetic": {"n_series": 8}},
        "model": {"latent_dim": 3},
        "calibration": {"method": "percentile", "params": {"q": 0.99}},
    }


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(_minimal())
    assert config.model.latent_dim == 3
    assert config.training.epochs == 40
    assert config.calibration.params == {"q": 0.99}


@pytest.mark.parametrize(
    ("patch", "path", "message"),
    [
        ({"model": {"latent_dimm": 3}}, "model -> latent_dimm", r"unknown key \(did you mean latent_dim\?\)"),
        ({"training": {"patiance": 5}}, "training -> patiance", r"unknown key \(did you mean patience\?\)"),
        ({"window": {"length": 10}}, "window", r"unknown key \(did you mean windows\?\)"),
        ({"training": {"epochs": "ten"}}, "training -> epochs", "expected an integer"),
        ({"training": {"epochs": 0}}, "training -> epochs", "must be at least 1"),
        ({"data": {"source": "parquet"}}, "data -> source", "must be one of"),
        ({"evaluation": {"score": "magic"}}, "evaluation -> score", "must be one of"),
        ({"model": {"hidden": [16, -1]}}, "model -> hidden -> 1", "expected a positive integer"),
        ({"surprise": {}}, "surprise", r"unknown key \(value"),  # nothing close: no guess
        ({"data": {"units": {"flow": 3}}}, "data -> units -> flow", "expected a string"),
        ({"data": {"val_fraction": 0.5, "calibration_fraction": 0.5}}, "data -> calibration_fraction",
         "with val_fraction 0.5 leaves under 20 % of the normal data to fit on"),
        ({"training": {"learning_rate": float("nan")}}, "training -> learning_rate",
         "expected a finite number"),
        ({"model": {"kind": "lstm_vae"}}, "model -> kind", "must be one of conv_vae, tcn_vae"),
        ({"model": {"dilations": [1, 2]}}, "model -> dilations", 'only used by kind = "tcn_vae"'),
        ({"model": {"kind": "tcn_vae", "hidden": [8, 8]}}, "model -> hidden", "tcn_vae takes one width"),
        ({"model": {"kind": "tcn_vae", "kernel_size": 4}}, "model -> kernel_size", "needs an odd kernel"),
        ({"model": {"kind": "tcn_vae", "dilations": [1, 0]}}, "model -> dilations -> 1",
         "expected a positive integer"),
    ],
)
def test_bad_values_name_the_key_path(patch: dict, path: str, message: str) -> None:
    raw = _minimal()
    for key, value in patch.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key in raw else value
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(raw, "train.toml")
    assert info.value.path == path
    assert "train.toml" in str(info.value)


def test_a_tcn_model_gets_its_defaults_and_reads_back_from_the_effective_config() -> None:
    import dataclasses

    from edge_agent.compat import tomllib
    from trainer.config import config_to_toml

    raw = _minimal()
    raw["model"] = {**raw.get("model", {}), "kind": "tcn_vae"}
    config = parse_config(raw)
    assert (config.model.hidden, config.model.kernel_size, config.model.dilations) == ((32,), 3, (1, 2, 4, 8))
    raw["model"]["dilations"] = [1, 3, 9]
    config = parse_config(raw)
    again = parse_config(tomllib.loads(config_to_toml(config)))
    assert dataclasses.replace(again, source_path=config.source_path) == config
    assert again.model.dilations == (1, 3, 9)


def test_cmapss_source_needs_a_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[data]\nsource = "cmapss"\n[data.cmapss]\nsubset = "FD001"\n')
    with pytest.raises(ConfigError, match="data -> cmapss -> data_dir: is required"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    path.write_text("[data\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


@pytest.mark.parametrize(
    ("calibration", "path", "message"),
    [
        ({"method": "magic"}, "calibration -> method", "must be one of"),
        ({"method": "pot", "params": {"q": 0.9}}, "calibration -> params -> q", "not a parameter of 'pot'"),
        ({"method": "mad", "params": {"kk": 3}}, "calibration -> params -> kk", "allowed: k"),
        ({"method": "percentile", "params": {"q": 1.0}}, "calibration -> params -> q", "less than 1"),
        ({"method": "sigma", "params": {"k": -1}}, "calibration -> params -> k", "must be"),
        ({"method": "gev", "params": {"block_size": 1}}, "calibration -> params -> block_size", "at least 2"),
        ({"method": "gev", "params": {"block_size": 2.5}}, "calibration -> params -> block_size", "integer"),
    ],
)
def test_calibration_method_and_params_are_checked_while_parsing(
    calibration: dict, path: str, message: str
) -> None:
    raw = {**_minimal(), "calibration": calibration}
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(raw, "train.toml")
    assert info.value.path == path


def test_calibration_params_table_matches_the_calibration_module() -> None:
    import numpy as np

    from trainer.calibration import METHODS, calibrate
    from trainer.config import CALIBRATION_PARAMS

    assert set(CALIBRATION_PARAMS) == set(METHODS)
    scores = np.random.default_rng(0).exponential(size=2000)
    examples = {"rate": 0.9, "positive": 3.0, "block": 20}
    for method, allowed in CALIBRATION_PARAMS.items():
        params = {key: examples[kind] for key, kind in allowed.items()}
        config = parse_config({**_minimal(), "calibration": {"method": method, "params": params}})
        assert config.calibration.params == params
        # every parameter the parser accepts is one the method accepts
        assert calibrate(scores, method, 0.01, **config.calibration.params).method == method


@pytest.mark.parametrize("name", ["cmapss_fd001.toml", "cmapss_fd002.toml", "synthetic.toml", "skab.toml"])
def test_effective_config_toml_reads_back_equal(name: str) -> None:
    import dataclasses

    from edge_agent.compat import tomllib
    from trainer.config import config_to_toml

    config = load_config(CONFIGS / name)
    again = parse_config(tomllib.loads(config_to_toml(config)))
    assert dataclasses.replace(again, source_path=config.source_path) == config


def test_benchmark_overrides_reach_the_run_config_and_protocol_changes_are_named(tmp_path: Path) -> None:
    import argparse

    from edge_agent.compat import tomllib
    from trainer.benchmarks.cmapss import benchmark_config, protocol_changes
    from trainer.config import config_to_toml

    args = argparse.Namespace(
        config=None, subset="FD001", data_dir=tmp_path / "cmapss", max_units=7, epochs=3
    )
    config = benchmark_config(args)
    written = tmp_path / "config.toml"
    written.write_text(config_to_toml(config))
    effective = load_config(written)
    assert effective.training.epochs == 3
    assert effective.data.cmapss is not None
    assert effective.data.cmapss.max_units == 7
    assert effective.data.cmapss.data_dir == str(tmp_path / "cmapss")
    assert tomllib.loads(written.read_text())["training"]["epochs"] == 3
    assert protocol_changes(config) == []
    shipped = (CONFIGS / "cmapss_fd001.toml").read_text()
    changed = tmp_path / "changed.toml"
    changed.write_text(
        shipped.replace("length = 50", "length = 40").replace("label_rul = 30", "label_rul = 20")
    )
    args.config = changed
    assert protocol_changes(benchmark_config(args)) == [
        "window_length = 40 (protocol: 50)",
        "label_rul = 20 (protocol: 30)",
    ]


def test_units_survive_the_effective_config() -> None:
    import dataclasses

    from edge_agent.compat import tomllib
    from trainer.config import config_to_toml

    raw = _minimal()
    raw["data"] = {**raw["data"], "units": {"flow": "m3/h", "temp": "degC"}}
    config = parse_config(raw, "train.toml")
    assert config.data.units == {"flow": "m3/h", "temp": "degC"}
    again = parse_config(tomllib.loads(config_to_toml(config)))
    assert dataclasses.replace(again, source_path=config.source_path) == config
