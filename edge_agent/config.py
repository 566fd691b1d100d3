"""The agent's one TOML configuration file, parsed strictly (see docs/configuration.md).

Unknown keys, wrong types and dangling references are errors naming the file, the key path and the value:

    /etc/edge-agent/agent.toml: assets -> pump-3 -> channels -> flow: asset "pump-3": channel "flow" refers
    to field "flw" which source "line1" does not produce (it produces: flow, pressure)

`AgentConfig.load(path)` composes the sections owned by each module (`MqttUpstreamConfig`, `RetentionConfig`,
`DecisionConfig`, the source configs of `edge_agent.sources.SOURCES`) and checks the references between them.
Checks against the bundle (is the model in it, are these its channels) run once the bundle is loaded:
`check_against_manifest`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.compat import tomllib
from edge_agent.configtools import ConfigError, Section, join
from edge_agent.decisions import DecisionConfig
from edge_agent.sinks.mqtt import MqttUpstreamConfig, upstream_client_id
from edge_agent.sources import SOURCES
from edge_agent.storage import RetentionConfig
from edge_agent.types import GatewayIdentity

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # MQTT-topic and file-name safe, no dots (dots join refs)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "journal", "json")


@dataclass(frozen=True)
class SourceConfig:
    """One `[sources.NAME]`: its `type` and the parsed config of that type."""

    name: str
    kind: str
    settings: Any  # SerialConfig | MqttSourceConfig | ReplayConfig

    def field_names(self) -> tuple[str, ...]:
        return tuple(self.settings.field_names())


@dataclass(frozen=True)
class ChannelRef:
    """Where a model channel's samples come from: `field` of source `source`."""

    source: str
    field: str


@dataclass(frozen=True)
class AssetConfig:
    """One `[assets.NAME]`: which bundle model scores it and which source field feeds each model channel."""

    name: str
    model: str
    channels: Mapping[str, ChannelRef]  # model channel -> source field
    staleness_s: float | None = None  # None: 3 sample periods of the model
    max_jump_s: float = 86_400.0  # a reading this far from the asset's timeline is dropped (windows.py)


@dataclass(frozen=True)
class BundleConfig:
    """`[bundle]`: a bundle file to load when no bundle is installed in `state_dir/bundles/active`."""

    path: Path | None
    trusted_keys: Path | None
    require_signature: bool = True
    keep: int = 3  # installed versions kept by `edge-agent bundle install`

    @property
    def verify_keys(self) -> Path | None:
        """The trusted keys a bundle's signature must verify against (None: signatures not required)."""
        return self.trusted_keys if self.require_signature else None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


