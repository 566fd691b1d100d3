"""The agent config: the shipped example validates; errors name the file, key path and value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle.manifest import Debounce
from edge_agent.compat import tomllib
from edge_agent.config import AgentConfig, check_against_manifest
from edge_agent.configtools import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "agent.toml"

MINIMAL: dict[str, Any] = {
    "gateway": {"site": "s", "area": "a", "line": "l", "id": "gw"},
    "bundle": {"path": "b.bundle", "require_signature": False},
    "sources": {"line1": {"type": "serial", "device": "/dev/ttyUSB0", "format": "csv",
                          "columns": ["ts", "flow", "pressure"], "timestamp_field": "ts"}},
    "assets": {"pump-3": {"model": "pump", "source": "line1",
                          "channels": {"flow": "flow", "pressure": "line1.pressure"}}},
}


def load(data: dict[str, Any], tmp_path: Path) -> AgentConfig:
    return AgentConfig.from_dict(data, base_dir=tmp_path)


def test_shipped_example_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the example names files under /etc/edge-agent and systemd credentials: provide them in a temp dir
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("scada-ca.pem", "gw-line2-01.crt", "gw-line2-01.key", "plant-ca.pem"):
        (etc / name).write_text("x")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("secret")
    (creds / "plant-mqtt-password").write_text("secret2")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    text = EXAMPLE.read_text().replace("/etc/edge-agent/", f"{etc}/")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    config = AgentConfig.load(path)
    assert config.identity.gateway_id == "gw-line2-01"
    assert config.state_dir == Path("/var/lib/edge-agent")
    assert set(config.sources) == {"line2-serial", "plant-mqtt", "cooling-mqtt", "commissioning"}
    assert config.assets["pump-4"].channels["flow"].source == "plant-mqtt"
    assert config.assets["pump-4"].channels["flow"].field == "pump-4.flow"
    assert config.sources["plant-mqtt"].settings.password_file == creds / "plant-mqtt-password"
    assert config.mqtt is not None
    assert config.mqtt.protocol == "5"


def test_minimal_config_and_state_dir_from_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-agent-test:/other")
    config = load(MINIMAL, tmp_path)
    assert config.state_dir == Path("/var/lib/edge-agent-test")
    assert config.mqtt is None
    assert config.bundle_path() == tmp_path / "b.bundle"
    assert config.assets["pump-3"].channels["pressure"].field == "pressure"


def error_for(mutate: Any, tmp_path: Path) -> str:
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        load(data, tmp_path)
    return str(info.value)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["gateway"].update(colour="red"), "gateway -> colour: unknown key (value: 'red')"),
    (lambda d: d["gateway"].update(aera="x"), "gateway -> aera: unknown key (did you mean area?)"),
    # a key the source only looks for (`"fields" in section`) is suggested too
    (lambda d: d["sources"]["line1"].update(feilds=["flow"]),
     "sources -> line1 -> feilds: unknown key (did you mean fields?)"),
    (lambda d: d["sources"]["line1"].update(baud="fast"), "sources -> line1 -> baud: expected an integer"),
    (lambda d: d["sources"]["line1"].update(type="modbus"), "sources -> line1 -> type: must be one of"),
    (lambda d: d["assets"]["pump-3"]["channels"].update(flow="flw"),
     ("assets -> pump-3 -> channels -> flow: asset 'pump-3': channel 'flow' is not produced by any source "
      "(source 'line1' has no field 'flw'")),
    (lambda d: d["assets"]["pump-3"].update(source="nowhere"),
     "assets -> pump-3 -> source: asset 'pump-3': source 'nowhere' is not defined"),
    (lambda d: d["assets"]["pump-3"].pop("source"),
     "assets -> pump-3 -> channels -> flow: asset 'pump-3': channel 'flow' needs \"source.field\""),
    (lambda d: (d["assets"]["pump-3"].pop("source"),
                d["assets"]["pump-3"]["channels"].update(flow="ghost.flow")),
     "channel 'flow' refers to source 'ghost', which is not defined"),
    # with the asset's `source` set, "ghost.flow" is read as a field of it: the error says both readings
    (lambda d: d["assets"]["pump-3"]["channels"].update(flow="ghost.flow"),
     ("(source 'line1' has no field 'ghost.flow'; it produces: flow, pressure; nor is 'ghost' a source "
     "(sources: line1))")),
    (lambda d: d["gateway"].update(site="a/b"), "gateway -> site: must be non-empty without '/'"),
    (lambda d: d["bundle"].update(require_signature=True), "bundle -> trusted_keys: is required"),
    (lambda d: d.update(device_profile="no-such-box"), "device_profile: device profile cannot be loaded"),
    (lambda d: d["sources"].update({"a.b": d["sources"]["line1"]}), "sources -> a.b: source name must be"),
    (lambda d: d["assets"]["pump-3"].update(staleness_s=0),
     "assets -> pump-3 -> staleness_s: must be greater"),
    (lambda d: d.pop("assets"), "assets: at least one asset is required"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "payload": "number",
                                      "topics": {"a/+/c": "x"}}),
     "sources -> m -> topics -> a/+/c: wildcards cannot map to one field"),
    # a filter paho would refuse only when subscribing, failing the source at every connect
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["plant/#/bad"],
                                      "fields": ["flow"]}),
     "sources -> m -> topics -> plant/#/bad: '#' must be a whole level and the last one"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["a/b+"], "fields": ["flow"]}),
     "sources -> m -> topics -> a/b+: '+' must be a whole level"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": [""], "fields": ["flow"]}),
     "a topic filter cannot be empty"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "payload": "number",
                                      "topics": {"a/b": "x"}, "timestamp_field": "ts"}),
     "sources -> m -> timestamp_field: only applies to payload = \"json\""),
    # two of the agent's clients with one id on one broker would disconnect each other for ever
    (lambda d: (d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"],
                                       "client_id": "gw-1"}),
                d.update(mqtt={"host": "h", "client_id": "gw-1"})),
     "sources -> m -> client_id: the same client id as mqtt -> client_id on h:1883"),
    (lambda d: (d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"],
                                       "client_id": "edge-agent-gw"}), d.update(mqtt={"host": "h"})),
     "sources -> m -> client_id: the same client id as mqtt -> client_id"),  # the upstream's default id
    (lambda d: d["sources"].update(
        m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"], "client_id": "c"},
        n={"type": "mqtt", "host": "h", "topics": ["u"], "fields": ["flow"], "client_id": "c"}),
     "sources -> n -> client_id: the same client id as sources -> m -> client_id on h:1883"),
    # source secrets are checked as [mqtt]'s are
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"],
                                      "username": "u", "password_file": "/nonexistent/pw"}),
     "sources -> m -> password_file: file not found: /nonexistent/pw"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"],
                                      "password_file": "credential:pw"}),
     "sources -> m -> password_file: needs `username` as well"),
    (lambda d: d["sources"].update(m={"type": "mqtt", "host": "h", "topics": ["t"], "fields": ["flow"],
                                      "tls": {"ca": "/nonexistent/ca.pem"}}),
     "sources -> m -> tls -> ca: file not found: /nonexistent/ca.pem"),
    # TOML has nan and inf: NaN passes every range check, so numbers must be finite
    (lambda d: d["assets"]["pump-3"].update(staleness_s=float("nan")),
     "assets -> pump-3 -> staleness_s: expected a finite number (value: nan)"),
    (lambda d: d.update(status_interval_s=float("inf")), "status_interval_s: expected a finite number"),
])
def test_errors_name_key_path_and_value(mutate: Any, expected: str, tmp_path: Path) -> None:
    assert expected in error_for(mutate, tmp_path)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[gateway]\nsite = 1\n')
    with pytest.raises(ConfigError, match=rf"^{path}: gateway -> site: expected a string"):
        AgentConfig.load(path)
    path.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        AgentConfig.load(path)


class _Input:
    def __init__(self, channels: tuple[str, ...], sample_period_s: float = 1.0) -> None:
        self.channels = channels
        self.sample_period_s = sample_period_s


class _Model:
    def __init__(self, name: str, channels: tuple[str, ...]) -> None:
        self.name, self.input, self.modality = name, _Input(channels), "timeseries"


class _Manifest:
    name, version = "b", "1"

    def __init__(self, *models: _Model) -> None:
        self.models = models

    def model(self, name: str) -> _Model:
        return next(m for m in self.models if m.name == name)


def test_assets_checked_against_the_bundle(tmp_path: Path) -> None:
    config = load(MINIMAL, tmp_path)
    check_against_manifest(config, _Manifest(_Model("pump", ("pressure", "flow"))))
    with pytest.raises(ConfigError, match="model 'pump' is not in bundle b 1"):
        check_against_manifest(config, _Manifest(_Model("fan", ("pressure",))))
    with pytest.raises(ConfigError, match=r"channels do not match model 'pump' \(missing vibration"):
        check_against_manifest(config, _Manifest(_Model("pump", ("pressure", "flow", "vibration"))))


def test_staleness_holds_at_most_ten_thousand_samples(tmp_path: Path) -> None:
    """Held for a day at 10 Hz, one reading after a day's silence made the windower build 86,000 windows on
    the event loop (22 s here); the hold is bounded in sample periods of the asset's model."""
    model = _Model("pump", ("pressure", "flow"))
    model.input = _Input(("pressure", "flow"), sample_period_s=0.1)
    data = copy.deepcopy(MINIMAL)
    data["assets"]["pump-3"]["staleness_s"] = 1000.0
    check_against_manifest(load(data, tmp_path), _Manifest(model))
    data["assets"]["pump-3"]["staleness_s"] = 86400.0
    expected = (r"assets -> pump-3 -> staleness_s: asset 'pump-3': 86400 s is 864000 sample periods of model "
                r"'pump' \(0.1 s\); at most 10000 \(1000 s\)")
    with pytest.raises(ConfigError, match=expected):
        check_against_manifest(load(data, tmp_path), _Manifest(model))


