"""`edge-agent doctor --config PATH`: is this machine ready to run the configured agent?

Compares the machine (onnxruntime version and execution providers, architecture, CPU count, memory,
serial / video / audio devices and their permissions, state directory) with the device profile and the config,
and prints each finding with how to fix it. Exit code 0 only when nothing blocks (warnings do not block).

    FAIL  serial device /dev/ttyUSB0: not present
          fix: plug the adapter in, or check `ls -l /dev/serial/by-id/` and set sources.NAME.device
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import grp
import json
import logging
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edge_agent.brokercheck import (
    UPSTREAM,
    BrokerAnswer,
    BrokerTarget,
    login_check,
    probe_brokers,
    probe_client_id,
)
from edge_agent.configtools import ConfigError, add_config_argument
from edge_agent.mqttloop import Login
from edge_agent.profiles import DeviceProfile, load_profile

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

Level = Literal["ok", "warn", "fail"]
DEFAULT_PROFILE = "x86-64-ipc"  # the hardware checks' reference when the config names no profile
DEVICE_GROUPS = {"serial": "dialout", "video": "video", "audio": "audio"}


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report."""

    level: Level
    check: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "check": self.check, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class Requirements:
    """What the config asks of this machine (taken from the agent config; see `requirements_from_config`)."""

    state_dir: Path
    profile: DeviceProfile
    serial_devices: tuple[str, ...] = ()
    video_devices: tuple[str, ...] = ()
    audio_needed: bool = False
    trusted_keys_dir: Path | None = None
    min_onnxruntime: str | None = None
    files: tuple[tuple[str, Path], ...] = ()  # (what, path) that must be readable
    active_bundle: str | None = None  # "name version" of the installed active bundle
    bundle_file: Path | None = None  # [bundle] path, used when nothing is installed
    upstream_protocol: str | None = None  # [mqtt] protocol; None: no upstream (console sink)
    brokers: tuple[BrokerTarget, ...] = ()  # [mqtt] and MQTT sources, with how the agent logs in


@dataclass
class Machine:
    """Facts about this machine; every field can be replaced in tests."""

    onnxruntime_version: str | None
    providers: tuple[str, ...]
    arch: str
    cpu_count: int
    mem_total_mb: int | None
    mem_available_mb: int | None
    user: str
    groups: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def probe(cls) -> Machine:
        try:
            import onnxruntime as ort
        except ImportError:
            version, providers = None, ()
        else:
            version, providers = ort.__version__, tuple(ort.get_available_providers())
        total, available = _meminfo()
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        groups = set()
        for gid in os.getgroups():
            with contextlib.suppress(KeyError):
                groups.add(grp.getgrgid(gid).gr_name)
        import pwd
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = str(os.geteuid())
        return cls(onnxruntime_version=version, providers=providers, arch=platform.machine(), cpu_count=cpus,
                   mem_total_mb=total, mem_available_mb=available, user=user, groups=frozenset(groups))


def _meminfo(path: Path = Path("/proc/meminfo")) -> tuple[int | None, int | None]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) // 1024
    except OSError:
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable")


