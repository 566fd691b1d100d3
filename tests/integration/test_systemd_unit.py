"""The shipped unit file passes `systemd-analyze verify` silently (when the tool exists)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-agent.service"


def test_unit_verifies_without_output(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's binary exists: point it at this venv's edge-agent
    binary = Path(sys.executable).parent / "edge-agent"
    assert binary.exists(), f"{binary} missing: pip install -e . in the venv"
    text = UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", str(binary))
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.stdout + result.stderr) == ""
    assert result.returncode == 0


def test_unit_has_the_required_settings() -> None:
    settings = {}
    for raw in UNIT.read_text().splitlines():
        if "=" in raw and not raw.lstrip().startswith("#"):
            key, _, value = raw.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["Type"] == ["notify"]
    assert settings["Restart"] == ["on-failure"]
    assert "check-config" in settings["ExecStartPre"][0]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["SupplementaryGroups"] == ["dialout video audio"]
    assert "PrivateDevices" not in settings
    assert any(v.startswith("mqtt-password:") for v in settings["LoadCredential"])


def test_unit_loads_every_credential_the_example_config_names() -> None:
    import re

    example = (UNIT.parents[1] / "docs" / "examples" / "agent.toml").read_text()
    named = set(re.findall(r'"credential:([^"]+)"', example))
    named |= set(re.findall(r'\$\{CREDENTIALS_DIRECTORY\}/([^"]+)"', example))
    loaded = {line.partition("=")[2].split(":")[0] for line in UNIT.read_text().splitlines()
              if line.startswith("LoadCredential=")}
    assert named == {"mqtt-password", "plant-mqtt-password"}
    assert named <= loaded
    assert "DeviceAllow=char-ttyAMA rw" in UNIT.read_text().splitlines()  # Raspberry Pi UART
