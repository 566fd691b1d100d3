"""`edge-agent bundle ...`: install, list, roll back, verify and remove model bundles on this gateway.

    edge-agent bundle install FILE --config /etc/edge-agent/agent.toml [--wait 15]
    edge-agent bundle verify FILE --config ...        every install check, changes nothing
    edge-agent bundle list --config ...               * = active, < = rollback target
    edge-agent bundle rollback [VERSION] --config ... default: the version active before the current one
    edge-agent bundle remove VERSION --config ...     never the active one

Exit codes: 0 done; 1 a check or store operation failed (nothing changed); 2 the config is invalid or cannot
be read (without `--config`, where the default file does not exist, the error says what the action reads from
a config and to pass `--config`).

After activating, `install` and `rollback` SIGHUP a running agent and wait (`--wait`) until it reports the new
version. If it does not (it refused the bundle, or hangs), the previously active bundle is restored
(atomically, recorded in the history), the agent is told again, and the command fails (check
`agent switch`, exit 1). With no running agent, or `--wait 0`, activation alone decides.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.bundle.errors import BundleError
from edge_agent.bundle.install import (
    InstallSettings,
    agent_alive,
    describe_versions,
    install,
    restore_previous,
    rollback,
    running_version,
    settings_from_config,
    verify_only,
    wait_for_agent,
)
from edge_agent.bundle.store import BundleStore
from edge_agent.configtools import ConfigError, add_config_argument

# What each action reads the agent config for (said when `--config` is left out and the default is missing)
CONFIG_USES = {
    "install": "checks the bundle against its [bundle] trusted_keys (the signing keys), device_profile and "
               "assets, and installs it under its state_dir",
    "verify": "checks the bundle against its [bundle] trusted_keys (the signing keys), device_profile and "
              "assets",
    "list": "lists the bundles installed under its state_dir",
    "rollback": "activates a bundle installed under its state_dir",
    "remove": "removes a bundle installed under its state_dir",
}


def register(subparsers: Any) -> None:
    """Add `bundle` and its subcommands to the `edge-agent` command line."""
    parser = subparsers.add_parser("bundle", help="install, list, roll back, verify or remove model bundles")
    commands = parser.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        add_config_argument(sub)
        return sub

    sub = add("install", "verify a bundle, store it, activate it and tell the running agent")
    sub.add_argument("file", type=Path)
    sub.add_argument("--keep", type=int, default=None, help="installed versions to keep (default: config)")
    sub.add_argument("--wait", type=float, default=15.0, metavar="SECONDS",
                     help="wait this long for the running agent to report the new version (0: do not wait)")
    sub.set_defaults(func=cmd_install)
    sub = add("verify", "run every install check on a bundle without changing anything")
    sub.add_argument("file", type=Path)
    sub.set_defaults(func=cmd_verify)
    sub = add("list", "list installed versions")
    sub.set_defaults(func=cmd_list)
    sub = add("rollback", "activate the previous (or the given) installed version")
    sub.add_argument("version", nargs="?")
    sub.add_argument("--wait", type=float, default=15.0, metavar="SECONDS")
    sub.set_defaults(func=cmd_rollback)
    sub = add("remove", "delete an installed version (never the active one)")
    sub.add_argument("version")
    sub.set_defaults(func=cmd_remove)


def _settings(args: argparse.Namespace) -> InstallSettings:
    from edge_agent.config import AgentConfig

    settings = settings_from_config(AgentConfig.load(args.config))
    keep = getattr(args, "keep", None)
    if keep is not None:
        if keep < 1:
            raise ConfigError("--keep", "must be at least 1", keep)
        settings = dataclasses.replace(settings, keep=keep)
    return settings


def _fail(message: str) -> int:
    print(f"FAILED {message}", file=sys.stderr)
    return 1


def _missing_default_config(args: argparse.Namespace) -> str | None:
    """Why a command run without `--config` cannot go on when the default file does not exist, and what to
    pass (a plain "cannot read config file" does not say that `--config` was left out); None otherwise."""
    path = args.config
    if getattr(args, "config_given", False) or path.exists():  # not given: the default path
        return None
    origin = ("from $EDGE_AGENT_CONFIG" if os.environ.get("EDGE_AGENT_CONFIG")
              else "the default when neither --config nor $EDGE_AGENT_CONFIG is given")
    return (f"no agent config at {path} ({origin}): `edge-agent bundle {args.bundle_command}` reads the "
            f"gateway's agent config and {CONFIG_USES[args.bundle_command]}: pass --config PATH, or point "
            "$EDGE_AGENT_CONFIG at the file")


def _run(args: argparse.Namespace, action: Any) -> int:
    missing = _missing_default_config(args)
    if missing:
        print(f"config error: {missing}", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(action(settings))
    except BundleError as exc:
        return _fail(f"{exc}\nnothing was changed: the active bundle and the running agent are untouched")
    except OSError as exc:  # disk full, a file size limit, a state directory that is a file: undone as well
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}\nnothing was changed: the active bundle and the running "
                     "agent are untouched")


def _progress(check: str, detail: str) -> None:
    print(f"  ok  {check:<16} {detail}")


def cmd_install(args: argparse.Namespace) -> int:
    def action(settings: InstallSettings) -> int:
        started = time.time()  # the agent's status must be newer than this to count as its answer
        outcome = install(args.file, settings, progress=_progress)
        version = outcome.installed.version
        if outcome.previous == version:
            print(f"{outcome.installed.name} {version} is already the active bundle; nothing changed")
            return 0
        print(f"installed and activated {outcome.installed.name} {version} (previous: "
              f"{outcome.previous or 'none'})")
        if outcome.removed:
            print(f"removed old versions (keeping {settings.keep}): {', '.join(outcome.removed)}")
        return _switch_agent(settings, outcome.agent, version, outcome.previous, wait_s=args.wait,
                             since=started)

    return _run(args, action)


def _switch_agent(settings: InstallSettings, agent: str, version: str, previous: str | None, *,
                  wait_s: float, since: float) -> int:
    """Wait for the notified agent to report `version` (in a status written after `since`); otherwise
    restore `previous` and fail, unless another operation activated a version meanwhile."""
    print(agent)
    if "notified" not in agent or wait_s <= 0:
        return 0
    if wait_for_agent(settings, version, wait_s, since=since):
        print(f"the running agent now scores with {version}")
        return 0
    now_active = BundleStore(settings.state_dir).active_version()
    if now_active != version:  # another install or rollback came after ours: theirs is the one that counts
        print(f"{version} was superseded while the agent switched: the active bundle is "
              f"{now_active or 'none'} now (activated by another bundle operation); {version} stays "
              "installed but inactive")
        return 0
    why = (f"the running agent did not report {version} within {wait_s:g} s (it keeps its bundle when the "
           "new one fails to load: see its log)" if agent_alive(settings) else
           f"the agent exited before reporting {version}")
    told = restore_previous(settings, version, previous)
    restored = previous or "none (the config's [bundle] path)"
    print(f"FAILED check 'agent switch' failed: {why}\nrestored the previously active bundle: {restored}; "
          f"{told}\n{version} stays installed but inactive (`edge-agent bundle list`)", file=sys.stderr)
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    def action(settings: InstallSettings) -> int:
        verified = verify_only(args.file, settings)
        for check, detail in verified.passed:
            _progress(check, detail)
        manifest = verified.bundle.manifest
        for line in describe_inputs(manifest):
            print(line)
        print(f"{args.file}: {manifest.name} {manifest.version} passes every check (nothing was changed)")
        return 0

    return _run(args, action)


def describe_inputs(manifest: Any) -> list[str]:
    """What each model of a bundle reads, for the engineer wiring sensors to it: channels with their units,
    the window and the sample period (a channel in another unit than the model's shows only as an anomaly)."""
    lines = []
    for model in manifest.models:
        spec = model.input
        channels = ", ".join(f"{name} [{unit}]" if unit else f"{name} [no unit given]"
                             for name, unit in zip(spec.channels, spec.units, strict=True))
        lines.append(f"  model {model.name}: {channels}; window {spec.window_length} samples every "
                     f"{spec.sample_period_s:g} s, scored every {spec.stride}; threshold "
                     f"{model.threshold.value:.6g}")
        flat = model.flatline
        if flat is None:
            lines.append("    flat-line check: none (manifest schema 1)")
        elif not flat.healthy_windows:
            lines.append("    flat-line check: none (export had no healthy windows to check against)")
        elif not flat.channels:
            lines.append(f"    flat-line check: none (every channel held one value for over half a window "
                         f"somewhere in {flat.healthy_windows} healthy windows)")
        else:
            checked = ", ".join(flat.channels)
            lines.append(f"    flat-line check: {checked} (none held one value for over half a window in "
                         f"{flat.healthy_windows} healthy windows; a whole window without change alerts, "
                         "unless [decisions] flatline = false)")
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    def action(settings: InstallSettings) -> int:
        store = BundleStore(settings.state_dir)
        lines = describe_versions(store)
        if not lines:
            print(f"no bundles installed in {store.root}")
        for line in lines:
            print(line)
        if settings.status_path is not None and settings.pid_path is not None and settings.pid_path.is_file():
            print(f"running agent reports bundle {running_version(settings.status_path) or 'unknown'}")
        return 0

    return _run(args, action)


def cmd_rollback(args: argparse.Namespace) -> int:
    def action(settings: InstallSettings) -> int:
        started = time.time()
        outcome = rollback(settings, args.version)
        print(f"rolled back to {outcome.installed.name} {outcome.installed.version} (was {outcome.previous})")
        return _switch_agent(settings, outcome.agent, outcome.installed.version, outcome.previous,
                             wait_s=args.wait, since=started)

    return _run(args, action)


def cmd_remove(args: argparse.Namespace) -> int:
    def action(settings: InstallSettings) -> int:
        store = BundleStore(settings.state_dir)
        with store.lock():
            store.remove(args.version)
        print(f"removed version {args.version}")
        return 0

    return _run(args, action)


def main(argv: list[str] | None = None) -> int:
    """`python -m edge_agent.bundle.cli [--log-level L] ACTION ...`: the bundle commands alone."""
    parser = argparse.ArgumentParser(prog="python -m edge_agent.bundle.cli")
    register(parser.add_subparsers(dest="command", required=True))
    rest = list(sys.argv[1:] if argv is None else argv)
    level = "warning"
    if rest[:1] == ["--log-level"] and len(rest) > 1:
        level, rest = rest[1], rest[2:]
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(["bundle", *rest])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