def version_tuple(text: str) -> tuple[int, ...]:
    """`"1.17.3"` -> (1, 17, 3); stops at the first non-numeric part (`1.18.0rc1` -> (1, 18))."""
    parts = []
    for piece in text.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def diagnose(req: Requirements, machine: Machine,
             access: Callable[[str, int], bool] = os.access,
             reach: Callable[[BrokerTarget], BrokerAnswer] = login_check) -> list[Finding]:
    """Every finding for these requirements on this machine (pure given `machine`, `access` and
    `reach`)."""
    profile = req.profile
    found: list[Finding] = []
    add = found.append

    if machine.onnxruntime_version is None:
        add(Finding("fail", "onnxruntime", "not installed", "pip install onnxruntime (or the wheel your "
                    "profile needs, e.g. onnxruntime-gpu for Jetson from NVIDIA's JetPack index)"))
    else:
        need = req.min_onnxruntime
        if need and version_tuple(machine.onnxruntime_version) < version_tuple(need):
            add(Finding("fail", "onnxruntime", f"version {machine.onnxruntime_version} is older than the "
                        f"{need} the active bundle needs", f"pip install 'onnxruntime>={need}'"))
        else:
            add(Finding("ok", "onnxruntime", f"version {machine.onnxruntime_version}, providers: "
                        f"{', '.join(machine.providers)}"))
        for spec in profile.providers:
            if spec.name in machine.providers:
                continue
            fix = _provider_fix(spec.name)
            if spec.required:
                add(Finding("fail", "execution provider", f"profile {profile.name} requires {spec.name}, "
                            "which this onnxruntime build does not provide", fix))
            else:
                add(Finding("warn", "execution provider", f"optional {spec.name} not available; "
                            f"{profile.name} falls back to the next provider", fix))

    if machine.arch not in profile.arch:
        add(Finding("warn", "architecture", f"this machine is {machine.arch}, profile {profile.name} is "
                    f"meant for {', '.join(profile.arch)}", "choose the device profile for this hardware "
                    "(device_profile in the config); see docs/device-profiles.md"))
    if machine.cpu_count < profile.min_cpus:
        add(Finding("fail", "cpu", f"{machine.cpu_count} CPU(s) usable, profile {profile.name} needs "
                    f"{profile.min_cpus}", "use a profile written for this hardware, or lift the CPU quota "
                    "(systemd CPUAffinity=/AllowedCPUs=)"))
    elif profile.intra_op_threads > machine.cpu_count:
        add(Finding("warn", "cpu", f"profile asks for {profile.intra_op_threads} intra-op threads on "
                    f"{machine.cpu_count} CPU(s)", "lower threads.intra_op in the profile"))
    else:
        add(Finding("ok", "cpu", f"{machine.cpu_count} CPU(s) usable"))

    if machine.mem_total_mb is None:
        add(Finding("warn", "memory", "cannot read /proc/meminfo"))
    elif machine.mem_total_mb < profile.memory_budget_mb:
        add(Finding("fail", "memory", f"{machine.mem_total_mb} MB in total, less than the profile's budget "
                    f"of {profile.memory_budget_mb} MB", "lower memory_budget_mb in a site profile, or use "
                    "hardware with more memory"))
    elif machine.mem_available_mb is not None and machine.mem_available_mb < profile.memory_budget_mb:
        add(Finding("warn", "memory", f"only {machine.mem_available_mb} MB available now (budget "
                    f"{profile.memory_budget_mb} MB)", "stop other services or lower the budget"))
    else:
        add(Finding("ok", "memory", f"{machine.mem_total_mb} MB total, budget {profile.memory_budget_mb} MB"))

    for kind, devices in (("serial", req.serial_devices), ("video", req.video_devices)):
        for device in devices:
            found.append(_device_finding(kind, device, machine, access))
    if req.audio_needed:
        found.append(_device_finding("audio", "/dev/snd", machine, access))

    for label, path in req.files:
        if not path.is_file():
            add(Finding("fail", label, f"{path} does not exist", "fix the path in the config"))
        elif not access(str(path), os.R_OK):
            add(Finding("fail", label, f"{path} is not readable by {machine.user}",
                        f"chmod o+r {path}, or give the service user access"))
    found.append(_state_dir_finding(req.state_dir))
    found.append(_bundle_finding(req))
    if req.trusted_keys_dir is not None:
        keys = sorted(req.trusted_keys_dir.glob("*.pub")) + sorted(req.trusted_keys_dir.glob("*.pem")) \
            if req.trusted_keys_dir.is_dir() else []
        if not keys:
            add(Finding("fail", "trusted keys", f"no *.pub/*.pem public keys in {req.trusted_keys_dir}: "
                        "no bundle can be installed",
                        f"copy the trainer's signing.pub into {req.trusted_keys_dir}"))
        else:
            add(Finding("ok", "trusted keys", f"{len(keys)} key file(s) in {req.trusted_keys_dir}"))
    if req.upstream_protocol == "3.1.1":
        # MQTT 3.1.1 has no reason code in PUBACK: a broker whose ACL denies the alert topic acknowledges the
        # publish anyway (mosquitto does), so the agent marks the alert delivered (docs/alerts.md)
        add(Finding("warn", "upstream", "MQTT 3.1.1: a broker that refuses an alert (ACL on the alert topic) "
                    "still acknowledges it, so the agent cannot tell it was dropped",
                    'set protocol = "5" in [mqtt]: refused alerts are then kept and reported'))
    elif req.upstream_protocol is not None:
        add(Finding("ok", "upstream", f"MQTT {req.upstream_protocol}: refused alerts are detected"))
    probes = probe_brokers(req.brokers, reach)
    for target in req.brokers:
        # a warning, not a failure: the agent starts without its brokers and keeps retrying (alerts wait in
        # the outbox), but a broker that never takes the agent is worth knowing before the first alert
        answer = probes[target]
        if answer.ok:
            add(Finding("ok", target.what, f"{target.where} {answer.message}"))
        else:
            add(Finding("warn", target.what, f"{target.where} {answer.message}",
                        f"{answer.fix}; the agent keeps retrying meanwhile"))
    return found


