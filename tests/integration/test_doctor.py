"""`edge-agent doctor` on this machine with a temporary config: a real pty serial device, real state dir."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

import pytest

from edge_agent.doctor import run_doctor
from tests.support.broker import MosquittoBroker
from tests.support.bundles import make_keypair
from tests.support.pki import tls_broker
from tests.support.serial_ports import PtyPair

pytestmark = pytest.mark.integration


def _config(root: Path, device: str) -> Path:
    profile = root / "box.toml"
    profile.write_text("memory_budget_mb = 64\nmin_cpus = 1\n")
    path = root / "agent.toml"
    path.write_text(f"""
state_dir = "state"
device_profile = "{profile}"
[gateway]
site = "s1"
area = "a1"
line = "l1"
id = "gw1"
[bundle]
trusted_keys = "keys"
path = "seed.bundle"
[sources.line1]
type = "serial"
device = "{device}"
format = "csv"
fields = ["pressure", "flow"]
[assets.pump-1]
model = "pump"
source = "line1"
[assets.pump-1.channels]
pressure = "pressure"
flow = "flow"
""")
    return path


def test_doctor_passes_on_this_machine_and_names_what_is_missing(
        tmp_path: Path, pty_pair: PtyPair, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path / "keys")
    (tmp_path / "state").mkdir()
    (tmp_path / "seed.bundle").write_bytes(b"")
    config = _config(tmp_path, pty_pair.device)
    assert run_doctor(argparse.Namespace(config=config, json=False)) == 0
    out = capsys.readouterr().out
    assert re.search(rf"OK +serial device {re.escape(pty_pair.device)} +present and accessible", out)
    assert re.search(r"OK +bundle +none installed; the agent loads .*seed\.bundle", out)
    assert "0 blocking problem(s)" in out

    config = _config(tmp_path, str(tmp_path / "ttyUSB7"))
    for key in (tmp_path / "keys").iterdir():
        key.unlink()
    assert run_doctor(argparse.Namespace(config=config, json=False)) == 1
    out = capsys.readouterr().out
    assert f"serial device {tmp_path / 'ttyUSB7'}" in out
    assert "not present" in out
    assert f"copy the trainer's signing.pub into {tmp_path / 'keys'}" in out
    assert "2 blocking problem(s)" in out


def test_doctor_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("colour = 1\n")
    assert run_doctor(argparse.Namespace(config=config, json=False)) == 1
    assert "FAIL  config" in capsys.readouterr().out


def test_doctor_tries_each_broker(tmp_path: Path, pty_pair: PtyPair, mqtt_broker: MosquittoBroker,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker that answers is OK; one that does not (wrong port, a name that does not resolve) is a
    warning: the agent starts without it and keeps retrying, but the operator should know."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    make_keypair(tmp_path / "keys")
    (tmp_path / "state").mkdir()
    (tmp_path / "seed.bundle").write_bytes(b"")
    config = _config(tmp_path, pty_pair.device)
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    config.write_text(config.read_text() + f"""
[mqtt]
host = "127.0.0.1"
port = {mqtt_broker.port}
[sources.plant]
type = "mqtt"
host = "127.0.0.1"
port = {closed_port}
payload = "json"
fields = ["level"]
topics = {{"plant/t" = "t"}}
[sources.cell]
type = "mqtt"
host = "127.0.0.1"
port = {mqtt_broker.port}
username = "cell"
password_file = "credential:cell-mqtt"
payload = "json"
fields = ["level"]
topics = {{"cell/t" = "u"}}
""")
    assert run_doctor(argparse.Namespace(config=config, json=False)) == 0  # warnings do not block
    out = capsys.readouterr().out
    # a systemd credential outside the unit: the port is checked, the login is not tried, and it says why
    assert re.search(rf"WARN +source cell broker +broker 127\.0\.0\.1:{mqtt_broker.port} accepts "
                     r"connections; the login was not tried: .*CREDENTIALS_DIRECTORY is not set", out), out
    assert re.search(rf"OK +upstream broker +broker 127\.0\.0\.1:{mqtt_broker.port} accepts the agent's "
                     r"login \(MQTT 3\.1\.1, no TLS, no username\)", out)
    assert re.search(rf"WARN +source plant broker +broker 127\.0\.0\.1:{closed_port} not reachable: "
                     "Connection refused", out)
    assert "the agent keeps retrying meanwhile" in out
    text = config.read_text().replace('[mqtt]\nhost = "127.0.0.1"', '[mqtt]\nhost = "broker.invalid"')
    config.write_text(text)
    assert run_doctor(argparse.Namespace(config=config, json=False)) == 0
    assert re.search(r"WARN +upstream broker +broker broker\.invalid:\d+ not reachable: cannot resolve "
                     r"broker\.invalid", capsys.readouterr().out)


def test_doctor_logs_in_as_the_agent_would(tmp_path: Path, pty_pair: PtyPair,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The broker check is a real MQTT login with the config's username, password file and TLS files: a
    wrong password, a missing client certificate and a plain connection to the TLS port are each named,
    where a TCP check would have said "accepts connections" to all of them."""
    make_keypair(tmp_path / "keys")
    (tmp_path / "state").mkdir()
    (tmp_path / "seed.bundle").write_bytes(b"")
    pki = tls_broker(tmp_path / "broker")
    try:
        (tmp_path / "password").write_text(f"{pki.password}\n")
        (tmp_path / "wrong").write_text("not-the-password\n")
        base = _config(tmp_path, pty_pair.device).read_text()

        def doctor(mqtt_table: str) -> str:
            config = tmp_path / "agent.toml"
            config.write_text(base + f"""
[mqtt]
host = "localhost"
port = {pki.broker.port}
protocol = "5"
{mqtt_table}""")
            assert run_doctor(argparse.Namespace(config=config, json=False)) == 0  # warnings do not block
            return capsys.readouterr().out

        tls = f"""[mqtt.tls]
ca = "{pki.ca}"
cert = "{pki.cert}"
key = "{pki.key}"
"""
        where = rf"upstream broker +broker localhost:{pki.broker.port}"
        out = doctor(f'username = "{pki.username}"\npassword_file = "password"\n' + tls)
        assert re.search(rf"OK +{where} accepts the agent's login \(MQTT 5, TLS, user 'gw-7'\)", out)

        out = doctor(f'username = "{pki.username}"\npassword_file = "wrong"\n' + tls)
        assert re.search(rf"WARN +{where} refused the login: .*\(user 'gw-7', client id "
                         r"'edge-agent-gw1-doctor'\)", out), out
        assert "check username and password_file" in out
        assert "not-the-password" not in out
        assert pki.password not in out

        no_certificate = tls.replace(f'cert = "{pki.cert}"\nkey = "{pki.key}"\n', "")
        out = doctor(f'username = "{pki.username}"\npassword_file = "password"\n' + no_certificate)
        # TLS 1.3: the broker checks the client certificate after the handshake and closes; TLS 1.2 fails it
        assert re.search(rf"WARN +{where} (closed the connection without answering the login|TLS handshake "
                         "failed)", out), out
        assert "client certificate (tls cert/key)" in out

        wrong_ca = tls.replace(f'ca = "{pki.ca}"', f'ca = "{pki.cert}"')  # a certificate, not the CA
        out = doctor(f'username = "{pki.username}"\npassword_file = "password"\n' + wrong_ca)
        assert re.search(rf"WARN +{where} TLS handshake failed: the broker's certificate does not verify",
                         out), out
        assert ("check that `ca` signs the broker's certificate and that the certificate names "
                "'localhost'") in out
        (tmp_path / "garbage.pem").write_text("not a certificate\n")
        garbage_ca = tls.replace(f'ca = "{pki.ca}"', f'ca = "{tmp_path / "garbage.pem"}"')
        out = doctor(f'username = "{pki.username}"\npassword_file = "password"\n' + garbage_ca)
        assert re.search(rf"WARN +{where} the TLS files cannot be loaded", out), out
        assert "check ca, cert and key in [mqtt.tls]" in out

        out = doctor(f'username = "{pki.username}"\npassword_file = "password"\n')  # no TLS
        assert re.search(rf"WARN +{where} (closed the connection without answering the login|reset the "
                         "connection)", out), out
        assert "TLS on this port" in out or "TLS is not configured" in out
    finally:
        pki.broker.stop()


def test_the_probe_ids_never_take_a_configured_client_id(tmp_path: Path, pty_pair: PtyPair) -> None:
    """A source `src-1` beside an upstream client called `src-1-doctor` on the same broker: the source's
    probe must not log in as the running upstream client."""
    from edge_agent.config import AgentConfig
    from edge_agent.doctor import requirements_from_config

    config = _config(tmp_path, pty_pair.device)
    config.write_text(config.read_text() + """
[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "src-1-doctor"
[sources.plant]
type = "mqtt"
host = "127.0.0.1"
port = 1883
client_id = "src-1"
payload = "json"
fields = ["level"]
topics = {"plant/t" = "t"}
[sources.cell]
type = "mqtt"
host = "127.0.0.2"
port = 1883
client_id = "src-1-doctor"
payload = "json"
fields = ["level"]
topics = {"cell/t" = "u"}
""")
    targets = {t.what: t.probe_id for t in requirements_from_config(AgentConfig.load(config)).brokers}
    assert targets == {"upstream broker": "src-1-doctor-doctor", "source plant broker": "src-1-doctor-2",
                       "source cell broker": "src-1-doctor-doctor"}  # another broker: no clash there
