"""The install pipeline: verify a bundle completely, store it by version, activate it, tell the agent.

Checks, in order; the first failure stops everything with `CheckError(check, message)` and leaves the active
bundle and the running agent untouched:

    signature        Ed25519 signature over the manifest by a key in the trusted-keys directory
    safe extraction  no absolute paths, `..`, links, devices/fifos, oversized members, too many members
    integrity        the archive holds exactly the manifest's files, each with its SHA-256
    manifest         schema version known, every key valid
    onnxruntime      this onnxruntime is at least `compatibility.min_onnxruntime`; the profile's required
                     execution providers are available
    device profile   `compatibility.device_profiles` names this gateway's profile (or "generic"); each model's
                     precision is one the profile accepts; the model files fit the profile's memory budget
    assets           every configured asset's model is in the bundle with exactly the channels it maps
    reference        every model loads in ONNX Runtime (the profile's providers) and reproduces the manifest's
                     reference outputs within its rtol/atol
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agentstate import agent_lock_says_stopped
from edge_agent.bundle.archive import MAX_MEMBER_BYTES, Bundle, read_bundle
from edge_agent.bundle.errors import (
    BundleArchiveError,
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    BundleSignatureError,
    SigningKeyError,
    UnsafeArchiveError,
    UnsupportedSchemaError,
)
from edge_agent.bundle.manifest import PRECISIONS, Manifest
from edge_agent.bundle.store import ACTIVE_LINK, HISTORY_FILE, BundleStore, InstalledBundle
from edge_agent.configtools import ConfigError
from edge_agent.doctor import version_tuple
from edge_agent.profiles import AudioDefaults, CameraDefaults, DeviceProfile, ProviderSpec

log = logging.getLogger(__name__)

ANY_PROFILE = ("generic", "any")
# What the agent runs without `device_profile` (supervisor.provider_settings: ONNX Runtime's CPU provider on
# one thread): the install checks use the same, with every precision accepted and no memory budget.
NO_PROFILE = DeviceProfile(
    name="(none)", description="no device profile configured", arch=(),
    providers=(ProviderSpec("CPUExecutionProvider"),), intra_op_threads=1, inter_op_threads=1,
    preferred_precision=PRECISIONS, memory_budget_mb=0, min_cpus=1, camera=CameraDefaults(),
    audio=AudioDefaults())
OUTPUT_ROLES = ("score", "channel_error", "latent_mean", "time_error")
MODEL_SHARE_OF_BUDGET = 4  # model files may use at most 1/4 of the memory budget (sessions, arenas, the rest)


class CheckError(BundleError):
    """One install check failed. `check` names it (see the module docstring)."""

    def __init__(self, check: str, message: str, *, bundle: str | Path | None = None) -> None:
        self.check = check
        super().__init__(f"check '{check}' failed: {message}", bundle=bundle)


@dataclass(frozen=True)
class InstallSettings:
    """What the install pipeline needs from the agent config (see `settings_from_config`)."""

    state_dir: Path
    profile: DeviceProfile
    trusted_keys: Path | None
    require_signature: bool = True
    keep: int = 3
    check_assets: Callable[[Manifest], None] | None = None  # raises ConfigError when assets do not fit
    pid_path: Path | None = None
    status_path: Path | None = None
    lock_path: Path | None = None  # the running agent's instance lock (None: trust the pid file)
    max_member_bytes: int = MAX_MEMBER_BYTES  # no single archive member may be larger


@dataclass
class Verified:
    """A bundle that passed every check, with what each check found."""

    bundle: Bundle
    passed: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    installed: InstalledBundle
    previous: str | None
    removed: tuple[str, ...]
    agent: str  # what happened to the running agent, in words


def settings_from_config(config: Any) -> InstallSettings:
    """Build the settings from A1's `AgentConfig`."""
    from edge_agent.config import check_against_manifest
    from edge_agent.profiles import load_profile

    def check_assets(manifest: Manifest) -> None:
        check_against_manifest(config, manifest)

    profile = load_profile(config.device_profile) if config.device_profile else NO_PROFILE
    return InstallSettings(
        state_dir=Path(config.state_dir), profile=profile,
        trusted_keys=config.bundle.trusted_keys, require_signature=config.bundle.require_signature,
        keep=int(getattr(config.bundle, "keep", 3)), check_assets=check_assets,
        pid_path=config.pid_path, status_path=config.status_path, lock_path=config.lock_path,
        max_member_bytes=min(MAX_MEMBER_BYTES, profile_member_limit(profile)))