def _bundle_finding(req: Requirements) -> Finding:
    if req.active_bundle is not None:
        return Finding("ok", "bundle", f"active: {req.active_bundle} (in {req.state_dir / 'bundles'})")
    if req.bundle_file is not None and req.bundle_file.is_file():
        return Finding("ok", "bundle", f"none installed; the agent loads {req.bundle_file} ([bundle] path)")
    where = f"[bundle] path {req.bundle_file} does not exist" if req.bundle_file else "no [bundle] path"
    return Finding("fail", "bundle", f"no bundle installed and {where}",
                   "edge-agent bundle install FILE --config CONFIG")


def _provider_fix(name: str) -> str:
    return {
        "CUDAExecutionProvider": "install NVIDIA's onnxruntime-gpu wheel for your JetPack/CUDA version",
        "TensorrtExecutionProvider": "install an onnxruntime-gpu build with TensorRT, and TensorRT itself",
        "OpenVINOExecutionProvider": "pip install onnxruntime-openvino (replaces onnxruntime)",
    }.get(name, f"install an onnxruntime build that includes {name}")


def _device_finding(kind: str, device: str, machine: Machine, access: Callable[[str, int], bool]) -> Finding:
    group = DEVICE_GROUPS[kind]
    label = f"{kind} device {device}"
    if not Path(device).exists():
        fix = {"serial": "plug the adapter in; `ls -l /dev/serial/by-id/` shows stable names for the config",
               "video": "plug the camera in; `v4l2-ctl --list-devices` shows what is there",
               "audio": "this machine has no sound devices; connect a USB microphone"}[kind]
        return Finding("fail", label, "not present", fix)
    if kind in ("serial", "video"):  # a character device: not a regular file or a directory by mistake
        try:
            mode_bits = Path(device).stat().st_mode
        except OSError as exc:
            return Finding("fail", label, f"cannot stat: {exc.strerror or exc}",
                           "check the path in the config")
        if not stat.S_ISCHR(mode_bits):
            found = ("a directory" if stat.S_ISDIR(mode_bits)
                     else "a regular file" if stat.S_ISREG(mode_bits) else "not a device")
            where = ("`ls -l /dev/serial/by-id/` shows the adapters" if kind == "serial"
                     else "`v4l2-ctl --list-devices` shows the cameras")
            return Finding("fail", label, f"{found}, not a {kind} device",
                           f"point the config at the device; {where}")
    mode = os.R_OK | (os.W_OK if kind == "serial" else 0)
    if not access(device, mode):
        return Finding("fail", label, f"not accessible to user {machine.user}",
                       f"add the service user to group {group} (`usermod -aG {group} {machine.user}`, or "
                       f"SupplementaryGroups={group} in the systemd unit)")
    return Finding("ok", label, "present and accessible")


MIN_FREE_MIB = 100  # below this on the state directory's filesystem, `doctor` warns


def _free_mib(path: Path) -> float:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize / 2**20


