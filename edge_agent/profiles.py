"""Device profiles: how this kind of gateway hardware runs models.

A profile is a small TOML file in `device_profiles/` (shipped with the agent) or anywhere on disk:

    description = "x86-64 industrial PC (Intel Core / Atom), CPU inference"
    arch = ["x86_64"]
    preferred_precision = ["fp32", "int8"]     # the order the exporter should prefer; others are refused
    memory_budget_mb = 512                     # what the agent process may use on this box
    min_cpus = 2

    [threads]
    intra_op = 1                               # ONNX Runtime threads inside one run
    inter_op = 1
    spin = false                               # ORT worker threads busy-wait between runs (default false)
    parallel_runs = 2                          # a large batch split over this many concurrent session runs

    [[providers]]                              # ONNX Runtime execution providers, in order of preference
    name = "OpenVINOExecutionProvider"
    required = false                           # skipped (with a log line) when this onnxruntime lacks it
    options = { device_type = "CPU" }

    [[providers]]
    name = "CPUExecutionProvider"

    [camera]                                   # defaults for camera sources that do not say otherwise
    width = 640
    height = 480
    fps = 10
    pixel_format = "MJPG"

    [audio]
    sample_rate = 16000
    channels = 1
    block_ms = 100

`load_profile("x86-64-ipc")` finds the file by name; `load_profile("/etc/edge-agent/box.toml")` loads a path.
Every key is checked strictly (unknown keys are errors naming the file and the key path).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.compat import tomllib
from edge_agent.configtools import ConfigError, Section, check_type, join

if TYPE_CHECKING:  # A2's dataclass; imported lazily at run time so profiles load without onnxruntime
    from edge_agent.inference import ProviderSettings

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
PRECISIONS = ("fp32", "fp16", "int8")
ARCHES = ("x86_64", "aarch64", "armv7l")
PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
# Where profiles are looked up by name, first match wins: $EDGE_AGENT_PROFILE_PATH (os.pathsep-separated),
# the site directory, then the profiles shipped with the package: beside it in a checkout, or under
# `<prefix>/share/edge-agent/device_profiles` where a wheel installs them (pyproject's data-files).
SITE_PROFILE_DIR = Path("/etc/edge-agent/device_profiles")
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parents[1] / "device_profiles"
INSTALLED_PROFILE_DIR = Path(sys.prefix) / "share" / "edge-agent" / "device_profiles"

OptionValue = str | int | float | bool


@dataclass(frozen=True)
class ProviderSpec:
    """One ONNX Runtime execution provider with its options. `required`: the profile is pointless without it
    (doctor reports its absence as blocking); otherwise it is skipped when this onnxruntime lacks it."""

    name: str
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    required: bool = False


@dataclass(frozen=True)
class CameraDefaults:
    """Defaults for camera sources that do not set these themselves."""

    width: int = 640
    height: int = 480
    fps: float = 10.0
    pixel_format: str = "MJPG"
    backend: str = "v4l2"


@dataclass(frozen=True)
class AudioDefaults:
    """Defaults for microphone sources that do not set these themselves."""

    sample_rate: int = 16000
    channels: int = 1
    block_ms: int = 100
    device: str = "default"


@dataclass(frozen=True)
class DeviceProfile:
    """How one kind of gateway runs models: providers, threads, precision, memory, camera/audio defaults."""

    name: str
    description: str
    arch: tuple[str, ...]
    providers: tuple[ProviderSpec, ...]
    intra_op_threads: int
    inter_op_threads: int
    preferred_precision: tuple[str, ...]
    memory_budget_mb: int
    min_cpus: int
    camera: CameraDefaults
    audio: AudioDefaults
    source: Path | None = None
    spin_threads: bool = False
    parallel_runs: int = 1

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.providers)

    def accepts_precision(self, precision: str) -> bool:
        """A model of this precision may run here (it is one of the profile's preferred precisions)."""
        return precision in self.preferred_precision

    def missing_required_providers(self, available: Iterable[str]) -> list[str]:
        """Required providers that this onnxruntime build does not offer."""
        have = set(available)
        return [p.name for p in self.providers if p.required and p.name not in have]

    def provider_settings(self, available: Iterable[str] | None = None) -> ProviderSettings:
        """A2's `ProviderSettings` for this profile: providers in order with their options, thread counts.

        With `available` (e.g. `onnxruntime.get_available_providers()`), providers this build lacks are left
        out (logged); the CPU provider is always kept last so a session can always be created.
        """
        from edge_agent.inference import ProviderSettings

        have = set(available) if available is not None else None
        chosen: list[tuple[str, dict[str, Any]]] = []
        for spec in self.providers:
            if have is not None and spec.name not in have:
                log.info("device profile %s: provider %s not available in this onnxruntime, skipped",
                         self.name, spec.name)
                continue
            chosen.append((spec.name, dict(spec.options)))
        if CPU_PROVIDER not in (name for name, _ in chosen):
            chosen.append((CPU_PROVIDER, {}))
        return ProviderSettings(providers=tuple(chosen), intra_op_threads=self.intra_op_threads,
                                inter_op_threads=self.inter_op_threads, allow_spinning=self.spin_threads,
                                parallel_runs=self.parallel_runs)


def profile_search_path() -> list[Path]:
    """Directories searched when a profile is named rather than given as a path."""
    dirs = [Path(p) for p in os.environ.get("EDGE_AGENT_PROFILE_PATH", "").split(os.pathsep) if p]
    return [*dirs, SITE_PROFILE_DIR, BUILTIN_PROFILE_DIR, INSTALLED_PROFILE_DIR]


def available_profiles() -> dict[str, Path]:
    """Every profile that `load_profile` can find by name, with its file (first match per name wins)."""
    found: dict[str, Path] = {}
    for directory in profile_search_path():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                if PROFILE_NAME.match(path.stem):  # `Plant_IPC.toml` is loadable by its path only
                    found.setdefault(path.stem, path)
    return found


def resolve_profile(name_or_path: str | Path) -> Path:
    """The file for a profile name (`x86-64-ipc`) or path (anything with a `/` or ending in `.toml`)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError("device_profile", f"profile file {path} does not exist", text)
        return path
    if not PROFILE_NAME.match(text):
        raise ConfigError("device_profile", "a profile name is lowercase letters, digits, '.', '_' or '-'",
                          text)
    for directory in profile_search_path():
        candidate = directory / f"{text}.toml"
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(available_profiles())) or "none"
    searched = ", ".join(str(d) for d in profile_search_path())
    raise ConfigError("device_profile", f"no profile named {text!r} (known: {known}; searched {searched})",
                      text)


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a device profile by name or path, strictly. Errors are `ConfigError`s naming the file and key."""
    path = resolve_profile(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("", f"cannot read profile: {exc.strerror}", source=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", source=path) from exc
    try:
        return parse_profile(data, name=path.stem, source=path)
    except ConfigError as exc:
        raise exc.with_source(path) from exc


def parse_profile(data: Mapping[str, Any], name: str, source: Path | None = None) -> DeviceProfile:
    """Build a `DeviceProfile` from a TOML-shaped dict (unknown keys and bad values raise `ConfigError`)."""
    top = Section(data)
    description = top.get("description", str, "")
    arch = top.str_list("arch", list(ARCHES))
    for i, item in enumerate(arch):
        if item not in ARCHES:
            raise ConfigError(join("arch", i), f"must be one of {', '.join(ARCHES)}", item)
    precision = top.str_list("preferred_precision", ["fp32"])
    if not precision:
        raise ConfigError("preferred_precision", "must name at least one precision", [])
    for i, item in enumerate(precision):
        if item not in PRECISIONS:
            raise ConfigError(join("preferred_precision", i), f"must be one of {', '.join(PRECISIONS)}", item)
    memory_budget_mb = top.integer("memory_budget_mb", 256, minimum=32)
    min_cpus = top.integer("min_cpus", 1, minimum=1)
    threads = top.section("threads")
    intra = threads.integer("intra_op", 1, minimum=1, maximum=256)
    inter = threads.integer("inter_op", 1, minimum=1, maximum=256)
    spin = threads.get("spin", bool, False)
    parallel = threads.integer("parallel_runs", 1, minimum=1, maximum=64)
    threads.finish()
    providers = _parse_providers(top.raw("providers", [{"name": CPU_PROVIDER}]))
    camera = _parse_camera(top.section("camera"))
    audio = _parse_audio(top.section("audio"))
    top.finish()
    return DeviceProfile(name=name, description=description, arch=arch, providers=providers,
                         intra_op_threads=intra, inter_op_threads=inter, preferred_precision=precision,
                         memory_budget_mb=memory_budget_mb, min_cpus=min_cpus, camera=camera, audio=audio,
                         source=source, spin_threads=spin, parallel_runs=parallel)


def _parse_providers(raw: Any) -> tuple[ProviderSpec, ...]:
    items = check_type(raw, list, "providers")
    if not items:
        raise ConfigError("providers", "must list at least one execution provider", raw)
    specs: list[ProviderSpec] = []
    for i, item in enumerate(items):
        section = Section(item, join("providers", i))
        name = section.get("name", str)
        if not name.endswith("ExecutionProvider"):
            raise ConfigError(section.key_path("name"),
                              "must be an onnxruntime provider name such as CPUExecutionProvider", name)
        if name in (s.name for s in specs):
            raise ConfigError(section.key_path("name"), "is listed twice", name)
        options_section = section.section("options")
        options: dict[str, OptionValue] = {}
        for key in list(options_section.keys()):
            value = options_section.raw(key)
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(options_section.key_path(key),
                                  "provider options are strings, numbers or booleans", value)
            options[key] = value
        options_section.finish()
        required = section.get("required", bool, name == CPU_PROVIDER)
        section.finish()
        specs.append(ProviderSpec(name=name, options=options, required=required))
    if specs[-1].name != CPU_PROVIDER:
        raise ConfigError(join("providers", len(specs) - 1),
                          f"the last provider must be {CPU_PROVIDER} (the fallback every build has)",
                          specs[-1].name)
    return tuple(specs)


def _parse_camera(section: Section) -> CameraDefaults:
    camera = CameraDefaults(
        width=section.integer("width", CameraDefaults.width, minimum=16, maximum=8192),
        height=section.integer("height", CameraDefaults.height, minimum=16, maximum=8192),
        fps=section.number("fps", CameraDefaults.fps, minimum=0, exclusive_minimum=True, maximum=240),
        pixel_format=section.choice("pixel_format", ("MJPG", "YUYV", "GREY", "RGB3"),
                                    CameraDefaults.pixel_format),
        backend=section.choice("backend", ("v4l2", "gstreamer", "ffmpeg"), CameraDefaults.backend),
    )
    section.finish()
    return camera


def _parse_audio(section: Section) -> AudioDefaults:
    audio = AudioDefaults(
        sample_rate=section.integer("sample_rate", AudioDefaults.sample_rate, minimum=8000, maximum=192000),
        channels=section.integer("channels", AudioDefaults.channels, minimum=1, maximum=8),
        block_ms=section.integer("block_ms", AudioDefaults.block_ms, minimum=5, maximum=10000),
        device=section.get("device", str, AudioDefaults.device),
    )
    section.finish()
    return audio


def describe(profile: DeviceProfile) -> Sequence[str]:
    """Human-readable lines summarising a profile (used by `edge-agent doctor`)."""
    providers = " -> ".join(f"{p.name}{'' if p.required else ' (optional)'}" for p in profile.providers)
    return (
        f"profile {profile.name}: {profile.description}".rstrip(": "),
        f"  providers: {providers}",
        (f"  threads: intra-op {profile.intra_op_threads}, inter-op {profile.inter_op_threads}"
         f"{', spinning' if profile.spin_threads else ''}"
         f"{f', {profile.parallel_runs} parallel runs' if profile.parallel_runs > 1 else ''}"),
        f"  precision preference: {', '.join(profile.preferred_precision)}",
        f"  memory budget: {profile.memory_budget_mb} MB, at least {profile.min_cpus} CPU(s)",
    )