def profile_member_limit(profile: DeviceProfile) -> int:
    """The largest archive member a gateway with this profile accepts: its share of the memory budget for
    model files (a bigger member could never pass the memory check, so refuse it before extracting)."""
    if profile.memory_budget_mb <= 0:  # no budget (no device profile): the archive's own limit applies
        return MAX_MEMBER_BYTES
    return profile.memory_budget_mb * 1024 * 1024 // MODEL_SHARE_OF_BUDGET


_ERROR_CHECKS: tuple[tuple[type[BundleError], str], ...] = (
    (SigningKeyError, "trusted keys"),
    (BundleSignatureError, "signature"),
    (UnsafeArchiveError, "safe extraction"),
    (BundleIntegrityError, "integrity"),
    (UnsupportedSchemaError, "schema version"),
    (BundleArchiveError, "archive"),
    (BundleFormatError, "manifest"),
)


def verify(bundle_file: Path, settings: InstallSettings, workdir: Path) -> Verified:
    """Run every check on `bundle_file`, extracting into `workdir/extracted` (the caller removes workdir)."""
    bundle_file = Path(bundle_file)
    if settings.trusted_keys is None and settings.require_signature:
        raise CheckError("trusted keys", "no trusted keys directory configured ([bundle] trusted_keys)",
                         bundle=bundle_file)
    try:
        # as the agent loads it (`BundleConfig.verify_keys`): with require_signature = false no signature
        # is checked, so install and the agent accept the same bundles
        keys = settings.trusted_keys if settings.require_signature else None
        bundle = read_bundle(bundle_file, trusted_keys=keys,
                             extract_to=workdir / "extracted", max_member_bytes=settings.max_member_bytes)
    except CheckError:
        raise
    except BundleError as exc:
        check = next((name for kind, name in _ERROR_CHECKS if isinstance(exc, kind)), "bundle")
        raise CheckError(check, exc.message, bundle=bundle_file) from exc
    manifest = bundle.manifest
    result = Verified(bundle)
    signer = f"signed by trusted key {bundle.key_id}" if bundle.key_id else "NOT signature-checked"
    result.passed += [("signature", signer),
                      ("integrity", f"{len(manifest.files)} files match their SHA-256"),
                      ("manifest", f"{manifest.name} {manifest.version}, schema {manifest.schema_version}")]
    result.passed.append(("onnxruntime", _check_onnxruntime(manifest, settings.profile, bundle_file)))
    result.passed.append(("device profile", _check_profile(bundle, settings.profile)))
    if settings.check_assets is not None:
        try:
            settings.check_assets(manifest)
        except ConfigError as exc:
            raise CheckError("assets", str(exc), bundle=bundle_file) from exc
        result.passed.append(("assets", "every configured asset's model and channels are in the bundle"))
    result.passed.append(("reference", check_reference(bundle, settings.profile)))
    return result


def _check_onnxruntime(manifest: Manifest, profile: DeviceProfile, bundle_file: Path) -> str:
    import onnxruntime as ort

    need = manifest.compatibility.min_onnxruntime
    if version_tuple(ort.__version__) < version_tuple(need):
        raise CheckError("onnxruntime", f"bundle needs onnxruntime >= {need}, this gateway has "
                         f"{ort.__version__}", bundle=bundle_file)
    available = ort.get_available_providers()
    missing = profile.missing_required_providers(available)
    if missing:
        raise CheckError("onnxruntime", f"device profile {profile.name} requires {', '.join(missing)}, "
                         f"which this onnxruntime does not provide (available: {', '.join(available)})",
                         bundle=bundle_file)
    return f"onnxruntime {ort.__version__} >= {need}; providers {', '.join(available)}"


