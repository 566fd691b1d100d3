"""`edge-agent run` says "cannot start" only for start-up failures, and "crashed" for a runtime crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent import supervisor as supervisor_module
from edge_agent.cli import main
from tests.integration.agent_harness import (
    AgentProcess,
    make_bundle,
    serial_asset,
    serial_source,
    write_config,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _restore_root_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_missing_bundle_is_a_start_up_failure(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, tmp_path / "state", tmp_path / "missing.bundle", keys,
                          {"line1": serial_source("/dev/null")}, {"pump-3": serial_asset()})
    assert main(["run", "--config", str(config)]) == 1
    err = capfd.readouterr().err
    assert "cannot start" in err
    assert "missing.bundle" in err


def test_a_failure_after_ready_is_reported_as_a_crash(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, keys = make_bundle(tmp_path)
    config = write_config(tmp_path, tmp_path / "state", bundle, keys, {"line1": serial_source("/dev/null")},
                          {"pump-3": serial_asset()})

    async def run_then_fail(self: supervisor_module.Supervisor) -> int:
        self.ever_ready = True  # as after READY=1
        raise RuntimeError("boom while running")

    monkeypatch.setattr(supervisor_module.Supervisor, "run", run_then_fail)
    assert main(["run", "--config", str(config)]) == 1
    err = capfd.readouterr().err
    assert "agent crashed: boom while running" in err
    assert "cannot start" not in err


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """A hand-started `edge-agent run` next to the service would share the database and the MQTT client id
    and delete the service's pid file when it exits: it is refused, and the running agent is untouched."""
    bundle, keys = make_bundle(tmp_path)
    state = tmp_path / "state"
    config = write_config(tmp_path, state, bundle, keys, {"line1": serial_source("/dev/null")},
                          {"pump-3": serial_asset()})
    first = AgentProcess(config, state)
    try:
        first.wait_ready()
        assert main(["run", "--config", str(config)]) == 1
        err = capfd.readouterr().err
        assert "cannot start" in err
        assert f"another agent (pid {first.proc.pid}) is running with this state directory" in err
        assert (state / "agent.pid").read_text().strip() == str(first.proc.pid)  # still the first one's
        assert first.proc.poll() is None
    finally:
        assert first.stop() == 0
    assert not (state / "agent.pid").exists()
    # the lock goes with the process: the next agent starts
    second = AgentProcess(config, state)
    try:
        second.wait_ready()
    finally:
        assert second.stop() == 0