def _state_dir_finding(state_dir: Path, free_mib: Callable[[Path], float] = _free_mib) -> Finding:
    fix = (f"create it for the service user (`install -d -o edge-agent {state_dir}`) or use "
           "StateDirectory=edge-agent in the unit")
    if not state_dir.is_dir():
        parent = next((p for p in state_dir.parents if p.is_dir()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return Finding("warn", "state directory", f"{state_dir} does not exist yet ({parent} is "
                           "writable, so it can be created)", fix)
        return Finding("fail", "state directory", f"{state_dir} does not exist and {parent} is not writable",
                       fix)
    try:
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Finding("fail", "state directory", f"{state_dir} is not writable ({exc.strerror})", fix)
    free = free_mib(state_dir)
    if free < MIN_FREE_MIB:
        return Finding("warn", "state directory", f"{state_dir} is writable, but its filesystem has only "
                       f"{free:.0f} MiB free: when it fills, scored windows are no longer recorded (alerts "
                       "still go out, from memory), and a restart runs on a database in RAM that keeps "
                       "nothing",
                       "free space there, or lower [retention] max_rows (docs/storage.md)")
    return Finding("ok", "state directory", f"{state_dir} is writable, {free:.0f} MiB free")


def requirements_from_config(config: AgentConfig) -> Requirements:
    """What A1's `AgentConfig` asks of this machine: devices of its sources, files, bundle, keys."""
    from edge_agent.bundle.store import BundleStore

    profile = load_profile(config.device_profile or DEFAULT_PROFILE)
    serial, video, files = [], [], []
    audio = False
    for source in config.sources.values():
        device = getattr(source.settings, "device", None)
        if source.kind == "serial" and isinstance(device, str):
            serial.append(device)
        elif source.kind == "camera" and isinstance(device, str) and device.startswith("/dev/"):
            video.append(device)
        elif source.kind in ("microphone", "audio"):
            audio = True
        path = getattr(source.settings, "path", None)
        if isinstance(path, Path):
            files.append((f"source {source.name} file", path))
    # (what, host, port, the client's own id, protocol, login) of every MQTT client the agent runs
    clients: list[tuple[str, str, int, str, str, Callable[[], Login]]] = []
    if config.mqtt is not None:
        from edge_agent.sinks.mqtt import upstream_client_id, upstream_login
        clients.append((UPSTREAM, config.mqtt.host, config.mqtt.port,
                        upstream_client_id(config.mqtt, config.identity), config.mqtt.protocol,
                        functools.partial(upstream_login, config.mqtt)))
    for source in config.sources.values():
        if source.kind == "mqtt":
            settings = source.settings
            clients.append((f"source {source.name} broker", settings.host, settings.port, settings.client_id,
                            "3.1.1", functools.partial(settings.login, source.name)))
    taken: dict[tuple[str, int], set[str]] = {}
    for _what, host, port, client_id, _protocol, _login in clients:
        taken.setdefault((host, port), set()).add(client_id)
    brokers = [BrokerTarget(what, host, port, probe_client_id(client_id, taken[(host, port)]), protocol,
                            login) for what, host, port, client_id, protocol, login in clients]
    min_ort = active = None
    with contextlib.suppress(Exception):  # a broken store is reported by `bundle list`, not here
        installed = BundleStore(config.state_dir).active()
        if installed is not None:
            active = f"{installed.name} {installed.version}"
            min_ort = _min_ort_of(installed.bundle_file)
    keys = config.bundle.verify_keys
    return Requirements(state_dir=config.state_dir, profile=profile, serial_devices=tuple(serial),
                        video_devices=tuple(video), audio_needed=audio, trusted_keys_dir=keys,
                        min_onnxruntime=min_ort, files=tuple(files), active_bundle=active,
                        bundle_file=config.bundle.path,
                        upstream_protocol=config.mqtt.protocol if config.mqtt is not None else None,
                        brokers=tuple(brokers))


def _min_ort_of(bundle_file: Path) -> str | None:
    import tarfile
    with tarfile.open(bundle_file) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            return None
        data = json.load(member)
    return str(data["compatibility"]["min_onnxruntime"])


def report(findings: Sequence[Finding]) -> str:
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for item in findings:
        lines.append(f"{item.level.upper():<4}  {item.check:<{width}}  {item.message}")
        if item.fix and item.level != "ok":
            lines.append(f"{'':<4}  {'':<{width}}  fix: {item.fix}")
    blocking = sum(f.level == "fail" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    lines.append(f"{blocking} blocking problem(s), {warnings} warning(s)")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add `doctor` to the `edge-agent` command line."""
    parser = subparsers.add_parser("doctor", help="check this machine against the device profile and config")
    add_config_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from edge_agent.config import AgentConfig

    try:
        config = AgentConfig.load(args.config)
        req = requirements_from_config(config)
    except ConfigError as exc:
        print(f"FAIL  config  {exc}")
        return 1
    if config.device_profile:
        profile = Finding("ok", "device profile", f"{req.profile.name} ({req.profile.source})")
    else:  # the agent then runs ONNX Runtime on the CPU with 1 thread and takes bundles for any profile
        profile = Finding("warn", "device profile",
                          "none configured: the agent runs ONNX Runtime on the CPU with one thread and "
                          "installs bundles made for any profile; this machine is checked against "
                          f"{DEFAULT_PROFILE}'s needs", "set device_profile (docs/device-profiles.md)")
    findings = [profile, *diagnose(req, Machine.probe())]
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        print(report(findings))
    return 1 if any(f.level == "fail" for f in findings) else 0
