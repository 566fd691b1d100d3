"""`edge-agent check-config` and `edge-agent status` from the command line."""

from __future__ import annotations

import json
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
    assert "OK (1 sources, 1 assets)" in capsys.readouterr().out
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


def test_status_reports_running_agent(tmp_path: Path, pty_pair: PtyPair, state_dir: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, state_dir, bundle, keys, {"line1": serial_source(pty_pair.device)},
                          {"pump-3": serial_asset()})
    agent = AgentProcess(config, state_dir)
    try:
        agent.wait_ready()
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
        assert main(["status", "--config", str(config)]) == 0
        text = capsys.readouterr().out
        assert "agent: running" in text
        assert "asset pump-3: model pump score" in text
        assert agent.stop() == 0
        assert main(["status", "--json", "--config", str(config)]) == 0
        assert json.loads(capsys.readouterr().out)["running"] is False
    finally:
        if agent.proc.poll() is None:
            agent.kill()
