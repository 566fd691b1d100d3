"""`edge-agent run | check-config | status`.

- `run --config PATH`: the service (systemd `Type=notify`); exit 0 after SIGTERM, 1 on a fatal error.
- `check-config --config PATH`: validate the file and the bundle `run` would load (the installed one, else
  `[bundle] path`; none is an error) against the assets; exit 0 or print the error naming the key path and
  exit 1. `--no-bundle` checks the file alone. The systemd unit runs it in `ExecStartPre=`.
- `status [--json] --config PATH`: active bundle, per-asset last score and state, open episodes, outbox
  backlog, counters, source states, read from the status file the running agent writes and from its SQLite
  database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.agentstate import agent_lock_held, agent_lock_says_stopped
from edge_agent.configtools import ConfigError, add_config_argument

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<priority>name: message`: journald reads the priority prefix and adds its own timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: {super().format(record)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        document = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
                    "message": record.getMessage()}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def setup_logging(level: str, fmt: str, override: str | None = None) -> None:
    """Configure the root logger from `[logging]` (`--log-level` wins)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((override or level).upper())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `run`, `check-config` and `status` to the `edge-agent` parser."""
    run = subparsers.add_parser("run", help="run the agent (the systemd service)")
    add_config_argument(run)
    run.set_defaults(func=cmd_run)
    check = subparsers.add_parser("check-config", help="validate a config file; exit 0 when valid")
    add_config_argument(check)
    check.add_argument("--no-bundle", action="store_true",
                       help="check the file alone: no bundle needed, assets not checked against one")
    check.set_defaults(func=cmd_check_config)
    status = subparsers.add_parser("status", help="what the running agent is doing")
    add_config_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def _load_config(path: Path) -> AgentConfig | None:
    """The config at `path`, or None after printing why it is invalid (the commands then exit 1)."""
    from edge_agent.config import AgentConfig

    try:
        return AgentConfig.load(path)
    except ConfigError as exc:
        print(f"edge-agent: invalid config: {exc}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.supervisor import Supervisor

    config = _load_config(args.config)
    if config is None:
        return 1
    setup_logging(config.logging.level, config.logging.format, getattr(args, "log_level", None))
    supervisor = Supervisor(config)
    try:
        return asyncio.run(supervisor.run())
    except Exception as exc:  # the error must reach the journal in one line, then systemd restarts us
        if supervisor.ever_ready:  # it ran: a crash, with its traceback
            log.critical("agent crashed: %s", exc, exc_info=True)
        else:
            log.critical("cannot start: %s", exc,
                         exc_info=not isinstance(exc, ConfigError) and log.isEnabledFor(logging.DEBUG))
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    from edge_agent.bundle import BundleError

    config = _load_config(args.config)
    if config is None:
        return 1
    try:
        _check_source_files(config)
        if not args.no_bundle:
            _check_bundle(config)
    except (ConfigError, BundleError) as exc:
        print(f"edge-agent: invalid config: {exc}", file=sys.stderr)
        return 1
    sources, assets = len(config.sources), len(config.assets)
    print(f"{args.config}: OK ({sources} source{'s' * (sources != 1)}, {assets} asset{'s' * (assets != 1)})")
    return 0


def _check_source_files(config: Any) -> None:
    """Files the sources read when they start (replay recordings): readable, with the configured columns."""
    for source in config.sources.values():
        check = getattr(source.settings, "check_file", None)
        if check is not None:
            try:
                check(f"sources -> {source.name}")
            except ConfigError as exc:
                raise (exc.with_source(config.source) if config.source else exc) from None


def _check_bundle(config: Any) -> None:
    """Load the configured bundle as `run` would (signature, integrity, assets vs. models) into a temp dir."""
    import tempfile

    from edge_agent.pipeline import load_bundle

    path = config.bundle_path()  # no bundle at all: `run` could not start (--no-bundle checks the file alone)
    if not path.exists():
        raise ConfigError("bundle -> path", "bundle file does not exist", str(path), config.source)
    with tempfile.TemporaryDirectory(prefix="edge-agent-check-") as tmp:
        load_bundle(config, Path(tmp))


def read_status(config: Any) -> dict[str, Any]:
    """The running agent's status file, with the outbox backlog and episodes taken from the database."""
    status: dict[str, Any] = {"running": False}
    try:
        written = json.loads(config.status_path.read_text())
        if not isinstance(written, dict):
            raise ValueError(f"expected a JSON object, got {type(written).__name__}")
        status.update(written)
    except FileNotFoundError:
        status["error"] = f"no status file at {config.status_path} (has the agent run?)"
    except (OSError, ValueError) as exc:
        status["error"] = f"cannot read {config.status_path}: {exc}"
    try:  # written at each start, before the pipeline opens (bundle, database), which writes the first status
        started: float | None = config.pid_path.stat().st_mtime
    except OSError:
        started = None
    pid = status.get("pid")
    if isinstance(pid, int) and started is not None:
        # the pid alone can name a process that reused it; the agent's instance lock cannot lie
        status["running"] = _alive(pid) and not agent_lock_says_stopped(config.lock_path)
    if not status["running"] and agent_lock_held(config.lock_path):
        # an agent holds the lock but wrote no pid file (a full or read-only state disk took none, and the
        # one there may name a stopped agent), or has not written its first status yet
        status["running"] = True
    updated = status.get("updated_at")
    age = time.time() - updated if isinstance(updated, int | float) else None
    since_start = time.time() - started if started is not None else None
    # no status yet from this start (none at all, or one older than the start)
    starting = (status["running"] and since_start is not None and since_start < STARTUP_GRACE_S
                and (age is None or age > since_start))
    if starting:
        status["starting"] = True
        status.pop("error", None)
    elif status["running"] and (age is None or age > STALE_STATUS_INTERVALS * config.status_interval_s + 5.0):
        written = "no status file" if age is None else f"the status file is {age:.0f} s old"
        if age is None:
            status.pop("error", None)  # "has the agent run?": it runs, this says why there is no file
        status["stale"] = (f"{written}, though the agent writes it every {config.status_interval_s:g} s: it "
                           "cannot (a full or read-only state disk?) or it is stuck. The retained status on "
                           "the upstream broker's status topic is newer (docs/alerts.md)")
    if config.db_path.exists():
        status.update(_from_database(config.db_path))
    return status


