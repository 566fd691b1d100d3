"""Run the real agent (`python -m edge_agent.cli run`) against a real bundle, broker and serial port."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from tests.support import wait_until
from tests.support.bundles import build_test_bundle, write_test_public_key

REPO = Path(__file__).resolve().parents[2]
CHANNELS = ("flow", "pressure")
MEANS = (10.0, 5.0)
STDS = (1.0, 0.5)
PERIOD = 0.1
IDENTITY = {"site": "s1", "area": "a1", "line": "l1", "id": "gw1"}


def make_bundle(tmp_path: Path, version: str = "1.0.0", **overrides: Any) -> tuple[Path, Path]:
    """A signed test bundle (model `pump`, channels flow/pressure, window 8, stride 4, 10 Hz) and its
    trusted-keys directory. Debounce 1 of 1, close after 2 windows below, so tests stay short. No
    `flatline` channels: `line`'s normal readings sit exactly at the means (score 0), which is a flat line;
    the flat-line check has its own tests (pass `flatline=` to have it)."""
    keys = tmp_path / "keys"
    write_test_public_key(keys)
    options: dict[str, Any] = {"debounce": {"k": 1, "n": 1, "clear_windows": 2},
                               "flatline": {"channels": [], "healthy_windows": 0}}
    options.update(overrides)
    path = build_test_bundle(tmp_path / "bundles", channels=CHANNELS, window_length=8, stride=4,
                             sample_period_s=PERIOD, means=MEANS, stds=STDS, version=version, **options)
    return path, keys


def write_config(tmp_path: Path, state_dir: Path, bundle: Path, keys: Path, sources: dict[str, Any],
                 assets: dict[str, Any], mqtt: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    document: dict[str, Any] = {
        "state_dir": str(state_dir), "status_interval_s": 0.2,
        "gateway": IDENTITY, "bundle": {"path": str(bundle), "trusted_keys": str(keys)},
        "sources": sources, "assets": assets, "decisions": {"update_interval_s": 3600.0},
        "logging": {"level": "info", "format": "text"},
    }
    if mqtt is not None:
        document["mqtt"] = mqtt
    document.update(extra or {})
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(document))
    return path


def line(ts: float, anomalous: bool = False) -> str:
    """A CSV line `ts,flow,pressure` at the model's means (score 0), or with flow 8 std high."""
    flow = MEANS[0] + (8 * STDS[0] if anomalous else 0.0)
    return f"{ts:.3f},{flow},{MEANS[1]}"


def serial_source(device: str) -> dict[str, Any]:
    return {"type": "serial", "device": device, "format": "csv", "columns": ["ts", "flow", "pressure"],
            "timestamp_field": "ts"}


def serial_asset(source: str = "line1") -> dict[str, Any]:
    return {"model": "pump", "source": source, "channels": {"flow": "flow", "pressure": "pressure"}}


class AgentProcess:
    """The agent as a child process; its log goes to `log_path`."""

    def __init__(self, config: Path, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.state_dir = state_dir
        self.log_path = config.parent / f"agent-{time.monotonic_ns()}.log"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Ready = the status file names this process (written once models are loaded and the DB open)."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            return self.status().get("pid") == self.proc.pid
        wait_until(ready, timeout, "agent ready")

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        """`wait_until`, failing with the agent's log and status so a timeout explains itself."""
        try:
            wait_until(predicate, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\nstatus: {self.status()}\nagent log:\n{self.log()[-4000:]}") from exc

    def source_state(self, name: str) -> str | None:
        return (self.status().get("sources") or {}).get(name, {}).get("state")

    def counters(self) -> dict[str, int]:
        return self.status().get("counters") or {}

    def backlog(self) -> int:
        with sqlite3.connect(f"file:{self.state_dir / 'agent.db'}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM outbox WHERE delivered_ts IS NULL"
                                    " AND rejected IS NULL").fetchone()[0])

    def outbox_ids(self) -> list[str]:
        with sqlite3.connect(f"file:{self.state_dir / 'agent.db'}?mode=ro", uri=True) as conn:
            return [row[0] for row in conn.execute("SELECT alert_id FROM outbox ORDER BY seq")]

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()
