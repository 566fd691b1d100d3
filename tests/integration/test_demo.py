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


def test_the_summary_takes_a_flat_lined_channel_as_the_cause_and_names_open_episodes() -> None:
    """Pure summary logic on hand-made alerts: a stuck sensor's alert names the channel in
    `root_cause.flat` (its share rank can put another first); an episode without a close is listed."""
    demo = _load_demo()

    def alert(state: str, episode: str, asset: str, end: str, channels: list[str],
              flat: list[str] | None = None) -> dict:
        root = {"channels": [{"channel": c, "share": 0.5} for c in channels], "peak_time": end}
        if flat:
            root["flat"] = flat
        return {"state": state, "episode_id": episode, "asset": asset, "window": {"start": end, "end": end},
                "root_cause": root}

    truth = [{"asset": "pump-1", "kind": "stuck_sensor", "channels": ["flow"],
              "start_ts": 1_767_312_000.0, "end_ts": 1_767_312_090.0},
             {"asset": "pump-2", "kind": "cavitation", "channels": ["suction_pressure"],
              "start_ts": 1_767_312_200.0, "end_ts": 1_767_312_300.0}]
    alerts = [alert("open", "e1", "pump-1", "2026-01-02T00:00:41Z", ["vibration_rms", "flow"], ["flow"]),
              alert("close", "e1", "pump-1", "2026-01-02T00:01:50Z", ["vibration_rms", "flow"], ["flow"]),
              alert("open", "e2", "pump-2", "2026-01-02T00:03:30Z", ["suction_pressure"])]
    summary = demo.summarise(truth, alerts, grace_s=60.0)
    assert [(f["detected"], f["top_root_cause"], f["root_cause_right"]) for f in summary["faults"]] == [
        (True, "flow", True), (True, "suction_pressure", True)]
    assert summary["faults"][0]["detection_delay_s"] == 41.0
    assert summary["episodes_open_at_end"] == [
        {"asset": "pump-2", "episode_id": "e2", "opened_window_end": "2026-01-02T00:03:30Z"}]
    assert summary["false_alert_episodes"] == 0
