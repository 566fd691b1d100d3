"""Strict parsing of `manifest.json` dicts into the dataclasses of `edge_agent.bundle.manifest`.

Errors are `ConfigError`s naming the key path; `Manifest.from_dict` turns them into `BundleFormatError`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from edge_agent.bundle.errors import UnsupportedSchemaError
from edge_agent.bundle.manifest import (
    MAX_SAMPLE_LATENTS,
    MODALITIES,
    PRECISIONS,
    RESERVED_NAMES,
    SCHEMA_VERSIONS,
    SUPPORTED_MODALITIES,
    Compatibility,
    Debounce,
    DriftReference,
    Flatline,
    InputSpec,
    Manifest,
    ModelSpec,
    OutputNames,
    PrecisionDecision,
    ReferenceSpec,
    RootCause,
    ScoreBaseline,
    SeverityLevel,
    ThresholdSpec,
    TrainerInfo,
    check_member_name,
)
from edge_agent.compat import parse_iso8601
from edge_agent.configtools import ConfigError, Section, check_type, join

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
# a version names the gateway's directory of that bundle (`BundleStore`): the store takes at most 64
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _name(section: Section, key: str, pattern: re.Pattern[str] = NAME_RE, most: int = 128) -> str:
    """A name (or, with `VERSION_RE` and 64, a version): letters, digits, . _ + -, used in paths."""
    value = section.get(key, str)
    if not pattern.match(value):
        raise ConfigError(section.key_path(key), f"must be 1-{most} characters of letters, digits, . _ + - "
                          "starting with a letter or digit", value)
    return value


def _sha256(section: Section, key: str) -> str:
    value = section.get(key, str)
    if not _SHA256_RE.match(value):
        raise ConfigError(section.key_path(key), "must be 64 lowercase hex digits (SHA-256)", value)
    return value


def _finite(value: Any, path: str) -> float:
    number = check_type(value, float, path)
    if not math.isfinite(number):
        raise ConfigError(path, "must be a finite number", value)
    return number


def _floats(value: Any, path: str) -> tuple[float, ...]:
    items = check_type(value, list, path)
    return tuple(_finite(v, join(path, i)) for i, v in enumerate(items))


def _matrix(value: Any, path: str, width: int) -> tuple[tuple[float, ...], ...]:
    rows = check_type(value, list, path)
    result = []
    for i, row in enumerate(rows):
        parsed = _floats(row, join(path, i))
        if len(parsed) != width:
            raise ConfigError(join(path, i), f"must have {width} entries (the latent size)", len(parsed))
        result.append(parsed)
    return tuple(result)


def _sub(section: Section, key: str) -> Section:
    """A required sub-table (Section.section would treat a missing one as empty)."""
    return Section(section.raw(key), section.key_path(key))


def _json_object(section: Section, key: str) -> dict[str, Any]:
    return dict(section.get(key, dict))


def parse_manifest(data: Any) -> Manifest:
    top = Section(data)
    schema = top.raw("schema_version")
    if schema not in SCHEMA_VERSIONS or isinstance(schema, bool):
        raise UnsupportedSchemaError(f"unsupported schema_version {schema!r}: this code reads "
                                     f"schema_version {' and '.join(map(str, SCHEMA_VERSIONS))}")
    created_at = top.get("created_at", str)
    try:
        stamp = parse_iso8601(created_at)
    except ValueError as exc:
        raise ConfigError("created_at", "must be an RFC 3339 timestamp", created_at) from exc
    if not created_at.endswith("Z") or stamp.utcoffset() != timedelta(0) or "T" not in created_at:
        raise ConfigError("created_at", "must be RFC 3339 in UTC, e.g. 2026-01-31T12:00:00Z", created_at)
    trainer_s = _sub(top, "trainer")
    trainer = TrainerInfo(trainer_s.get("version", str), trainer_s.optional("git_commit", str))
    trainer_s.finish()
    compat_s = _sub(top, "compatibility")
    compatibility = Compatibility(compat_s.get("min_onnxruntime", str), compat_s.integer("opset", minimum=1),
                                  compat_s.str_list("device_profiles"))
    compat_s.finish()
    files_s = _sub(top, "files")
    files = {}
    for arcname in files_s.data:
        problem = check_member_name(arcname)
        if problem or arcname in RESERVED_NAMES:
            raise ConfigError(files_s.key_path(arcname), problem or "is reserved and cannot be listed")
        files[arcname] = _sha256(files_s, arcname)
    files_s.finish()
    raw_models = top.get("models", list)
    if not raw_models:
        raise ConfigError("models", "must list at least one model")
    models = tuple(_parse_model(item, join("models", i), files, schema) for i, item in enumerate(raw_models))
    names = [m.name for m in models]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(join(join("models", i), "name"), "duplicate model name", name)
    bundle_name, version = _name(top, "name"), _name(top, "version", VERSION_RE, 64)
    manifest = Manifest(int(schema), bundle_name, version, created_at, trainer, compatibility, files, models)
    top.finish()
    return manifest


def _parse_model(data: Any, path: str, files: Mapping[str, str], schema: int) -> ModelSpec:
    s = Section(data, path)
    modality = s.choice("modality", MODALITIES)
    if modality not in SUPPORTED_MODALITIES:
        raise ConfigError(s.key_path("modality"), "is reserved for a later schema; this version supports "
                          f"only {', '.join(SUPPORTED_MODALITIES)}", modality)
    file, sha = s.get("file", str), _sha256(s, "sha256")
    if files.get(file) != sha:
        raise ConfigError(s.key_path("file"), "must be listed in files with the same sha256", file)
    precision = s.choice("precision", PRECISIONS)
    inp = _parse_input(_sub(s, "input"))
    outputs_s = _sub(s, "outputs")
    outputs = OutputNames(*(outputs_s.get(k, str) for k in ("score", "channel_error", "latent_mean",
                                                             "time_error")))
    outputs_s.finish()
    model = ModelSpec(
        name=_name(s, "name"), modality=modality, file=file, sha256=sha, opset=s.integer("opset", minimum=1),
        precision=precision, precision_decision=_parse_decision(_sub(s, "precision_decision"), precision),
        input=inp, outputs=outputs, threshold=_parse_threshold(_sub(s, "threshold")),
        score_quantiles=_parse_quantiles(_sub(s, "score_quantiles")),
        severity=_parse_severity(s.get("severity", list), s.key_path("severity")),
        debounce=_parse_debounce(_sub(s, "debounce")),
        score_baseline=_parse_baseline(s.raw("score_baseline"), s.key_path("score_baseline")),
        drift_reference=_parse_drift(_sub(s, "drift_reference")),
        root_cause=_parse_root_cause(_sub(s, "root_cause"), inp.channels),
        reference=_parse_reference(_sub(s, "reference"), files),
        metrics=_parse_metrics(_sub(s, "metrics")),
        flatline=_parse_flatline(_sub(s, "flatline"), inp.channels) if schema >= 2 else None)
    if schema < 2 and "flatline" in s:
        raise ConfigError(s.key_path("flatline"), "needs schema_version 2 (this manifest says 1)")
    s.finish()
    return model


def _parse_flatline(s: Section, channels: tuple[str, ...]) -> Flatline:
    flatline = Flatline(s.str_list("channels"), s.integer("healthy_windows", minimum=0))
    unknown = [c for c in flatline.channels if c not in channels]
    if unknown:
        raise ConfigError(s.key_path("channels"), f"names {unknown}, which are not input channels",
                          list(flatline.channels))
    if list(flatline.channels) != [c for c in channels if c in flatline.channels]:
        raise ConfigError(s.key_path("channels"), "must list input channels once each, in input order",
                          list(flatline.channels))
    s.finish()
    return flatline


def _parse_input(s: Section) -> InputSpec:
    layout = s.choice("layout", ["NCL"])
    channels = s.str_list("channels")
    if not channels:
        raise ConfigError(s.key_path("channels"), "must list at least one channel")
    for i, channel in enumerate(channels):
        if channel in channels[:i]:
            raise ConfigError(join(s.key_path("channels"), i), "duplicate channel", channel)
    units = tuple(None if u is None else check_type(u, str, join(s.key_path("units"), i))
                  for i, u in enumerate(s.get("units", list)))
    if len(units) != len(channels):
        raise ConfigError(s.key_path("units"), f"must have one entry (or null) per channel: {len(channels)}")
    spec = InputSpec(name=s.get("name", str), layout=layout, dtype=s.choice("dtype", ["float32"]),
                     channels=channels, units=units, window_length=s.integer("window_length", minimum=1),
                     stride=s.integer("stride", minimum=1),
                     sample_period_s=s.number("sample_period_s", minimum=0, exclusive_minimum=True))
    s.finish()
    return spec


def _parse_decision(s: Section, precision: str) -> PrecisionDecision:
    decision = PrecisionDecision(s.choice("requested", ("auto", *PRECISIONS)), s.choice("chosen", PRECISIONS),
                                 s.get("reason", str), _json_object(s, "measurements"))
    if decision.chosen != precision:
        raise ConfigError(s.key_path("chosen"), f"must equal the model's precision {precision!r}",
                          decision.chosen)
    s.finish()
    return decision


def _parse_threshold(s: Section) -> ThresholdSpec:
    far = s.raw("target_false_alarm_rate")
    if far is not None:
        far = _finite(far, s.key_path("target_false_alarm_rate"))
        if not 0 < far < 1:
            raise ConfigError(s.key_path("target_false_alarm_rate"), "must be between 0 and 1", far)
    spec = ThresholdSpec(s.get("method", str), _json_object(s, "params"),
                         _finite(s.raw("value"), s.key_path("value")), far)
    s.finish()
    return spec


def _parse_quantiles(s: Section) -> dict[str, float]:
    quantiles: dict[str, float] = {}
    for key in s.data:
        try:
            level = float(key)
        except ValueError as exc:
            raise ConfigError(s.key_path(key), "quantile keys must be numbers in (0, 1), e.g. \"0.99\"") \
                from exc
        if not 0 < level < 1:
            raise ConfigError(s.key_path(key), "quantile keys must be numbers in (0, 1)")
        quantiles[key] = _finite(s.raw(key), s.key_path(key))
    ordered = sorted(quantiles.items(), key=lambda kv: float(kv[0]))
    for (_, low), (key, high) in itertools.pairwise(ordered):
        if high < low:
            raise ConfigError(s.key_path(key), "quantiles must not decrease with the level", high)
    s.finish()
    return quantiles


def _parse_severity(items: Sequence[Any], path: str) -> tuple[SeverityLevel, ...]:
    if not items:
        raise ConfigError(path, "must list at least one level")
    levels: list[SeverityLevel] = []
    for i, item in enumerate(items):
        s = Section(item, join(path, i))
        level = SeverityLevel(s.get("level", str), _finite(s.raw("min_score"), s.key_path("min_score")))
        s.finish()
        if levels and level.min_score <= levels[-1].min_score:
            raise ConfigError(s.key_path("min_score"), "levels must be in strictly ascending min_score",
                              level.min_score)
        if any(level.level == other.level for other in levels):
            raise ConfigError(s.key_path("level"), "duplicate severity level", level.level)
        levels.append(level)
    return tuple(levels)


def _parse_debounce(s: Section) -> Debounce:
    n = s.integer("n", minimum=1)
    debounce = Debounce(s.integer("k", minimum=1, maximum=n), n, s.integer("clear_windows", minimum=1))
    s.finish()
    return debounce


def _parse_baseline(value: Any, path: str) -> ScoreBaseline | None:
    if value is None:
        return None
    s = Section(value, path)
    baseline = ScoreBaseline(s.choice("kind", ["per_asset_initial"]), s.integer("windows", minimum=1),
                             s.choice("statistic", ["median"]))
    s.finish()
    return baseline


def _parse_drift(s: Section) -> DriftReference:
    mean = _floats(s.raw("latent_mean"), s.key_path("latent_mean"))
    z = len(mean)
    if z == 0:
        raise ConfigError(s.key_path("latent_mean"), "must not be empty")
    cov = _matrix(s.raw("latent_cov"), s.key_path("latent_cov"), z)
    if len(cov) != z:
        raise ConfigError(s.key_path("latent_cov"), f"must be {z} x {z} (the latent size)")
    samples = _matrix(s.raw("sample_latents"), s.key_path("sample_latents"), z)
    if len(samples) > MAX_SAMPLE_LATENTS:
        raise ConfigError(s.key_path("sample_latents"), f"at most {MAX_SAMPLE_LATENTS} samples", len(samples))
    drift = DriftReference(mean, cov, samples, _floats(s.raw("sample_scores"), s.key_path("sample_scores")))
    s.finish()
    return drift


def _parse_root_cause(s: Section, channels: tuple[str, ...]) -> RootCause:
    root = RootCause(s.str_list("channels"), s.get("reading", str))
    if root.channels != channels:
        raise ConfigError(s.key_path("channels"), "must equal input -> channels (same order)",
                          list(root.channels))
    s.finish()
    return root


def _parse_reference(s: Section, files: Mapping[str, str]) -> ReferenceSpec:
    ref = ReferenceSpec(s.get("file", str), _sha256(s, "sha256"), s.integer("count", minimum=1),
                        s.number("rtol", minimum=0), s.number("atol", minimum=0))
    if files.get(ref.file) != ref.sha256:
        raise ConfigError(s.key_path("file"), "must be listed in files with the same sha256", ref.file)
    s.finish()
    return ref


def _parse_metrics(s: Section) -> dict[str, float | int | str | bool | None]:
    metrics: dict[str, float | int | str | bool | None] = {}
    for key in s.data:
        value = s.raw(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(s.key_path(key), "must be finite (use null for 'not measured')", value)
        if value is not None and not isinstance(value, (int, float, str, bool)):
            raise ConfigError(s.key_path(key), "must be a number, string, boolean or null", value)
        metrics[key] = value
    s.finish()
    return metrics