def test_a_partial_debounce_override_must_fit_each_models_debounce(tmp_path: Path) -> None:
    model = _Model("pump", ("pressure", "flow"))
    model.debounce = Debounce(k=2, n=3, clear_windows=3)  # type: ignore[attr-defined]
    check_against_manifest(load({**MINIMAL, "decisions": {"debounce": {"k": 3}}}, tmp_path), _Manifest(model))
    config = load({**MINIMAL, "decisions": {"debounce": {"k": 5}}}, tmp_path)
    with pytest.raises(ConfigError, match=r"decisions -> debounce -> k: with model 'pump' of bundle b 1 this "
                                          r"gives k = 5 of n = 3 windows \(k must not exceed n; set both\) "
                                          r"\(value: 5\)"):
        check_against_manifest(config, _Manifest(model))
    with pytest.raises(ConfigError, match=r"decisions -> debounce -> n: .*k = 2 of n = 1 windows"):
        check_against_manifest(load({**MINIMAL, "decisions": {"debounce": {"n": 1}}}, tmp_path),
                               _Manifest(model))
    check_against_manifest(load({**MINIMAL, "decisions": {"debounce": {"k": 5, "n": 6}}}, tmp_path),
                           _Manifest(model))


def test_example_is_valid_toml() -> None:
    assert "gateway" in tomllib.loads(EXAMPLE.read_text())


