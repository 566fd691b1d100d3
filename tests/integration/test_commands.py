"""`edge-agent check-config` and `edge-agent status` from the command line."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from edge_agent.cli import main
from tests.integration.agent_harness import (
    AgentProcess,
    line,
    make_bundle,
    serial_asset,
    serial_source,
    write_config,
)
from tests.support.serial_ports import PtyPair

pytestmark = pytest.mark.integration


def test_check_config_exit_codes(tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    assert main(["check-config", "--config", str(config)]) == 0
    assert "OK (1 source, 1 asset)" in capsys.readouterr().out
    # the bundle's model has channels flow + pressure: an asset mapping only one is refused
    text = config.read_text()
    config.write_text(text.replace('pressure = "pressure"', ""))
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert ("assets -> pump-3 -> channels: asset 'pump-3': channels do not match model 'pump' "
            "(missing pressure)") in err
    config.write_text(text.replace("[gateway]", "[gateway]\ncolour = 1"))
    assert main(["check-config", "--config", str(config)]) == 1
    assert f"{config}: gateway -> colour: unknown key (value: 1)" in capsys.readouterr().err
    config.write_text(text.replace(str(keys), str(tmp_path / "no-keys")))
    assert main(["check-config", "--config", str(config)]) == 1
    assert (f"{config}: bundle -> trusted_keys: {tmp_path / 'no-keys'}: cannot read public key: No such file "
            f"or directory (value: '{tmp_path / 'no-keys'}')") in capsys.readouterr().err


def test_check_config_without_any_bundle_fails_like_run(tmp_path: Path, state_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No bundle installed and no `[bundle] path`: `run` cannot start, so the unit's ExecStartPre must not
    pass either (it used to say OK, and systemd then restarted a failing agent); `--no-bundle` checks the
    file alone."""
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    config.write_text(config.read_text().replace(f'path = "{bundle}"\n', ""))
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"bundle -> path: no bundle installed in {state_dir / 'bundles' / 'active'}" in err
    assert "`edge-agent bundle install FILE --config CONFIG` installs one" in err
    assert main(["check-config", "--no-bundle", "--config", str(config)]) == 0
    assert "OK (1 source, 1 asset)" in capsys.readouterr().out


