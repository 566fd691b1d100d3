"""`edge-agent doctor` on this machine with a temporary config: a real pty serial device, real state dir."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from edge_agent.doctor import run_doctor
from tests.support.bundles import make_keypair
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
