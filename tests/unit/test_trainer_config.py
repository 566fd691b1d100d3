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
        ({"model": {"latent_dimm": 3}}, "model -> latent_dimm", "unknown key"),
        ({"training": {"epochs": "ten"}}, "training -> epochs", "expected an integer"),
        ({"training": {"epochs": 0}}, "training -> epochs", "must be at least 1"),
        ({"data": {"source": "parquet"}}, "data -> source", "must be one of"),
        ({"evaluation": {"score": "magic"}}, "evaluation -> score", "must be one of"),
        ({"model": {"hidden": [16, -1]}}, "model -> hidden -> 1", "expected a positive integer"),
        ({"surprise": {}}, "surprise", "unknown key"),
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