STALE_STATUS_INTERVALS = 3  # a running agent's status file older than this many intervals (+ 5 s) is stale
STARTUP_GRACE_S = 60.0  # after a start (the pid file's time), no status file yet is "starting", not stale


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _from_database(path: Path) -> dict[str, Any]:
    """Backlog and persisted counters, read-only (the agent is the one writer)."""
    out: dict[str, Any] = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return {"database_error": f"{path}: {exc}"}
    try:
        pending = "SELECT count(*) FROM outbox WHERE delivered_ts IS NULL AND rejected IS NULL"
        out["outbox_backlog"] = conn.execute(pending).fetchone()[0]
        rejected = "SELECT count(*) FROM outbox WHERE rejected IS NOT NULL"
        out["outbox_rejected"] = conn.execute(rejected).fetchone()[0]
        out["counters_total"] = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    except sqlite3.Error as exc:
        out["database_error"] = f"{path}: {exc}"
    finally:
        conn.close()
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.config import StateDirectory

    config: Any = _load_config(args.config)
    invalid = config is None
    if invalid:  # e.g. a typo saved over a running agent's config: what that agent does is still worth seeing
        config = StateDirectory.of_file(args.config)
        if config is None:
            return 1
        print(f"edge-agent: the status below is read from {config.state_dir}, the state_dir the file names; "
              "the file itself is invalid (above): a running agent keeps its previous config, and a start "
              "with this file fails", file=sys.stderr)
    status = read_status(config)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0 if not invalid and not {"error", "database_error", "stale"} & status.keys() else 1


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


SINK_NAMES = {"MqttUpstream": "MQTT broker", "ConsoleSink": "console"}  # status.json's sink kinds, for people


def _age(value: Any) -> str:
    return f"{value:.0f} s" if isinstance(value, int | float) else "as long as the agent has run"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _flatline_text(flatline: dict[str, Any]) -> str:
    """`on (pump: flow, pressure)`, `off ([decisions] flatline = false)`, or why no channel is watched."""
    if not flatline.get("enabled"):
        return "off ([decisions] flatline = false)"
    models = _table(flatline.get("models"))
    parts = [f"{name}: {', '.join(map(str, channels)) or 'no channel'}" if isinstance(channels, list)
             else f"{name}: none (manifest schema 1)" for name, channels in models.items()]
    return f"on ({'; '.join(parts)})" if parts else "on"