class StateFiles:
    """The files of a state directory the agent and the commands share (`state_dir` is set by the
    subclass): `AgentConfig`, and `StateDirectory` for `edge-agent status` when the config does not load."""

    state_dir: Path

    @property
    def db_path(self) -> Path:
        return self.state_dir / "agent.db"

    @property
    def status_path(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "agent.pid"

    @property
    def lock_path(self) -> Path:
        """Held (flock) by the running agent for its whole life: one agent per state directory."""
        return self.state_dir / "agent.lock"


@dataclass(frozen=True)
class StateDirectory(StateFiles):
    """Only where the state is: what `edge-agent status` reads when the config file does not load (a typo
    saved over the running agent's config), taken from the file's `state_dir` and `status_interval_s`."""

    state_dir: Path
    status_interval_s: float = 5.0

    @classmethod
    def of_file(cls, path: Path) -> StateDirectory | None:
        """`state_dir` and `status_interval_s` as `AgentConfig.load` would take them from `path`, read
        leniently (the rest of the file may be invalid); None when the file is no TOML or `state_dir` is
        unusable."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            state_dir = data.get("state_dir")
            interval = data.get("status_interval_s", 5.0)
            if state_dir is not None and not isinstance(state_dir, str):
                return None
            if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
                interval = 5.0
            return cls(_state_dir(state_dir, Path(path).resolve().parent), float(interval))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None


@dataclass(frozen=True)
class AgentConfig(StateFiles):
    """The whole configuration. `source` is the file it came from."""

    identity: GatewayIdentity
    state_dir: Path
    device_profile: str | None
    bundle: BundleConfig
    sources: Mapping[str, SourceConfig]
    assets: Mapping[str, AssetConfig]
    mqtt: MqttUpstreamConfig | None
    retention: RetentionConfig
    decisions: DecisionConfig
    logging: LoggingConfig
    status_interval_s: float = 5.0
    source: Path | None = None

    @classmethod
    def load(cls, path: Path | str) -> AgentConfig:
        """Read and validate `path`; every error is a `ConfigError` naming the file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("", f"cannot read config file: {exc.strerror}", str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"not valid TOML: {exc}", source=path) from exc
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent, source=path)
        except ConfigError as exc:
            raise exc.with_source(path) from exc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: Path, source: Path | None = None) -> AgentConfig:
        """Validate an already parsed TOML document (relative paths are taken from `base_dir`)."""
        top = Section(data)
        identity = _identity(top.section("gateway"))
        state_dir = _state_dir(top.optional("state_dir", str), base_dir)
        profile = top.optional("device_profile", str)
        if profile is not None:
            _check_profile(profile, top.key_path("device_profile"))
        status_interval = top.number("status_interval_s", 5.0, minimum=0.1)
        bundle = _bundle(top.section("bundle", {}), base_dir)
        sources = _sources(top.section("sources"), base_dir)
        assets = _assets(top.section("assets"), sources)
        mqtt = None
        if "mqtt" in top:
            mqtt = MqttUpstreamConfig.from_section(top.section("mqtt"), base_dir)
        retention = RetentionConfig.from_section(top.section("retention", {}))
        decisions = DecisionConfig.from_section(top.section("decisions", {}))
        logging_cfg = _logging(top.section("logging", {}))
        top.finish()
        _check_client_ids(sources, mqtt, identity)
        return cls(identity=identity, state_dir=state_dir, device_profile=profile, bundle=bundle,
                   sources=sources, assets=assets, mqtt=mqtt, retention=retention, decisions=decisions,
                   logging=logging_cfg, status_interval_s=status_interval, source=source)

    @property
    def run_dir(self) -> Path:
        """Where the active bundle is extracted for the running agent: systemd's `$RUNTIME_DIRECTORY`
        (`RuntimeDirectory=edge-agent`: /run/edge-agent, in RAM, so no flash wear and a full disk does not
        stop a start) when set, else `state_dir/run`. Emptied at every start and stop."""
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        return Path(runtime) / "run" if runtime else self.state_dir / "run"

    def bundle_path(self) -> Path:
        """The installed active bundle (`state_dir/bundles/active/bundle.tar`, written by `edge-agent bundle
        install`) if there is one, else `[bundle] path`."""
        active = self.state_dir / "bundles" / "active" / "bundle.tar"
        if active.exists():
            return active
        link = active.parent
        if link.is_symlink() or link.exists():  # installed once, now broken: never fall back silently
            where = f"points to {str(link.readlink())!r}" if link.is_symlink() else "is not a link"
            raise ConfigError("bundle", f"{link} {where}, which holds no bundle.tar: the installed bundle "
                              "is damaged (`edge-agent bundle list` shows what is installed; `edge-agent "
                              "bundle rollback VERSION` or `bundle install` repairs it)", source=self.source)
        if self.bundle.path is None:
            raise ConfigError("bundle -> path", f"no bundle installed in {active.parent} and no bundle "
                              "file configured (`edge-agent bundle install FILE --config CONFIG` installs "
                              "one)", source=self.source)
        return self.bundle.path


def _name_key(key: str, path: str, what: str) -> str:
    if not NAME.match(key):
        raise ConfigError(path, f"{what} name must be letters, digits, '-' or '_' (no dots or spaces)", key)
    return key


def _identity(section: Section) -> GatewayIdentity:
    values = {}
    for key in ("site", "area", "line", "id"):
        value = section.get(key, str)
        if not value or any(c in value for c in "/+#"):
            raise ConfigError(section.key_path(key), "must be non-empty without '/', '+' or '#' (it is "
                              "part of MQTT topics)", value)
        values[key] = value
    section.finish()
    return GatewayIdentity(site=values["site"], area=values["area"], line=values["line"],
                           gateway_id=values["id"])


def _state_dir(value: str | None, base_dir: Path) -> Path:
    """`state_dir` from the config, else `$STATE_DIRECTORY` (systemd `StateDirectory=`), else the default."""
    if value is not None:
        path = Path(value)
        return path if path.is_absolute() else base_dir / path
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])  # systemd joins several StateDirectory= entries with ':'
    return DEFAULT_STATE_DIR


