"""The gateway install never pulls torch: resolve `pip install .` (no extras) for real; import the agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_without_extras_resolves_no_torch(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    # --ignore-installed: resolve as into an empty virtualenv, whatever this one already holds.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "numpy", "paho-mqtt", "pyserial", "sqlite-utils"} <= names
    assert not names & {"torch", "scipy", "scikit-learn", "matplotlib", "onnx"}


def test_agent_modules_import_without_torch_or_trainer() -> None:
    code = (
        "import sys, pkgutil, importlib, edge_agent\n"
        "for m in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'trainer', 'export'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == ""