def _stopped_as_of(updated: Any) -> str:
    """When an agent that is not running last wrote its status, as local time and age (nothing when the
    file's `updated_at` is not a time: status is read, never trusted)."""
    if isinstance(updated, bool) or not isinstance(updated, int | float) or not math.isfinite(updated):
        return ""
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(updated))
    except (OverflowError, OSError, ValueError):
        return ""
    return f"; the states below are as of {stamp} ({time.time() - updated:.0f} s ago), when it last ran"


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status (parts of a status file that are not what the agent writes are left out).
    Asset and connection states of an agent that is not running are what they were when it last wrote its
    status; its assets are not called silent, since nothing has scored them since it stopped."""
    lines = []
    running_now = bool(status.get("running"))
    then = "" if running_now else " (when it last ran)"
    if "error" in status:
        lines.append(status["error"])
    if "database_error" in status:
        lines.append(f"state database unreadable: {status['database_error']}")
    updated = status.get("updated_at")
    if running_now:
        age = f", updated {time.time() - updated:.0f} s ago" if isinstance(updated, int | float) else ""
    else:
        age = _stopped_as_of(updated)
    running = "running" if running_now else "not running"
    if status.get("starting"):
        running, age = "starting", " (no status written yet by this start)"
    lines.append(f"agent: {running}{age}")
    if status.get("stale"):
        lines.append(f"STALE: {status['stale']}")
    rejected = _table(status.get("reload_rejected"))
    if rejected:
        lines.append(f"RELOAD REJECTED at {rejected.get('at')}: {rejected.get('error')}; the agent runs on "
                     "its previous config, and a restart with the file as it is fails")
    bundle = _table(status.get("bundle"))
    lines.append(f"bundle: {bundle.get('name', '-')} {bundle.get('version', '')}".rstrip())
    flatline = _table(status.get("flatline"))
    if flatline:
        lines.append(f"flat-line check: {_flatline_text(flatline)}")
    sink = _table(status.get("sink"))
    kind, state = sink.get("kind"), sink.get("state")
    shown = f"{SINK_NAMES.get(kind, kind) if kind else '-'}{f' {state}{then}' if state else ''}"
    if state != "connected" and sink.get("last_error"):
        shown += f" ({sink['last_error']})"
    lines.append(f"upstream: {shown}; outbox backlog: {status.get('outbox_backlog', '-')}"
                 + (f"; rejected by the broker: {status['outbox_rejected']}"
                    if status.get("outbox_rejected") else ""))
    storage = _table(status.get("storage"))
    if storage.get("in_memory"):
        lines.append("state database: IN MEMORY (the file could not be opened at start: a full or read-only "
                     "disk); nothing is kept across a restart. Free the disk, then restart the agent")
    if storage.get("recovered_from"):
        lines.append(f"state database was damaged: moved aside to {storage['recovered_from']} at start")
    if storage.get("windows_failed") or storage.get("prune_failures") or storage.get("alerts_in_memory"):
        lines.append(f"state database faults: {storage.get('windows_failed', 0)} windows not stored, "
                     f"{storage.get('prune_failures', 0)} retention passes failed, "
                     f"{storage.get('alerts_in_memory', 0)} alerts held in memory; last error: "
                     f"{storage.get('last_fault')}")
    for name, entry in sorted(_table(status.get("assets")).items()):
        asset = _table(entry)
        # a stopped agent's silence verdict is from its last status, and no window was due since it stopped
        silent = (f"; SILENT: no window scored for {_age(asset.get('last_window_age_s'))}"
                  if running_now and asset.get("silent") else "")
        lines.append(f"asset {name}: model {asset.get('model')} score {_number(asset.get('last_score'))} / "
                     f"{_number(asset.get('threshold'))} "
                     f"state {asset.get('state')}{' ' + asset['severity'] if asset.get('severity') else ''}"
                     f"{then} stale windows {asset.get('stale_windows', 0)}{silent}")
    episodes = status.get("open_episodes")
    for episode in (e for e in (episodes if isinstance(episodes, list) else []) if isinstance(e, dict)):
        flat = episode.get("flat")
        still = f" (flat line on {', '.join(map(str, flat))})" if isinstance(flat, list) and flat else ""
        lines.append(f"open episode {episode.get('episode_id')}: {episode.get('asset')}/"
                     f"{episode.get('model')} {episode.get('severity')}{still}")
    for name, entry in sorted(_table(status.get("sources")).items()):
        source = _table(entry)
        why = f" ({source['last_error']})" if source.get("state") == "disconnected" and source.get(
            "last_error") else ""
        lines.append(f"source {name} ({source.get('type')}): {source.get('state')}{then}{why}, received "
                     f"{source.get('received')}, invalid {source.get('invalid')}, "
                     f"dropped {source.get('dropped')}")
    counters = _table(status.get("counters"))
    if counters:
        lines.append("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return "\n".join(lines)
