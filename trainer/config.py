"""The training config (TOML), parsed strictly: an unknown or mistyped key is an error naming its key path.

Sections: `[data]` (source = cmapss | skab | csv | synthetic, plus a sub-table for that source, and optional
`[data.units]`: a physical unit per channel, carried into the bundle), `[windows]`,
`[model]`, `[training]`, `[calibration]`, `[evaluation]`. Shipped examples live in `trainer/configs/`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.compat import tomllib
from edge_agent.configtools import ConfigError, Section

SOURCES = ("cmapss", "skab", "csv", "synthetic")
# `[model] kind`: the networks of `trainer.torch_model.MODEL_KINDS` (named here so parsing needs no torch).
MODEL_KINDS = ("conv_vae", "tcn_vae")
SCORE_CHOICES = ("auto", "reconstruction", "elbo", "latent")
BASELINES = ("none", "per_asset_initial", "auto")
# Parameters of each `trainer.calibration` method and their kind: "rate" in (0, 1), "positive" > 0, "block" an
# integer >= 2. Kept here so parsing needs no scipy; tests check it against `trainer.calibration.METHODS`.
CALIBRATION_PARAMS: dict[str, dict[str, str]] = {
    "percentile": {"q": "rate"},
    "mad": {"k": "positive"},
    "sigma": {"k": "positive"},
    "gev": {"block_size": "block"},
    "pot": {"init_quantile": "rate"},
}


@dataclass(frozen=True)
class CmapssSource:
    data_dir: str
    subset: str = "FD001"
    n_regimes: int = 1
    healthy_min_rul: int = 100  # rows with RUL >= this are "healthy" (training / calibration data)
    label_rul: int = 30  # a test window is anomalous when RUL at its last cycle < this
    max_units: int = (
        0  # 0 = all; a positive number keeps the first N train and test units (tests, smoke runs)
    )


@dataclass(frozen=True)
class SyntheticSource:
    n_series: int = 12
    length: int = 300
    n_channels: int = 4
    seed: int = 0


@dataclass(frozen=True)
class GenericSource:
    """SKAB / CSV sources: their readers live in T1's modules; the raw table is kept for them."""

    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    source: str
    cmapss: CmapssSource | None = None
    synthetic: SyntheticSource | None = None
    generic: GenericSource | None = None
    val_fraction: float = 0.15  # of normal training series/units: early stopping + score choice
    calibration_fraction: float = 0.15  # of normal training series/units: threshold calibration
    split_seed: int = 0
    # How normal CSV series are split: "series" (whole files to fit / validation / calibration), "time" (each
    # file cut into contiguous blocks: right when each file is a different asset), "auto" (series when >= 3).
    split: str = "auto"
    # Physical unit per channel ({"flow" = "m3/h"}), carried into the bundle's input spec for the gateway.
    units: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowConfig:
    length: int = 50
    stride: int = 1
    train_stride: int = 1  # stride for training windows (subsample when data is plentiful)
    sample_period_s: float = 1.0  # seconds between rows at the agent (one cycle for C-MAPSS)


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "conv_vae"
    latent_dim: int = 8
    hidden: tuple[int, ...] = (32, 64, 64)
    kernel_size: int = 5
    beta: float = 0.1
    kl_warmup_epochs: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # tcn_vae only: one residual block per dilation


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    grad_clip: float = 5.0
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class CalibrationConfig:
    method: str = "pot"
    target_far: float = 0.01
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationConfig:
    score: str = "auto"  # auto = choose the best on validation units/series
    score_baseline: str = "none"
    baseline_windows: int = 10


@dataclass(frozen=True)
class TrainerConfig:
    data: DataConfig
    windows: WindowConfig
    model: ModelConfig
    training: TrainConfig
    calibration: CalibrationConfig
    evaluation: EvaluationConfig
    source_path: str = ""


def parse_config(raw: dict[str, Any], source: str | Path | None = None) -> TrainerConfig:
    """Parse a TOML dict; errors carry the file name and the dotted key path."""
    try:
        return _parse(Section(raw))
    except ConfigError as exc:
        if source is None:
            raise
        raise exc.with_source(source) from exc


