"""`edge-agent doctor` findings (pure: a fake machine and a fake access check)."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from edge_agent.brokercheck import BrokerAnswer, BrokerTarget, probe_brokers
from edge_agent.doctor import Machine, Requirements, diagnose, report, version_tuple
from edge_agent.profiles import load_profile


def _machine(**changes: object) -> Machine:
    values: dict[str, object] = {
        "onnxruntime_version": "1.32.0", "providers": ("CPUExecutionProvider",), "arch": "x86_64",
        "cpu_count": 4, "mem_total_mb": 8000, "mem_available_mb": 6000, "user": "edge-agent"}
    values.update(changes)
    return Machine(**values)  # type: ignore[arg-type]


def _levels(findings: list) -> dict[str, str]:
    return {f.check: f.level for f in findings}


def test_version_tuple() -> None:
    assert version_tuple("1.17.3") == (1, 17, 3)
    assert version_tuple("1.18.0rc1") == (1, 18, 0)
    assert version_tuple("1.9") < version_tuple("1.17")


def test_a_ready_machine_has_no_blocking_finding(state_dir: Path) -> None:
    req = Requirements(state_dir=state_dir, profile=load_profile("x86-64-ipc"), active_bundle="pumps 1.0.0")
    findings = diagnose(req, _machine())
    assert not [f for f in findings if f.level == "fail"]
    assert _levels(findings)["execution provider"] == "warn"  # optional OpenVINO
    assert "0 blocking problem(s), 1 warning(s)" in report(findings)


def test_jetson_profile_on_a_cpu_only_box_blocks(state_dir: Path) -> None:
    req = Requirements(state_dir=state_dir, profile=load_profile("jetson-orin"))
    findings = diagnose(req, _machine(cpu_count=2, mem_total_mb=1000))
    fails = {f.message for f in findings if f.level == "fail"}
    assert ("profile jetson-orin requires CUDAExecutionProvider, which this onnxruntime build does not "
            "provide") in fails
    assert "2 CPU(s) usable, profile jetson-orin needs 4" in fails
    assert "1000 MB in total, less than the profile's budget of 2048 MB" in fails
    assert _levels(findings)["architecture"] == "warn"


def test_devices_missing_or_not_accessible(tmp_path: Path, state_dir: Path) -> None:
    controller, device = os.openpty()  # a real character device (a pty), like an adapter's tty
    present = os.ttyname(device)
    try:
        req = Requirements(state_dir=state_dir, profile=load_profile("arm64-rpi"),
                           serial_devices=(present, str(tmp_path / "ttyUSB9")), audio_needed=False)
        findings = diagnose(req, _machine(arch="aarch64"), access=lambda _path, _mode: False)
    finally:
        os.close(controller)
        os.close(device)
    by_check = {f.check: f for f in findings}
    denied = by_check[f"serial device {present}"]
    assert (denied.level, denied.message) == ("fail", "not accessible to user edge-agent")
    assert "usermod -aG dialout edge-agent" in denied.fix
    assert by_check[f"serial device {tmp_path / 'ttyUSB9'}"].message == "not present"


def test_a_serial_device_that_is_a_file_or_a_directory_fails(tmp_path: Path, state_dir: Path) -> None:
    """A typo'd path that happens to exist passed as "present and accessible"; the agent then retried
    opening it forever ("Inappropriate ioctl for device")."""
    regular = tmp_path / "ttyUSB0.log"
    regular.write_text("")
    req = Requirements(state_dir=state_dir, profile=load_profile("x86-64-ipc"),
                       serial_devices=(str(regular), str(tmp_path)), audio_needed=False)
    by_check = {f.check: f for f in diagnose(req, _machine(), access=lambda _path, _mode: True)}
    assert (by_check[f"serial device {regular}"].level,
            by_check[f"serial device {regular}"].message) == ("fail", "a regular file, not a serial device")
    assert by_check[f"serial device {tmp_path}"].message == "a directory, not a serial device"
    assert "/dev/serial/by-id/" in by_check[f"serial device {tmp_path}"].fix


def test_state_dir_and_keys_and_bundle(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    req = Requirements(state_dir=tmp_path / "nope" / "state", profile=load_profile("x86-64-ipc"),
                       trusted_keys_dir=keys, bundle_file=tmp_path / "missing.bundle")
    by_check = {f.check: f for f in diagnose(req, _machine())}
    assert by_check["state directory"].level == "warn"  # can be created
    assert by_check["trusted keys"].level == "fail"
    assert by_check["bundle"].message.startswith("no bundle installed and [bundle] path")
    assert "edge-agent bundle install" in by_check["bundle"].fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_state_dir(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    req = Requirements(state_dir=locked, profile=load_profile("x86-64-ipc"))
    by_check = {f.check: f for f in diagnose(req, _machine())}
    assert by_check["state directory"].level == "fail"


def test_old_onnxruntime_blocks(state_dir: Path) -> None:
    req = Requirements(state_dir=state_dir, profile=load_profile("x86-64-ipc"), min_onnxruntime="1.20")
    by_check = {f.check: f for f in diagnose(req, _machine(onnxruntime_version="1.16.3"))}
    assert by_check["onnxruntime"].level == "fail"
    assert by_check["onnxruntime"].fix == "pip install 'onnxruntime>=1.20'"


def test_an_upstream_on_mqtt_3_1_1_is_a_warning(state_dir: Path) -> None:
    """3.1.1 brokers acknowledge alerts their ACL refuses: the agent cannot see them dropped."""
    base = {"state_dir": state_dir, "profile": load_profile("x86-64-ipc"), "active_bundle": "pumps 1.0.0"}

    def upstream(protocol: str | None) -> list:
        req = Requirements(**base, upstream_protocol=protocol)  # type: ignore[arg-type]
        return [f for f in diagnose(req, _machine()) if f.check == "upstream"]

    fix = 'set protocol = "5" in [mqtt]: refused alerts are then kept and reported'
    assert [(f.level, f.fix) for f in upstream("3.1.1")] == [("warn", fix)]
    assert [f.level for f in upstream("5")] == ["ok"]
    assert upstream(None) == []  # no [mqtt]: alerts go to the console


def test_brokers_are_probed_once_each_and_together_within_a_deadline() -> None:
    """One probe per distinct broker, all at once; one that hangs (a dead resolver) reads as no answer at the
    deadline instead of holding the doctor for its own timeouts."""
    calls: list[tuple[str, int]] = []
    release = threading.Event()

    def reach(target: BrokerTarget) -> BrokerAnswer:
        calls.append((target.host, target.port))
        if target.host == "hangs.example":
            release.wait(10)
            return BrokerAnswer(True, "accepts connections")
        return BrokerAnswer(target.port == 1883, "accepts connections" if target.port == 1883 else
                            "not reachable: Connection refused")

    a, b, hangs = (BrokerTarget("upstream broker", "a", 1883), BrokerTarget("source s broker", "b", 8883),
                   BrokerTarget("source h broker", "hangs.example", 1883))
    try:
        found = probe_brokers([a, a, b, hangs], reach, deadline_s=0.5)
    finally:
        release.set()  # only now: the hanging probe was still running when the answer came
    assert sorted(calls) == [("a", 1883), ("b", 8883), ("hangs.example", 1883)]
    assert [(answer.ok, answer.message) for answer in found.values()] == [
        (True, "accepts connections"), (False, "not reachable: Connection refused"),
        (False, "not reachable: no answer in 0.5 s")]
    assert "`getent hosts hangs.example`" in found[hangs].fix


def test_little_free_space_on_the_state_dir_is_a_warning(state_dir: Path) -> None:
    from edge_agent.doctor import MIN_FREE_MIB, _state_dir_finding

    low = _state_dir_finding(state_dir, free_mib=lambda _path: 12.4)
    assert low.level == "warn"
    assert "only 12 MiB free" in low.message
    assert "max_rows" in low.fix
    plenty = _state_dir_finding(state_dir, free_mib=lambda _path: MIN_FREE_MIB + 1.0)
    assert plenty.level == "ok"
    real = _state_dir_finding(state_dir)  # this machine's filesystem, read with statvfs
    assert re.search(r"is writable,( but its filesystem has only)? \d+ MiB free", real.message)


def test_the_probe_never_uses_a_client_id_the_config_uses_on_that_broker() -> None:
    from edge_agent.brokercheck import probe_client_id

    assert probe_client_id("edge-agent-gw1", {"edge-agent-gw1"}) == "edge-agent-gw1-doctor"
    # a source "src-1" beside an upstream client that is itself called "src-1-doctor": no takeover
    assert probe_client_id("src-1", {"src-1", "src-1-doctor"}) == "src-1-doctor-2"
    assert probe_client_id("src-1", {"src-1", "src-1-doctor", "src-1-doctor-2"}) == "src-1-doctor-3"
    assert probe_client_id("", {""}) == ""  # broker-assigned stays broker-assigned


def test_a_broker_that_never_answers_the_login_is_named_within_one_budget() -> None:
    """TCP accepted, CONNECT never answered: one budget covers the connect and the CONNACK wait."""
    import socket
    import time

    from edge_agent.brokercheck import login_check
    from edge_agent.mqttloop import Login

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        answer = login_check(BrokerTarget("upstream broker", "127.0.0.1", port, "gw-doctor", "5", Login),
                             timeout_s=1.0)
        elapsed = time.monotonic() - started
    assert not answer.ok
    assert answer.message == "did not answer the login in 1 s (client id 'gw-doctor')"
    assert elapsed < 1.6


def test_an_unsupported_mqtt_version_points_at_the_protocol_key() -> None:
    from edge_agent.brokercheck import _refused
    from edge_agent.mqttloop import Login

    answer = _refused(BrokerTarget("upstream broker", "b", 1883, "gw-doctor", "5"), Login("gw", "pw"),
                      "Unsupported protocol version", "client id 'gw-doctor'")
    assert answer.message == ("refused the login: Unsupported protocol version (user 'gw', "
                              "client id 'gw-doctor')")
    assert answer.fix == 'the broker does not speak MQTT 5: set protocol = "3.1.1" in [mqtt]'
    assert "pw" not in repr(Login("gw", "pw"))  # the password never shows in a repr


def test_password_files_lose_surrounding_whitespace_for_both_clients(tmp_path: Path) -> None:
    from edge_agent.configtools import Section
    from edge_agent.sinks.mqtt import MqttUpstreamConfig, upstream_login
    from edge_agent.sources.mqtt import MqttSourceConfig

    (tmp_path / "pw").write_text("s3cret  \r\n")
    sink = MqttUpstreamConfig.from_section(Section({"host": "b", "username": "gw", "password_file": "pw"},
                                                   "mqtt"), tmp_path)
    source = MqttSourceConfig.from_section(Section({"host": "b", "username": "gw", "password_file": "pw",
                                                    "payload": "json", "fields": ["a"],
                                                    "topics": {"t/#": "p"}}, "sources.s"), tmp_path)
    assert upstream_login(sink).password == "s3cret"
    assert source.login("s").password == "s3cret"