def _check_profile(bundle: Bundle, profile: DeviceProfile) -> str:
    manifest = bundle.manifest
    wanted = manifest.compatibility.device_profiles
    if profile is NO_PROFILE:
        return "no device profile configured: CPU provider, any precision, no memory budget (as the agent)"
    if wanted and profile.name not in wanted and not set(wanted) & set(ANY_PROFILE):
        raise CheckError("device profile", f"bundle is built for device profiles {', '.join(wanted)}; this "
                         f"gateway uses {profile.name}", bundle=bundle.source)
    for model in manifest.models:
        if not profile.accepts_precision(model.precision):
            raise CheckError("device profile", f"model {model.name!r} is {model.precision}, which device "
                             f"profile {profile.name} does not accept (accepts: "
                             f"{', '.join(profile.preferred_precision)})", bundle=bundle.source)
    model_bytes = sum(bundle.model_path(m.name).stat().st_size for m in manifest.models)
    allowed = profile.memory_budget_mb * 1024 * 1024 // MODEL_SHARE_OF_BUDGET
    if model_bytes > allowed:
        raise CheckError("device profile", f"model files total {model_bytes / 1e6:.1f} MB, over the "
                         f"{allowed / 1e6:.1f} MB allowed by profile {profile.name} (a quarter of its "
                         f"{profile.memory_budget_mb} MB memory budget)", bundle=bundle.source)
    return f"fits profile {profile.name} ({model_bytes / 1e6:.2f} MB of models)"