def load_config(path: str | Path) -> TrainerConfig:
    """Read and parse a TOML config file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("", "config file not found", source=path) from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError("", f"line {line}: not UTF-8 text; save the file as UTF-8", source=path) from exc
    except OSError as exc:  # a directory, no permission
        raise ConfigError("", f"cannot read the config: {exc.strerror or exc}", source=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}", source=path) from exc
    config = parse_config(raw, path)
    return TrainerConfig(
        config.data,
        config.windows,
        config.model,
        config.training,
        config.calibration,
        config.evaluation,
        str(path),
    )


def _parse(top: Section) -> TrainerConfig:
    data = _data(top.section("data", ...))
    w = top.section("windows")
    windows = WindowConfig(
        w.integer("length", 50, minimum=4),
        w.integer("stride", 1, minimum=1),
        w.integer("train_stride", 1, minimum=1),
        w.number("sample_period_s", 1.0, minimum=0, exclusive_minimum=True),
    )
    w.finish()
    m = top.section("model")
    model = _model_config(m)
    m.finish()
    t = top.section("training")
    training = TrainConfig(
        t.integer("epochs", 40, minimum=1),
        t.integer("batch_size", 128, minimum=1),
        t.number("learning_rate", 2e-3, minimum=0, exclusive_minimum=True),
        t.number("weight_decay", 1e-4, minimum=0),
        t.integer("patience", 6, minimum=1),
        t.number("grad_clip", 5.0, minimum=0, exclusive_minimum=True),
        t.integer("seed", 0),
        t.integer("threads", 2, minimum=1),
    )
    t.finish()
    c = top.section("calibration")
    method = c.choice("method", tuple(CALIBRATION_PARAMS), "pot")
    target_far = c.number("target_far", 0.01, minimum=0, maximum=1, exclusive_minimum=True)
    if target_far >= 1:  # caught here, not by `calibrate` after the whole training
        raise ConfigError(c.key_path("target_far"), "must be less than 1 (a false-alarm rate per window)",
                          target_far)
    calibration = CalibrationConfig(method, target_far, _calibration_params(c.section("params"), method))
    c.finish()
    e = top.section("evaluation")
    evaluation = EvaluationConfig(
        e.choice("score", SCORE_CHOICES, "auto"),
        e.choice("score_baseline", BASELINES, "none"),
        e.integer("baseline_windows", 10, minimum=1),
    )
    e.finish()
    top.finish()
    if model.kind == "conv_vae" and data.cmapss is not None and windows.length < 2 ** len(model.hidden):
        raise ConfigError(
            "windows -> length",
            f"must be at least {2 ** len(model.hidden)} for {len(model.hidden)} strided layers",
            windows.length,
        )
    return TrainerConfig(data, windows, model, training, calibration, evaluation)


def _calibration_params(section: Section, method: str) -> dict[str, Any]:
    """`[calibration.params]` checked against what `method` accepts (names and ranges)."""
    allowed = CALIBRATION_PARAMS[method]
    for key in section.data:
        if key not in allowed:
            raise ConfigError(
                section.key_path(key),
                f"not a parameter of {method!r} (allowed: {', '.join(allowed) or 'none'})",
                section.data[key],
            )
    params: dict[str, Any] = {}
    for key, kind in allowed.items():
        if key not in section:
            continue
        if kind == "block":
            params[key] = section.integer(key, minimum=2)
            continue
        value = section.number(key, minimum=0, exclusive_minimum=True)
        if kind == "rate" and value >= 1:
            raise ConfigError(section.key_path(key), "must be less than 1 (a quantile in (0, 1))", value)
        params[key] = value
    section.finish()
    return params


def _units(section: Section) -> dict[str, str]:
    units = {key: section.get(key, str) for key in section}
    section.finish()
    return units


def _data(d: Section) -> DataConfig:
    source = d.choice("source", SOURCES)
    cmapss = synthetic = generic = None
    if source == "cmapss":
        s = d.section("cmapss", ...)
        cmapss = CmapssSource(
            s.get("data_dir", str),
            s.choice("subset", ("FD001", "FD002", "FD003", "FD004"), "FD001"),
            s.integer("n_regimes", 1, minimum=1),
            s.integer("healthy_min_rul", 100, minimum=0),
            s.integer("label_rul", 30, minimum=1),
            s.integer("max_units", 0, minimum=0),
        )
        s.finish()
    elif source == "synthetic":
        s = d.section("synthetic")
        synthetic = SyntheticSource(
            s.integer("n_series", 12, minimum=4),
            s.integer("length", 300, minimum=16),
            s.integer("n_channels", 4, minimum=1),
            s.integer("seed", 0),
        )
        s.finish()
    else:
        s = d.section(source, ...)
        generic = GenericSource(dict(s.data))
        for key in s.data:
            s.raw(key)
    config = DataConfig(
        source,
        cmapss,
        synthetic,
        generic,
        d.number("val_fraction", 0.15, minimum=0, maximum=0.5, exclusive_minimum=True),
        d.number("calibration_fraction", 0.15, minimum=0, maximum=0.5, exclusive_minimum=True),
        d.integer("split_seed", 0),
        d.choice("split", ("auto", "series", "time"), "auto"),
        _units(d.section("units", {})),
    )
    d.finish()
    if config.val_fraction + config.calibration_fraction > 0.8:  # each may be up to 0.5
        raise ConfigError(d.key_path("calibration_fraction"), f"with val_fraction {config.val_fraction:g} "
                          "leaves under 20 % of the normal data to fit on", config.calibration_fraction)
    return config


def _model_config(m: Section) -> ModelConfig:
    kind = m.choice("kind", MODEL_KINDS, "conv_vae")
    if kind != "tcn_vae" and "dilations" in m:
        raise ConfigError(m.key_path("dilations"), 'is only used by kind = "tcn_vae"', m.raw("dilations"))
    default_hidden = (32,) if kind == "tcn_vae" else (32, 64, 64)
    model = ModelConfig(
        kind,
        m.integer("latent_dim", 8, minimum=1),
        _int_list(m, "hidden", default_hidden),
        m.integer("kernel_size", 3 if kind == "tcn_vae" else 5, minimum=1),
        m.number("beta", 0.1, minimum=0),
        m.integer("kl_warmup_epochs", 5, minimum=0),
        _int_list(m, "dilations", (1, 2, 4, 8)),
    )
    if kind == "tcn_vae" and len(model.hidden) != 1:
        raise ConfigError(m.key_path("hidden"), "tcn_vae takes one width (its residual blocks' channels)",
                          list(model.hidden))
    if kind == "tcn_vae" and model.kernel_size % 2 == 0:
        raise ConfigError(m.key_path("kernel_size"), "tcn_vae needs an odd kernel size", model.kernel_size)
    return model


def _int_list(section: Section, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    value = section.get(key, list, list(default))
    if not value:
        raise ConfigError(section.key_path(key), "must not be empty", value)
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise ConfigError(f"{section.key_path(key)} -> {i}", "expected a positive integer", item)
    return tuple(value)


def config_to_toml(config: TrainerConfig) -> str:
    """The effective config as TOML that `load_config` reads back to an equal config (the RUN_DIR's
    `config.toml`: what the run actually used, command-line overrides included)."""
    data: dict[str, Any] = {"source": config.data.source}
    if config.data.cmapss is not None:
        data["cmapss"] = asdict(config.data.cmapss)
    elif config.data.synthetic is not None:
        data["synthetic"] = asdict(config.data.synthetic)
    elif config.data.generic is not None:
        data[config.data.source] = dict(config.data.generic.options)
    for key in ("val_fraction", "calibration_fraction", "split_seed", "split"):
        data[key] = getattr(config.data, key)
    if config.data.units:
        data["units"] = dict(config.data.units)
    model = asdict(config.model)
    model["hidden"] = list(config.model.hidden)
    model["dilations"] = list(config.model.dilations)
    if config.model.kind != "tcn_vae":
        del model["dilations"]  # refused for other kinds
    calibration = {"method": config.calibration.method, "target_far": config.calibration.target_far,
                   "params": dict(config.calibration.params)}
    tables = {
        "data": data,
        "windows": asdict(config.windows),
        "model": model,
        "training": asdict(config.training),
        "calibration": calibration,
        "evaluation": asdict(config.evaluation),
    }
    header = "# Effective training config of this run (file settings plus command-line overrides)"
    if config.source_path:
        header += f"\n# from {_toml_value(config.source_path)}"
    lines = [header]
    for name, table in tables.items():
        _toml_table(lines, name, table)
    return "\n".join(lines) + "\n"


def _toml_table(lines: list[str], name: str, table: dict[str, Any]) -> None:
    lines += ["", f"[{name}]"]
    nested = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if k not in nested]
    for key, value in nested.items():
        _toml_table(lines, f"{name}.{_toml_key(key)}", value)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