def test_configuration_doc_embeds_the_example() -> None:
    doc = (EXAMPLE.parents[1] / "configuration.md").read_text()
    block = doc.split("```toml\n")[-1].split("```")[0]
    assert block == EXAMPLE.read_text()


def _example_outside_systemd(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("scada-ca.pem", "gw-line2-01.crt", "gw-line2-01.key", "plant-ca.pem"):
        (etc / name).write_text("x")
    path = tmp_path / "agent.toml"
    path.write_text(EXAMPLE.read_text().replace("/etc/edge-agent/", f"{etc}/"))
    return path


def test_credentials_are_resolved_when_connecting_not_at_load(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`status`, `doctor` and `bundle install` load the production config from a shell, where systemd's
    $CREDENTIALS_DIRECTORY is not set; only `run` (which connects) needs the secrets."""
    from edge_agent.sources.base import SecretRef, read_secret

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = AgentConfig.load(_example_outside_systemd(tmp_path))
    source_ref = config.sources["plant-mqtt"].settings.password_file
    assert config.mqtt is not None
    assert isinstance(source_ref, SecretRef)
    assert isinstance(config.mqtt.password_file, SecretRef)
    with pytest.raises(ConfigError, match=r"sources -> plant-mqtt -> password_file: names a systemd "
                                          r"credential but \$CREDENTIALS_DIRECTORY is not set"):
        read_secret(source_ref, "sources -> plant-mqtt -> password_file")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "plant-mqtt-password").write_text("pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # as under systemd, at connect time
    assert read_secret(source_ref, "x").strip() == "pw"
    # with $CREDENTIALS_DIRECTORY set, check-config also checks that each credential exists
    with pytest.raises(ConfigError, match=r"mqtt -> password_file: credential not found: .*mqtt-password"):
        AgentConfig.load(tmp_path / "agent.toml")
    with pytest.raises(ConfigError, match=r"credential name must be a plain file name"):
        load({**MINIMAL, "mqtt": {"host": "b", "username": "u", "password_file": "credential:a/b"}}, tmp_path)


def test_one_client_id_on_different_brokers_is_fine(tmp_path: Path) -> None:
    data = copy.deepcopy(MINIMAL)
    data["sources"]["m"] = {"type": "mqtt", "host": "plant", "topics": ["t"], "fields": ["flow"],
                            "client_id": "gw-1"}
    data["mqtt"] = {"host": "scada", "client_id": "gw-1"}
    assert load(data, tmp_path).sources["m"].settings.client_id == "gw-1"