def check_reference(bundle: Bundle, profile: DeviceProfile) -> str:
    """Load each model with the profile's providers and compare its outputs on the reference inputs."""
    import onnxruntime as ort

    settings = profile.provider_settings(available=ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.log_severity_level = 3
    checked = []
    for model in bundle.manifest.models:
        try:
            providers = [(name, dict(opts)) for name, opts in settings.providers]
            session = ort.InferenceSession(str(bundle.model_path(model.name)), options, providers=providers)
        except Exception as exc:  # ORT raises its own unexported types
            raise CheckError("reference", f"model {model.name!r} does not load in onnxruntime: {exc}",
                             bundle=bundle.source) from exc
        try:
            reference = bundle.reference(model.name)
        except BundleError as exc:
            raise CheckError("reference", exc.message, bundle=bundle.source) from exc
        # the agent feeds [batch, channels, length] windows shaped by the manifest: the reference must be
        # those windows, or the smoke test passes a bundle the agent cannot warm up
        shape = (model.reference.count, len(model.input.channels), model.input.window_length)
        if reference["window"].shape != shape or not shape[0]:
            raise CheckError("reference", f"model {model.name!r}: reference windows have shape "
                             f"{reference['window'].shape}, the manifest says {shape} (reference count x "
                             "input channels x window_length, at least one window)", bundle=bundle.source)
        names = [getattr(model.outputs, role) for role in OUTPUT_ROLES]
        try:
            outputs = session.run(names, {model.input.name: reference["window"].astype(np.float32)})
        except Exception as exc:  # ORT raises its own unexported types
            raise CheckError("reference", f"model {model.name!r} failed on the reference inputs: {exc}",
                             bundle=bundle.source) from exc
        rtol, atol = model.reference.rtol, model.reference.atol
        wanted = {"score": (shape[0],), "channel_error": shape[:2], "time_error": (shape[0], shape[2])}
        for role, actual in zip(OUTPUT_ROLES, outputs, strict=True):
            if role in wanted and actual.shape != wanted[role]:
                raise CheckError("reference", f"model {model.name!r} output {role!r} has shape "
                                 f"{actual.shape}; for {shape[0]} windows of the manifest's input it must be "
                                 f"{wanted[role]}",
                                 bundle=bundle.source)
            expected = reference[role]
            if actual.shape != expected.shape:
                raise CheckError("reference", f"model {model.name!r} output {role!r} has shape "
                                 f"{actual.shape}, the reference has {expected.shape}", bundle=bundle.source)
            close = np.isclose(actual, expected, rtol=rtol, atol=atol)
            if not close.all():
                index = np.unravel_index(int(np.argmin(close)), close.shape)
                diff = float(np.max(np.abs(actual.astype(np.float64) - expected)))
                raise CheckError(
                    "reference", f"model {model.name!r} output {role!r} differs from the reference: at "
                    f"{tuple(int(i) for i in index)} got {actual[index]:.6g}, expected {expected[index]:.6g} "
                    f"(max abs diff {diff:.3g}, rtol {rtol}, atol {atol})", bundle=bundle.source)
        checked.append(f"{model.name} ({len(reference['window'])} windows on {session.get_providers()[0]})")
    return "outputs match: " + ", ".join(checked)


@contextlib.contextmanager
def _workdir(settings: InstallSettings) -> Iterator[Path]:
    root = settings.state_dir / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".verify-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def verify_only(bundle_file: Path, settings: InstallSettings) -> Verified:
    """`bundle verify`: every check, no changes (the extraction is removed again)."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-verify-") as tmp:
        return verify(bundle_file, settings, Path(tmp))


def _naming(exc: BundleError, bundle_file: Path) -> BundleError:
    """`exc` as about the user's `bundle_file` (it was raised for the private copy install verifies)."""
    if exc.bundle is not None:
        exc.bundle = str(bundle_file)
        exc.args = (f"{exc.bundle}: {exc.message}",)
    return exc


def install(bundle_file: Path, settings: InstallSettings, *, notify: bool = True,
            progress: Callable[[str, str], None] | None = None) -> Outcome:
    """Verify, store, activate (atomically), prune to `settings.keep`, then notify the running agent.

    The store lock is held from verification to activation, so concurrent installs run one after the other.
    """
    store = BundleStore(settings.state_dir)
    bundle_file = Path(bundle_file)
    with store.lock(), _workdir(settings) as work:
        # one private copy is verified and stored: the file at `bundle_file` can change meanwhile (a copy
        # still being written, or swapped on purpose) and must not be what gets stored unverified
        incoming = work / "incoming.bundle"
        try:
            shutil.copyfile(bundle_file, incoming)
        except OSError:  # missing or unreadable: verify names what is wrong with the file itself
            incoming = bundle_file
        try:
            verified = verify(incoming, settings, work)
        except BundleError as exc:
            raise _naming(exc, bundle_file) from exc.__cause__
        for check, detail in verified.passed:
            if progress is not None:
                progress(check, detail)
        manifest = verified.bundle.manifest
        installed = store.add(incoming, name=manifest.name, version=manifest.version,
                              models=[m.name for m in manifest.models], source=str(bundle_file.resolve()))
        previous = store.active_version()
        if previous != installed.version:
            store.activate(installed.version, action="install")
        removed = tuple(store.prune(settings.keep))
    agent = notify_agent(settings) if notify and previous != installed.version else "not notified"
    return Outcome(installed, previous, removed, agent)


def rollback(settings: InstallSettings, version: str | None = None, *, notify: bool = True,
             recheck: bool = True) -> Outcome:
    """Activate `version` (default: the version active before the current one), re-verifying it first."""
    store = BundleStore(settings.state_dir)
    with store.lock(), _workdir(settings) as work:
        current = store.active_version()
        target = version or store.previous_version()
        if target is None:
            raise CheckError("rollback", "no previous version to roll back to (installed: "
                             f"{', '.join(b.version for b in store.versions()) or 'none'})")
        installed = store.get(target)
        if target == current:
            raise CheckError("rollback", f"version {target} is already active")
        if recheck:  # the state dir could have been tampered with, or the assets changed since
            verify(installed.bundle_file, settings, work)
        store.activate(target, action="rollback")
    agent = notify_agent(settings) if notify else "not notified"
    return Outcome(installed, current, (), agent)


def notify_agent(settings: InstallSettings) -> str:
    """SIGHUP the running agent (from its pid file) so it loads the new active bundle; say what happened."""
    if settings.pid_path is None or not settings.pid_path.is_file():
        return "no running agent (no pid file); it will load the new bundle when it starts"
    try:
        pid = int(settings.pid_path.read_text().strip())
    except (OSError, ValueError) as exc:
        return f"pid file {settings.pid_path} is unreadable ({exc}); restart the agent to load the new bundle"
    if not _is_agent(pid):
        return f"no running agent (pid {pid} from {settings.pid_path} is gone or not edge-agent)"
    if settings.lock_path is not None and agent_lock_says_stopped(settings.lock_path):
        # the pid file outlived its agent (a crash, kill -9) and the pid may now be another process's
        return (f"no running agent (no agent holds {settings.lock_path}; pid {pid} in {settings.pid_path} "
                "is stale); it will load the new bundle when it starts")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return f"could not signal agent pid {pid} ({exc.strerror}); restart it to load the new bundle"
    log.info("sent SIGHUP to agent pid %d", pid)
    return f"agent pid {pid} notified (SIGHUP)"


def restore_previous(settings: InstallSettings, failed: str, previous: str | None) -> str:
    """Undo an activation the running agent did not take up (`agent switch` check): make `previous` active
    again, atomically and recorded in the history (`revert`), then SIGHUP the agent once more so it stays
    on (or returns to) that bundle. `previous` None: there was no installed bundle, so the `active` link is
    removed and the agent goes back to `[bundle] path`. Returns what happened, in words."""
    store = BundleStore(settings.state_dir)
    with store.lock():
        current = store.active_version()
        if current != failed:  # someone activated another version meanwhile: theirs stands
            return f"the active bundle is {current or 'none'} now (changed meanwhile); left as it is"
        if previous is not None:
            store.activate(previous, action="revert")
        else:
            (store.root / ACTIVE_LINK).unlink()
            entry = {"ts": time.time(), "action": "revert", "version": None, "previous": failed}
            with (store.root / HISTORY_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
    log.warning("bundle %s was not taken up by the running agent; %s is active again", failed,
                previous or "the config's [bundle] path")
    return notify_agent(settings)


def agent_alive(settings: InstallSettings) -> bool:
    """The pid file names a running edge-agent process, and an agent holds the instance lock: a pid file
    left by an agent that died can name another process that reused the pid, which SIGHUP would kill."""
    if settings.pid_path is None:
        return False
    try:
        pid = int(settings.pid_path.read_text().strip())
    except (OSError, ValueError):
        return False
    if settings.lock_path is not None and agent_lock_says_stopped(settings.lock_path):
        return False
    return _is_agent(pid)


def _is_agent(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"edge_agent" in cmdline or b"edge-agent" in cmdline


def wait_for_agent(settings: InstallSettings, version: str, timeout_s: float,
                   clock: Callable[[], float] = time.monotonic, *, since: float | None = None) -> bool:
    """Poll the agent's status file until it reports `version` as its bundle (True) or `timeout_s` passes.
    With `since` (Unix time of the notification), only a status the agent named in the pid file wrote after
    it counts: an old status.json from an earlier run, or from an agent that is stopped, can name the
    version too."""
    if settings.status_path is None or timeout_s <= 0:
        return False
    deadline = clock() + timeout_s
    while True:
        status = _read_status(settings.status_path)
        if _version_in(status) == version and (since is None or _fresh(status, settings, since)):
            return True
        if clock() >= deadline:
            return False
        time.sleep(0.1)  # a CLI waiting on another process's file; not test synchronisation


def _fresh(status: dict[str, Any], settings: InstallSettings, since: float) -> bool:
    """`status` was written at or after `since` by the process the pid file names."""
    try:
        pid = int(settings.pid_path.read_text().strip()) if settings.pid_path is not None else None
    except (OSError, ValueError):
        return False
    updated = status.get("updated_at")
    return (isinstance(updated, int | float) and updated >= since
            and (pid is None or status.get("pid") == pid))


def _read_status(status_path: Path) -> dict[str, Any]:
    """The agent's status file as a dict (empty when absent or unreadable)."""
    try:
        status = json.loads(status_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def running_version(status_path: Path) -> str | None:
    """The bundle version a running agent reports in its status file (None if unknown)."""
    return _version_in(_read_status(status_path))


def _version_in(status: dict[str, Any]) -> str | None:
    bundle = status.get("bundle")
    if isinstance(bundle, dict) and "version" in bundle:
        return str(bundle["version"])
    value = status.get("bundle_version")
    return str(value) if value is not None else None


def describe_versions(store: BundleStore) -> Sequence[str]:
    """Lines for `bundle list`."""
    active = store.active_version()
    previous = store.previous_version()
    lines = []
    for item in store.versions():
        mark = "*" if item.version == active else ("<" if item.version == previous else " ")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.installed_at))
        lines.append(f"{mark} {item.version:<16} {item.name:<24} installed {when}  models: "
                     f"{', '.join(item.models)}  sha256 {item.sha256[:12]}")
    return lines
