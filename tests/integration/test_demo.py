"""A shortened demo end to end: simulate, train a tiny VAE, export, install, run the agent live, summarise."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_demo():  # scripts/ is not a package: load the demo module from its file
    spec = importlib.util.spec_from_file_location("edge_demo", REPO_ROOT / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_demo"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto not installed (scripts/test.sh installs it)")
def test_short_demo_detects_faults_on_the_right_assets(tmp_path: Path) -> None:
    demo = _load_demo()
    summary_path = tmp_path / "summary.json"
    exit_code = demo.main([
        "--workdir", str(tmp_path / "demo"),
        "--train-hours", "3",
        "--epochs", "6",
        "--live-seconds", "720",
        "--speed", "24",
        "--seed", "3",
        "--fault-kinds", "cavitation,blocked_filter,stuck_sensor",
        "--summary-json", str(summary_path),
    ])
    summary = json.loads(summary_path.read_text())

    assert exit_code == 0
    assert summary["agent_exit_code"] == 0
    assert summary["faults_injected"] == 3
    # Every injected fault raised an alert episode on its own asset, with the faulted channel on top; the
    # stuck sensor through the bundle's flat-line check.
    for fault in summary["faults"]:
        assert fault["detected"], fault
        assert fault["root_cause_right"], fault
    assert summary["false_alert_episodes"] == 0
    # The bundle really went through `bundle install` into the state directory.
    assert (tmp_path / "demo" / "state" / "bundles" / "active").is_symlink()