def _check_profile(name: str, path: str) -> None:
    from edge_agent.profiles import load_profile

    try:
        load_profile(name)
    except ConfigError as exc:
        raise ConfigError(path, f"device profile cannot be loaded: {exc}", name) from exc


def _check_client_ids(sources: Mapping[str, SourceConfig], mqtt: MqttUpstreamConfig | None,
                      identity: GatewayIdentity) -> None:
    """No two of the agent's MQTT clients may connect to one broker with the same client id: the broker
    drops the older connection whenever the other connects, and the two reconnect against each other for
    ever (the status topic flapping offline/online for SCADA)."""
    clients: dict[tuple[str, int, str], str] = {}
    if mqtt is not None:
        clients[(mqtt.host, mqtt.port, upstream_client_id(mqtt, identity))] = "mqtt -> client_id"
    for name, source in sources.items():
        settings = source.settings
        if source.kind != "mqtt" or not settings.client_id:  # empty: the broker-unique id paho makes up
            continue
        key = (settings.host, settings.port, settings.client_id)
        path = join(join("sources", name), "client_id")
        if key in clients:
            raise ConfigError(path, f"the same client id as {clients[key]} on {settings.host}:"
                              f"{settings.port}; the broker would keep disconnecting one of them",
                              settings.client_id)
        clients[key] = path


def _bundle(section: Section, base_dir: Path) -> BundleConfig:
    def resolve(key: str) -> Path | None:
        value = section.optional(key, str)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else base_dir / path

    path = resolve("path")
    keys = resolve("trusted_keys")
    require = section.get("require_signature", bool, True)
    keep = section.integer("keep", 3, minimum=1)
    section.finish()
    if require and keys is None and path is not None:
        raise ConfigError(section.key_path("trusted_keys"), "is required while require_signature = true "
                          "(a directory of trusted *.pub keys)")
    return BundleConfig(path=path, trusted_keys=keys, require_signature=require, keep=keep)


def _sources(section: Section, base_dir: Path) -> dict[str, SourceConfig]:
    sources: dict[str, SourceConfig] = {}
    for name in list(section.keys()):
        path = section.key_path(name)
        _name_key(name, path, "source")
        entry = section.section(name)
        kind = entry.choice("type", SOURCES)
        config_class, _source_class = SOURCES[kind]
        settings = config_class.from_section(entry, base_dir)
        entry.finish()
        sources[name] = SourceConfig(name=name, kind=kind, settings=settings)
    section.finish()
    if not sources:
        raise ConfigError(section.path, "at least one source is required")
    return sources


def _assets(section: Section, sources: Mapping[str, SourceConfig]) -> dict[str, AssetConfig]:
    assets: dict[str, AssetConfig] = {}
    for name in list(section.keys()):
        _name_key(name, section.key_path(name), "asset")
        entry = section.section(name)
        model = entry.get("model", str)
        default_source = entry.optional("source", str)
        if default_source is not None and default_source not in sources:
            raise ConfigError(entry.key_path("source"), f"asset {name!r}: source {default_source!r} is not "
                              f"defined (sources: {', '.join(sources)})", default_source)
        staleness = entry.get("staleness_s", float, None)
        if staleness is not None and staleness <= 0:
            raise ConfigError(entry.key_path("staleness_s"), "must be greater than 0", staleness)
        max_jump = entry.number("max_jump_s", 86_400.0, minimum=0.0, exclusive_minimum=True)
        table = entry.section("channels")
        channels: dict[str, ChannelRef] = {}
        for channel in list(table.keys()):
            ref = table.get(channel, str)
            channels[channel] = _channel_ref(name, channel, ref, default_source, sources=sources,
                                             path=table.key_path(channel))
        table.finish()
        entry.finish()
        if not channels:
            raise ConfigError(entry.key_path("channels"), f"asset {name!r}: maps no channels")
        assets[name] = AssetConfig(name=name, model=model, channels=channels, staleness_s=staleness,
                                   max_jump_s=max_jump)
    section.finish()
    if not assets:
        raise ConfigError(section.path, "at least one asset is required")
    return assets