def test_check_config_reads_replay_recordings(tmp_path: Path, state_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A replay source with `fields` given is not read when the config loads (so `status` works while a
    recording is away), but `check-config` (the unit's ExecStartPre) reads its header."""
    bundle, keys = make_bundle(tmp_path)
    recording = tmp_path / "rec.csv"
    source = {"type": "replay", "path": str(recording), "fields": ["flow", "pressure"],
              "timestamp_field": "ts"}
    config = write_config(tmp_path, state_dir, bundle, keys, {"rec": source}, {"pump-3": serial_asset("rec")})
    assert main(["check-config", "--config", str(config)]) == 1
    assert (f"{config}: sources -> rec -> path: cannot read replay file: No such file or directory "
            f"(value: '{recording}')") in capsys.readouterr().err
    recording.write_text("ts,flow,pres\n0,1,2\n")
    assert main(["check-config", "--config", str(config)]) == 1
    assert ("sources -> rec -> fields: column(s) not in " + str(recording) + " (columns: ts, flow, pres) "
            "(value: ['pressure'])") in capsys.readouterr().err
    recording.write_text("time,flow,pressure\n0,1,2\n")
    assert main(["check-config", "--config", str(config)]) == 1
    assert "sources -> rec -> timestamp_field: no such column" in capsys.readouterr().err
    recording.write_text("ts,flow,pressure\n0,1,2\n")
    assert main(["check-config", "--config", str(config)]) == 0


def test_check_config_says_which_delimiter_a_replay_recording_needs(tmp_path: Path, state_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A ';'-separated recording (SKAB's format) under a replay source left at the default ',': check-config
    names the `delimiter` to set, and passes once it is set."""
    bundle, keys = make_bundle(tmp_path)
    recording = tmp_path / "event3.csv"
    recording.write_text("datetime;flow;pressure\n2020-03-09 10:14:33;1.5;2.5\n")
    source = {"type": "replay", "path": str(recording), "fields": ["flow", "pressure"],
              "timestamp_field": "datetime", "timestamp_format": "iso8601"}
    config = write_config(tmp_path, state_dir, bundle, keys, {"rec": source}, {"pump-3": serial_asset("rec")})
    assert main(["check-config", "--config", str(config)]) == 1
    assert (f"{config}: sources -> rec -> timestamp_field: no such column in {recording} (columns: "
            "datetime;flow;pressure) (the file looks ';'-separated, not ','-separated; set sources -> rec -> "
            "delimiter = \";\") (value: 'datetime')") in capsys.readouterr().err
    config.write_text(config.read_text().replace('type = "replay"', 'type = "replay"\ndelimiter = ";"'))
    assert main(["check-config", "--config", str(config)]) == 0
    assert "OK (1 source, 1 asset)" in capsys.readouterr().out


def test_status_reports_running_agent(tmp_path: Path, pty_pair: PtyPair, state_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()})
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
        # pyserial empties the input buffer when it opens the port: write once the source has it open
        agent.wait(lambda: agent.source_state("line1") == "connected", 10, "serial port open")
        t0 = time.time()
        for i in range(12):
            pty_pair.write_line(line(t0 + i * 0.1))
        pty_pair.write_line("garbage")
        agent.wait(lambda: agent.counters().get("readings_invalid") == 1, 10, "status updated")
        assert main(["status", "--json", "--config", str(config)]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True
        assert status["bundle"]["version"] == "1.0.0"
        assert status["assets"]["pump-3"]["state"] == "normal"
        assert status["assets"]["pump-3"]["last_score"] is not None
        assert status["sources"]["line1"]["state"] == "connected"
        assert status["outbox_backlog"] == 0
        assert status["open_episodes"] == []
        assert status["flatline"] == {"enabled": True, "models": {"pump": []}}  # the harness bundle's list
        assert main(["status", "--config", str(config)]) == 0
        text = capsys.readouterr().out
        assert "agent: running" in text
        assert "flat-line check: on (pump: no channel)" in text
        assert "upstream: console " in text  # not the class name (status.json keeps "ConsoleSink")
        assert re.search(r"asset pump-3: model pump score [0-9.e+-]+ / [0-9.e+-]{1,10} state normal", text)
        assert "source line1 (serial): connected, received" in text
        assert agent.stop() == 0
        assert main(["status", "--json", "--config", str(config)]) == 0
        assert json.loads(capsys.readouterr().out)["running"] is False
        assert main(["status", "--config", str(config)]) == 0
        text = capsys.readouterr().out
        assert "agent: not running" in text
        assert "source line1 (serial): connected (when it last ran), received" in text
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_status_names_an_unreadable_database_and_status_file(tmp_path: Path, state_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "status.json").write_text(json.dumps({"pid": 1, "sources": ["not", "a", "table"],
                                                       "assets": {"pump-3": 7}}))
    (state_dir / "agent.db").write_text("garbage, not SQLite\n")
    assert main(["status", "--config", str(config)]) == 1
    text = capsys.readouterr().out
    assert f"state database unreadable: {state_dir / 'agent.db'}: file is not a database" in text
    assert "asset pump-3: model None" in text  # the parts that are not what the agent writes: left out
    assert main(["status", "--json", "--config", str(config)]) == 1
    assert "file is not a database" in json.loads(capsys.readouterr().out)["database_error"]
    (state_dir / "status.json").write_text("[1, 2]")
    assert main(["status", "--config", str(config)]) == 1
    assert "expected a JSON object, got list" in capsys.readouterr().out


def test_status_says_when_a_running_agent_cannot_write_its_status(tmp_path: Path, state_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """On a full or read-only state disk the agent runs without a pid file and its status file stops
    changing: `status` tells it runs by its instance lock and says the file is stale (exit 1)."""
    from edge_agent.config import AgentConfig
    from edge_agent.supervisor import _hold_instance_lock

    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})  # status_interval_s 0.2
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = _hold_instance_lock(AgentConfig.load(config))  # this process plays the running agent
    try:
        assert main(["status", "--json", "--config", str(config)]) == 1
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True
        assert status["stale"].startswith("no status file, though the agent writes it every 0.2 s: it cannot")
        assert "error" not in status
        # just started (a fresh pid file), no status written yet: starting, not stale
        pid_file = state_dir / "agent.pid"
        pid_file.write_text(f"{os.getpid()}\n")
        assert main(["status", "--config", str(config)]) == 0
        assert "agent: starting (no status written yet by this start)" in capsys.readouterr().out
        # started long ago, the status file stopped changing a minute ago
        long_ago = time.time() - 600
        os.utime(pid_file, (long_ago, long_ago))
        written = {"pid": os.getpid(), "updated_at": time.time() - 60}
        (state_dir / "status.json").write_text(json.dumps(written))
        assert main(["status", "--config", str(config)]) == 1
        text = capsys.readouterr().out
        assert "agent: running, updated 60 s ago" in text
        assert "STALE: the status file is 60 s old, though the agent writes it every 0.2 s" in text
        # the pid file and status name a stopped agent (a read-only disk kept them): the lock still tells
        dead = subprocess.Popen(["true"])
        dead.wait()
        pid_file.write_text(f"{dead.pid}\n")
        os.utime(pid_file, (long_ago, long_ago))
        (state_dir / "status.json").write_text(json.dumps({"pid": dead.pid, "updated_at": long_ago}))
        assert main(["status", "--json", "--config", str(config)]) == 1
        status = json.loads(capsys.readouterr().out)
        assert status["running"] is True
        assert status["stale"].startswith("the status file is 600 s old")
    finally:
        for fd in lock:
            os.close(fd)
    assert main(["status", "--json", "--config", str(config)]) == 0  # stopped: an old file is no news
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is False
    assert "stale" not in status


def test_status_of_a_stopped_agent_shows_its_last_asset_states_and_calls_none_silent(
        tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped agent's status file keeps the verdicts of its last write, an asset's silence included:
    `status` shows the states as of that time and flags no silence (nothing was due since it stopped); exit
    0, as for any stopped agent. The same file of a running agent is flagged `SILENT`."""
    from edge_agent.config import AgentConfig
    from edge_agent.supervisor import _hold_instance_lock

    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    state_dir.mkdir(parents=True, exist_ok=True)
    stopped = subprocess.Popen(["true"])
    stopped.wait()
    (state_dir / "agent.pid").write_text(f"{stopped.pid}\n")
    written_at = time.time() - 120
    asset = {"model": "pump", "last_score": 2.5, "threshold": 1.5, "state": "alert", "severity": "warning",
             "stale_windows": 0, "last_window_age_s": 10.0, "silent": True}
    written = {"pid": stopped.pid, "updated_at": written_at, "assets": {"pump-3": asset}}
    (state_dir / "status.json").write_text(json.dumps(written))
    assert main(["status", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(written_at))
    assert re.fullmatch(rf"agent: not running; the states below are as of {stamp} \(\d+ s ago\), when it "
                        "last ran", lines[0]), lines[0]
    assert ("asset pump-3: model pump score 2.5 / 1.5 state alert warning (when it last ran) stale windows "
            "0") in lines
    assert not [line for line in lines if "SILENT" in line]
    assert main(["status", "--json", "--config", str(config)]) == 0  # the file as written, with running
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is False
    assert status["assets"]["pump-3"]["silent"] is True
    # a running agent (this process holds its lock) with a fresh status: its silent asset is flagged
    lock = _hold_instance_lock(AgentConfig.load(config))
    try:
        (state_dir / "agent.pid").write_text(f"{os.getpid()}\n")
        (state_dir / "status.json").write_text(json.dumps({**written, "pid": os.getpid(),
                                                           "updated_at": time.time()}))
        assert main(["status", "--config", str(config)]) == 0
        assert ("asset pump-3: model pump score 2.5 / 1.5 state alert warning stale windows 0; SILENT: no "
                "window scored for 10 s") in capsys.readouterr().out.splitlines()
    finally:
        for fd in lock:
            os.close(fd)


def test_status_of_a_stopped_agent_with_a_malformed_time_still_prints() -> None:
    """status.json is read, not trusted: an `updated_at` that is no time (NaN, which json accepts, a year
    past 9999, a boolean) leaves the "as of" out instead of failing."""
    from edge_agent.commands import format_status

    for updated in (math.nan, 1e20, True, "yesterday"):
        text = format_status({"running": False, "updated_at": updated})
        assert text.splitlines()[0] == "agent: not running", updated


def test_run_names_a_state_directory_it_cannot_write(tmp_path: Path) -> None:
    bundle, keys = make_bundle(tmp_path)
    state_dir = Path("/proc/edge-agent-test")  # cannot be created, not even by root
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    agent = AgentProcess(config, state_dir)
    try:
        assert agent.proc.wait(30) == 1
        assert (f"cannot start: {config}: state_dir: cannot write the state directory: No such file or "
                f"directory") in agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_every_config_command_takes_the_config_from_the_environment_by_default(
        tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`status`, `check-config`, `doctor` and `bundle list` without `--config`: `$EDGE_AGENT_CONFIG`, as the
    bundle commands always did (else /etc/edge-agent/agent.toml)."""
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source("/dev/ttyUSB9")},
                          {"pump-3": serial_asset()})
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(config))
    assert main(["check-config"]) == 0
    assert main(["status", "--json"]) == 1  # the agent never ran here: no status file
    assert f"no status file at {state_dir / 'status.json'}" in capsys.readouterr().out
    main(["doctor"])
    out = capsys.readouterr().out
    assert f"file(s) in {keys}" in out  # it read this config's trusted keys
    # no device_profile in this config: said so, not passed off as x86-64-ipc
    assert "WARN  device profile" in out
    assert "none configured: the agent runs ONNX Runtime on the CPU with one thread" in out
    assert main(["bundle", "list"]) == 0
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["status"]) == 1
    assert f"cannot read config file: No such file or directory (value: '{tmp_path / 'missing.toml'}')" in (
        capsys.readouterr().err)


def test_status_says_why_a_source_or_the_upstream_is_disconnected(tmp_path: Path) -> None:
    """A serial device that is not there: the source's status carries the reason, and `status` prints it
    next to `disconnected` (as it does for the upstream broker's last failure)."""
    import asyncio

    from edge_agent.commands import format_status
    from edge_agent.configtools import Section
    from edge_agent.sources.serial import SerialConfig, SerialSource

    missing = tmp_path / "ttyUSB7"
    source = SerialSource("line1", SerialConfig.from_section(
        Section({"device": str(missing), "format": "kv", "fields": ["a"]}), tmp_path))

    async def briefly() -> None:
        async with source:
            await asyncio.sleep(0.3)

    asyncio.run(briefly())
    described = source.describe()
    assert described["state"] == "disconnected"
    assert described["last_error"].startswith(f"cannot open {missing}: ")
    text = format_status({"running": True, "sources": {"line1": described},
                          "sink": {"kind": "MqttSink", "state": "disconnected",
                                   "last_error": "broker plc:8883 refused the connection (Not authorized)"}})
    assert f"source line1 (serial): disconnected (cannot open {missing}: " in text
    assert "disconnected (broker plc:8883 refused the connection (Not authorized))" in text