def _channel_ref(asset: str, channel: str, ref: str, default_source: str | None, *,
                 sources: Mapping[str, SourceConfig], path: str) -> ChannelRef:
    """`"source.field"`, or `"field"` of the asset's `source`. Dots after the first belong to the field."""
    source_name, dot, field = ref.partition(".")
    if not dot or source_name not in sources:
        if default_source is None:
            if dot:
                raise ConfigError(path, f"asset {asset!r}: channel {channel!r} refers to source "
                                  f"{source_name!r}, which is not defined (sources: {', '.join(sources)})",
                                  ref)
            raise ConfigError(path, f"asset {asset!r}: channel {channel!r} needs \"source.field\" (or set "
                              "the asset's `source`)", ref)
        source_name, field = default_source, ref
    produced = sources[source_name].field_names()
    if field not in produced:
        shown = ", ".join(produced[:12]) + (" ..." if len(produced) > 12 else "")
        # "other.flow" with the asset's `source` set: read as a field of that source; say both readings
        other = (f"; nor is {ref.partition('.')[0]!r} a source (sources: {', '.join(sources)})"
                 if dot and field == ref else "")
        raise ConfigError(path, f"asset {asset!r}: channel {channel!r} is not produced by any source "
                          f"(source {source_name!r} has no field {field!r}; it produces: {shown}{other})",
                          ref)
    return ChannelRef(source=source_name, field=field)


def _logging(section: Section) -> LoggingConfig:
    level = section.choice("level", LOG_LEVELS, "info")
    fmt = section.choice("format", LOG_FORMATS, "text")
    section.finish()
    return LoggingConfig(level=level, format=fmt)


MAX_HELD_SAMPLES = 10_000  # staleness_s in sample periods: how long a sample may be held (see below)


def check_against_manifest(config: AgentConfig, manifest: Any) -> None:
    """Every asset's model must be in the bundle and map exactly that model's input channels, and its
    `staleness_s` hold at most `MAX_HELD_SAMPLES` of that model's sample periods."""
    names = [model.name for model in manifest.models]
    for asset in config.assets.values():
        path = join(join("assets", asset.name), "model")
        if asset.model not in names:
            raise ConfigError(path, f"asset {asset.name!r}: model {asset.model!r} is not in bundle "
                              f"{manifest.name} {manifest.version} (models: {', '.join(names)})",
                              asset.model, config.source)
        spec = manifest.model(asset.model)
        wanted = list(spec.input.channels)
        missing = [c for c in wanted if c not in asset.channels]
        extra = [c for c in asset.channels if c not in wanted]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"not inputs of the model: {', '.join(extra)}")
            raise ConfigError(join(join("assets", asset.name), "channels"),
                              f"asset {asset.name!r}: channels do not match model {asset.model!r} "
                              f"({'; '.join(parts)})", source=config.source)
        if spec.modality != "timeseries":
            raise ConfigError(path, f"asset {asset.name!r}: model {asset.model!r} is {spec.modality!r}; "
                              "only timeseries models can be fed from these sources", source=config.source)
        period = float(spec.input.sample_period_s)
        if asset.staleness_s is not None and asset.staleness_s / period > MAX_HELD_SAMPLES:
            # a sample is held for staleness_s: after a silence that long, one reading would make the agent
            # build (and score) every held window in between on the event loop, 86,000 of them for a day
            raise ConfigError(join(join("assets", asset.name), "staleness_s"),
                              f"asset {asset.name!r}: {asset.staleness_s:g} s is "
                              f"{asset.staleness_s / period:.0f} sample periods of model {asset.model!r} "
                              f"({period:g} s); at most {MAX_HELD_SAMPLES} "
                              f"({math.floor(MAX_HELD_SAMPLES * period * 1000) / 1000:g} s)",
                              asset.staleness_s, config.source)
    _check_debounce_override(config, manifest)


def _check_debounce_override(config: AgentConfig, manifest: Any) -> None:
    """`[decisions.debounce]` given in part combines with each used model's own `k`/`n`: k must not exceed
    n there either (taken as is, the decision engine would have to swap them)."""
    decisions = config.decisions
    if decisions.debounce_k is None and decisions.debounce_n is None:
        return
    for name in dict.fromkeys(asset.model for asset in config.assets.values()):
        debounce = getattr(manifest.model(name), "debounce", None)
        if debounce is None:
            continue
        k, n, _clear = decisions.debounce(debounce)
        if k > n:
            key = "k" if decisions.debounce_k is not None else "n"
            raise ConfigError(f"decisions -> debounce -> {key}",
                              f"with model {name!r} of bundle {manifest.name} {manifest.version} this gives "
                              f"k = {k} of n = {n} windows (k must not exceed n; set both)",
                              decisions.debounce_k if key == "k" else decisions.debounce_n, config.source)
