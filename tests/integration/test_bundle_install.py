"""`bundle install` end to end on real files: real signed bundles, real ONNX Runtime sessions, the real
store. Each tampered bundle must be refused by its own check with a clear message, leaving the active bundle
as it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import read_bundle, sign_manifest, write_bundle
from edge_agent.bundle.install import CheckError, InstallSettings, install, rollback, settings_from_config
from edge_agent.bundle.store import BundleStore, StoreError
from edge_agent.cli import main
from edge_agent.config import AgentConfig
from edge_agent.configtools import ConfigError
from tests.support import wait_until
from tests.support.bundles import KeyPair, build_test_bundle, make_keypair

pytestmark = pytest.mark.integration

CHANNELS = ["pressure", "flow", "vibration"]
REPO = Path(__file__).resolve().parents[2]


def _config_text(profile: Path, channels: list[str] = CHANNELS) -> str:
    mapping = "\n".join(f'{c} = "{c}"' for c in channels)
    return f"""
state_dir = "state"
device_profile = "{profile}"
[gateway]
site = "s1"
area = "a1"
line = "l1"
id = "gw1"
[bundle]
trusted_keys = "keys"
keep = 3
[sources.line1]
type = "serial"
device = "/dev/ttyUSB0"
format = "csv"
fields = {json.dumps(channels)}
[assets.pump-1]
model = "pump"
source = "line1"
[assets.pump-1.channels]
{mapping}
"""


@pytest.fixture
def gateway(tmp_path: Path) -> tuple[Path, KeyPair]:
    """A config dir with trusted keys and a small-memory profile (8 MiB member limit)."""
    root = tmp_path / "gw"
    root.mkdir()
    keys = make_keypair(root / "keys")
    (root / "keys" / "signing.key").unlink()  # the gateway only holds public keys
    profile = root / "tiny.toml"
    profile.write_text("memory_budget_mb = 32\n")
    (root / "agent.toml").write_text(_config_text(profile))
    return root / "agent.toml", keys


def _settings(config: Path) -> InstallSettings:
    return settings_from_config(AgentConfig.load(config))


def _bundle(tmp_path: Path, keys: KeyPair, version: str, **kwargs: object) -> Path:
    kwargs.setdefault("channels", CHANNELS)
    return build_test_bundle(tmp_path / "out", version=version, sign_key=keys.private_key,
                             name="pumps", window_length=16, stride=8, **kwargs)


def _rewrite(src: Path, dst: Path, edit: Callable[[list[tuple[tarfile.TarInfo, bytes]]], None]) -> Path:
    """Copy a bundle member by member (no checks), letting `edit` change the member list."""
    with tarfile.open(src, "r:*") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    edit(members)
    with tarfile.open(dst, "w:gz") as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dst


def _member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _flip_bit(name: str) -> Callable[[list], None]:
    def edit(members: list) -> None:
        for i, (info, data) in enumerate(members):
            if info.name == name:
                changed = bytearray(data)
                changed[len(changed) // 2] ^= 0x01
                members[i] = (info, bytes(changed))
    return edit


def _edit_manifest(members: list) -> None:
    for i, (info, data) in enumerate(members):
        if info.name == "manifest.json":
            manifest = json.loads(data)
            manifest["models"][0]["threshold"]["value"] *= 10  # silence the alarms
            new = json.dumps(manifest).encode()
            info.size = len(new)
            members[i] = (info, new)


@pytest.fixture
def installed(tmp_path: Path, gateway: tuple[Path, KeyPair]) -> InstallSettings:
    config, keys = gateway
    settings = _settings(config)
    install(_bundle(tmp_path, keys, "1.0.0"), settings)
    return settings


TAMPERING = {
    "bit flip in the ONNX file": (_flip_bit("models/pump.onnx"), "integrity",
                                  "SHA-256 mismatch for file 'models/pump.onnx'"),
    "edited manifest": (_edit_manifest, "signature", "does not verify with trusted key"),
    "member with ../": (lambda m: m.append(_member("models/../../evil.sh")), "safe extraction",
                        "member 'models/../../evil.sh': unsafe path: path contains '..'"),
    "absolute path": (lambda m: m.append(_member("/etc/cron.d/evil")), "safe extraction",
                      "member '/etc/cron.d/evil': unsafe path: absolute"),
    "symlink": (lambda m: m.append(_member("models/link.onnx", b"", tarfile.SYMTYPE, "/etc/shadow")),
                "safe extraction", "is a symbolic link (to '/etc/shadow')"),
    "oversized member": (lambda m: m.append(_member("models/huge.bin", bytes(9 * 1024 * 1024))),
                         "safe extraction", "over the 8388608-byte limit"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_bundle_is_refused_and_active_unchanged(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                         installed: InstallSettings, case: str) -> None:
    _config, keys = gateway
    edit, check, detail = TAMPERING[case]
    good = _bundle(tmp_path, keys, "2.0.0")
    bad = _rewrite(good, tmp_path / "bad.bundle", edit)
    with pytest.raises(CheckError) as info:
        install(bad, installed)
    assert info.value.check == check
    assert f"check '{check}' failed" in str(info.value)
    assert detail in str(info.value)
    store = BundleStore(installed.state_dir)
    assert store.active_version() == "1.0.0"
    assert [b.version for b in store.versions()] == ["1.0.0"]
    assert not [p.name for p in store.root.iterdir() if p.name.startswith((".verify", ".staging"))]


@pytest.mark.parametrize("cut", [0.5, 0.02])
def test_a_copy_cut_short_fails_the_archive_check(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                  installed: InstallSettings, cut: float) -> None:
    _config, keys = gateway
    data = _bundle(tmp_path, keys, "2.0.0").read_bytes()
    short = tmp_path / "short.bundle"
    short.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CheckError) as info:
        install(short, installed)
    assert info.value.check == "archive"
    assert "corrupt tar archive" in str(info.value)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_untrusted_signer_is_refused(tmp_path: Path, installed: InstallSettings) -> None:
    stranger = make_keypair(tmp_path / "stranger")
    with pytest.raises(CheckError, match=rf"check 'signature' failed: signed with key id "
                       rf"'{stranger.key_id}', which is not trusted"):
        install(_bundle(tmp_path, stranger, "2.0.0"), installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_channels_no_asset_provides_are_refused(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                installed: InstallSettings) -> None:
    _config, keys = gateway
    bundle = _bundle(tmp_path, keys, "2.0.0", channels=["pressure", "flow", "temperature"])
    with pytest.raises(CheckError, match=r"check 'assets' failed: .*asset 'pump-1': channels do not match "
                       r"model 'pump' \(missing temperature; not inputs of the model: vibration\)"):
        install(bundle, installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_wrong_reference_outputs_are_refused(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                             installed: InstallSettings) -> None:
    """A correctly signed bundle whose model does not reproduce its own reference outputs."""
    _config, keys = gateway
    bundle = read_bundle(_bundle(tmp_path, keys, "2.0.0"), extract_to=tmp_path / "x")
    reference = bundle.reference("pump")
    reference["score"] = reference["score"] * 1.01
    np.savez(tmp_path / "x" / "reference" / "pump.npz", **reference)
    manifest = bundle.manifest.to_dict()
    manifest["files"] = {}
    manifest["models"][0]["sha256"] = manifest["models"][0]["reference"]["sha256"] = None
    resigned = tmp_path / "resigned.bundle"
    write_bundle(resigned, manifest, {name: tmp_path / "x" / name for name in bundle.manifest.files},
                 sign_key=keys.private_key)
    with pytest.raises(CheckError, match=r"check 'reference' failed: model 'pump' output 'score' differs"):
        install(resigned, installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def _resigned(tmp_path: Path, keys: KeyPair, src: Path, edit: Callable[[dict], None]) -> Path:
    """`src` with its manifest edited and signed again by a trusted key (the checks after the signature's)."""
    bundle = read_bundle(src, extract_to=tmp_path / "edit")
    manifest = bundle.manifest.to_dict()
    edit(manifest)
    manifest["files"] = {}
    manifest["models"][0]["sha256"] = manifest["models"][0]["reference"]["sha256"] = None
    out = tmp_path / "resigned.bundle"
    write_bundle(out, manifest, {name: tmp_path / "edit" / name for name in bundle.manifest.files},
                 sign_key=keys.private_key)
    return out


def test_a_manifest_that_does_not_describe_its_graph_is_refused(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                               installed: InstallSettings) -> None:
    """Signed and consistent with itself, but the window length it states is not the graph's: the agent
    would fail its warm-up at the next start. The reference check compares the manifest's input shape."""
    _config, keys = gateway

    def longer_windows(manifest: dict) -> None:
        manifest["models"][0]["input"]["window_length"] = 32  # the graph and the reference take 16

    bad = _resigned(tmp_path, keys, _bundle(tmp_path, keys, "2.0.0"), longer_windows)
    with pytest.raises(CheckError, match=r"check 'reference' failed: model 'pump': reference windows have "
                                         r"shape \(3, 3, 16\), the manifest says \(3, 3, 32\)"):
        install(bad, installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_profile_checks(tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings) -> None:
    _config, keys = gateway
    other = _bundle(tmp_path, keys, "2.0.0", compatibility={"min_onnxruntime": "1.17.0", "opset": 17,
                                                            "device_profiles": ["jetson-orin"]})
    with pytest.raises(CheckError, match="check 'device profile' failed: bundle is built for device profiles "
                       "jetson-orin; this gateway uses tiny"):
        install(other, installed)
    future = _bundle(tmp_path, keys, "3.0.0", compatibility={"min_onnxruntime": "99.0", "opset": 17,
                                                             "device_profiles": []})
    with pytest.raises(CheckError, match=r"check 'onnxruntime' failed: bundle needs onnxruntime >= 99\.0"):
        install(future, installed)


def test_install_rollback_list_remove_through_the_cli(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config, keys = gateway
    state = config.parent / "state"
    for version in ("1.0.0", "1.1.0"):
        bundle = _bundle(tmp_path, keys, version)
        assert main(["bundle", "install", str(bundle), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ok  reference" in out
    assert "installed and activated pumps 1.1.0 (previous: 1.0.0)" in out
    assert "no running agent" in out
    assert main(["bundle", "verify", str(_bundle(tmp_path, keys, "1.2.0")), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "passes every check (nothing was changed)" in out
    # what the model reads, units included, for wiring the sensors: a wrong unit shows only as an anomaly
    assert re.search(r"model pump: pressure \[bar\], flow \[m3/h\], vibration \[mm/s\]; window 16 samples "
                     r"every [0-9.]+ s, scored every 8; threshold [0-9.e+-]+", out), out
    assert ("    flat-line check: pressure, flow, vibration (none held one value for over half a window in "
            "512 healthy windows; a whole window without change alerts, unless [decisions] flatline = "
            "false)") in out
    assert main(["bundle", "list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in listing] == [["<", "1.0.0"], ["*", "1.1.0"]]
    assert main(["bundle", "remove", "1.1.0", "--config", str(config)]) == 1
    assert "1.1.0 is the active bundle and cannot be removed" in capsys.readouterr().err
    assert main(["bundle", "rollback", "--config", str(config)]) == 0
    assert "rolled back to pumps 1.0.0 (was 1.1.0)" in capsys.readouterr().out
    assert BundleStore(state).active_version() == "1.0.0"
    assert main(["bundle", "remove", "1.1.0", "--config", str(config)]) == 0
    assert [b.version for b in BundleStore(state).versions()] == ["1.0.0"]
    assert main(["bundle", "rollback", "--config", str(config)]) == 1
    assert "check 'rollback' failed: no previous version" in capsys.readouterr().err
    bad = _rewrite(_bundle(tmp_path, keys, "2.0.0"), tmp_path / "bad.bundle", _edit_manifest)
    assert main(["bundle", "install", str(bad), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err
    assert "check 'signature' failed" in err
    assert "the active bundle and the running agent are untouched" in err


def test_verify_without_config_where_the_default_file_is_missing_says_what_to_pass(
        tmp_path: Path, gateway: tuple[Path, KeyPair], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`bundle verify FILE` on a workstation, without `--config` and with no /etc/edge-agent/agent.toml: the
    error says why verify reads a config and to pass `--config` (exit 2, as for an invalid config)."""
    from edge_agent import configtools

    config, keys = gateway
    bundle = _bundle(tmp_path, keys, "1.0.0")
    default = tmp_path / "etc" / "agent.toml"  # stands in for /etc/edge-agent/agent.toml, which is not there
    monkeypatch.setattr(configtools, "DEFAULT_CONFIG_PATH", str(default))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    assert main(["bundle", "verify", str(bundle)]) == 2
    assert capsys.readouterr().err == (
        f"config error: no agent config at {default} (the default when neither --config nor "
        "$EDGE_AGENT_CONFIG is given): `edge-agent bundle verify` reads the gateway's agent config and "
        "checks the bundle against its [bundle] trusted_keys (the signing keys), device_profile and assets: "
        "pass --config PATH, or point $EDGE_AGENT_CONFIG at the file\n")
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(tmp_path / "moved.toml"))
    assert main(["bundle", "list"]) == 2
    assert (f"config error: no agent config at {tmp_path / 'moved.toml'} (from $EDGE_AGENT_CONFIG): "
            "`edge-agent bundle list` reads the gateway's agent config and lists the bundles installed under "
            "its state_dir: pass --config PATH") in capsys.readouterr().err
    # a missing file given with --config: the config error as for any command
    assert main(["bundle", "verify", str(bundle), "--config", str(tmp_path / "typo.toml")]) == 2
    assert capsys.readouterr().err == (f"config error: <top level>: cannot read config file: No such file or "
                                       f"directory (value: '{tmp_path / 'typo.toml'}')\n")
    # ... also when it names the default path itself: --config was given, so the plain error
    assert main(["bundle", "list", "--config", str(tmp_path / "moved.toml")]) == 2
    assert "cannot read config file: No such file or directory" in capsys.readouterr().err
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(config))
    assert main(["bundle", "verify", str(bundle)]) == 0
    assert "pumps 1.0.0 passes every check (nothing was changed)" in capsys.readouterr().out


def test_keep_last_n_versions(tmp_path: Path, gateway: tuple[Path, KeyPair]) -> None:
    config, keys = gateway
    settings = _settings(config)
    removed = []
    for version in ("1", "2", "3", "4", "5"):
        removed += install(_bundle(tmp_path, keys, version), settings).removed
    assert removed == ["1", "2"]
    assert [b.version for b in BundleStore(settings.state_dir).versions()] == ["3", "4", "5"]
    assert rollback(settings).installed.version == "4"
    assert rollback(settings, "3").installed.version == "3"
    assert BundleStore(settings.state_dir).active_version() == "3"
    again = install(tmp_path / "out" / "pumps-3.bundle", settings)  # the active version once more: a no-op
    assert (again.previous, again.agent) == ("3", "not notified")
    assert len(BundleStore(settings.state_dir).history()) == 7


def test_concurrent_installs_are_serialised(tmp_path: Path, gateway: tuple[Path, KeyPair]) -> None:
    """An install started while another holds the store lock waits, then completes; nothing interleaves."""
    config, keys = gateway
    settings = _settings(config)
    install(_bundle(tmp_path, keys, "1.0.0"), settings)
    second = _bundle(tmp_path, keys, "2.0.0")
    store = BundleStore(settings.state_dir)
    lines: list[str] = []
    with store.lock():
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "--log-level", "info", "bundle",
                                 "install", str(second), "--config", str(config), "--wait", "0"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        wait_until(lambda: any("waiting for another bundle operation" in line for line in lines), timeout=30,
                   what="the second install waiting for the lock")
        assert store.active_version() == "1.0.0"
        assert proc.poll() is None
    assert proc.wait(timeout=60) == 0, "".join(lines)
    reader.join(10)
    assert store.active_version() == "2.0.0"
    assert [(e["version"], e["previous"]) for e in store.history()] == [("1.0.0", None), ("2.0.0", "1.0.0")]


def test_unknown_schema_version_signed_by_a_trusted_key_is_refused(
        tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings) -> None:
    _config, keys = gateway

    def newer_schema(members: list) -> None:
        manifest = json.loads(next(data for info, data in members if info.name == "manifest.json"))
        manifest["schema_version"] = 3
        for i, (info, _data) in enumerate(members):
            new = {"manifest.json": json.dumps(manifest).encode(),
                   "signature": sign_manifest(manifest, keys.private_key)}.get(info.name)
            if new is not None:
                info.size = len(new)
                members[i] = (info, new)

    bad = _rewrite(_bundle(tmp_path, keys, "2.0.0"), tmp_path / "v2.bundle", newer_schema)
    with pytest.raises(CheckError, match=r"check 'schema version' failed: .*schema_version"):
        install(bad, installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_profile_requiring_a_missing_provider_refuses(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                      installed: InstallSettings) -> None:
    config, keys = gateway
    (config.parent / "tiny.toml").write_text(
        'memory_budget_mb = 32\n[[providers]]\nname = "CUDAExecutionProvider"\nrequired = true\n'
        '[[providers]]\nname = "CPUExecutionProvider"\n')
    with pytest.raises(CheckError, match="check 'onnxruntime' failed: device profile tiny requires "
                       "CUDAExecutionProvider, which this onnxruntime does not provide"):
        install(_bundle(tmp_path, keys, "2.0.0"), _settings(config))
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_without_a_device_profile_install_checks_use_the_agents_cpu_default(
        tmp_path: Path, gateway: tuple[Path, KeyPair]) -> None:
    import onnxruntime as ort

    from edge_agent.bundle.archive import MAX_MEMBER_BYTES
    from edge_agent.supervisor import provider_settings

    config_path, keys = gateway
    text = "\n".join(line for line in config_path.read_text().splitlines()
                     if not line.startswith("device_profile"))
    config_path.write_text(text)
    config = AgentConfig.load(config_path)
    assert config.device_profile is None
    settings = settings_from_config(config)
    # the same providers and threads the agent's sessions get without a profile
    assert settings.profile.provider_settings(ort.get_available_providers()) == provider_settings(config)
    assert settings.profile.accepts_precision("fp32")
    assert settings.profile.accepts_precision("int8")
    assert settings.max_member_bytes == MAX_MEMBER_BYTES  # no memory budget beyond the archive limit
    outcome = install(_bundle(tmp_path, keys, "1.0.0"), settings, notify=False)
    assert outcome.installed.version == "1.0.0"


def test_an_activation_that_cannot_be_recorded_is_undone(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                         installed: InstallSettings,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The history write fails (here: history.jsonl is a directory; a full disk or a file size limit fail
    the same way): `active` goes back to the previous version, and the CLI says nothing was changed."""
    config, keys = gateway
    store = BundleStore(installed.state_dir)
    history = store.root / "history.jsonl"
    history.rename(store.root / "history.saved")
    history.mkdir()
    bundle = _bundle(tmp_path, keys, "2.0.0")
    assert main(["bundle", "install", str(bundle), "--config", str(config), "--wait", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{history}: cannot record the activation of 2.0.0" in err
    assert "1.0.0 stays active" in err
    assert "nothing was changed" in err
    assert store.active_version() == "1.0.0"


def test_require_signature_false_installs_what_the_agent_would_load(tmp_path: Path,
                                                                    gateway: tuple[Path, KeyPair]) -> None:
    config, _keys = gateway
    config.write_text(config.read_text().replace("keep = 3", "keep = 3\nrequire_signature = false"))
    unsigned = build_test_bundle(tmp_path / "out", version="1.0.0", sign_key=None, name="pumps",
                                 channels=CHANNELS, window_length=16, stride=8)
    outcome = install(unsigned, _settings(config))
    assert outcome.installed.version == "1.0.0"
    assert BundleStore(_settings(config).state_dir).active_version() == "1.0.0"


@contextlib.contextmanager
def _pid_file_naming_a_stand_in(settings: InstallSettings) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line says edge-agent (it is not one), named by the pid file."""
    assert settings.pid_path is not None
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "edge-agent"])
    try:
        settings.pid_path.write_text(f"{process.pid}\n")
        yield process
    finally:
        process.kill()
        process.wait(10)


def test_a_stale_pid_file_is_not_signalled(tmp_path: Path, gateway: tuple[Path, KeyPair]) -> None:
    """An agent killed with -9 leaves its pid file; the pid can be reused by another process (here one whose
    command line even says edge-agent). No agent holds the instance lock, so nothing is signalled: SIGHUP
    would have killed that process."""
    config, keys = gateway
    settings = _settings(config)
    with _pid_file_naming_a_stand_in(settings) as bystander:
        settings.lock_path.write_text("")  # the lock file of the agent that died; nobody holds it
        outcome = install(_bundle(tmp_path, keys, "1.0.0"), settings)
        assert outcome.agent.startswith(f"no running agent (no agent holds {settings.lock_path}; pid "
                                        f"{bystander.pid} in {settings.pid_path} is stale)")
        assert bystander.poll() is None  # not signalled
        assert BundleStore(settings.state_dir).active_version() == "1.0.0"  # the activation stands


def test_a_damaged_history_does_not_stop_installs_or_rollbacks(
        tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings,
        caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that are not UTF-8 and a JSON line that is not an object used to crash `install` after it had
    switched `active` (the agent was never told) and `list` / `rollback` outright."""
    _config, keys = gateway
    history = installed.state_dir / "bundles" / "history.jsonl"
    with history.open("ab") as handle:
        handle.write(b"\xff\xfe garbage\nnull\n")
    install(_bundle(tmp_path, keys, "2.0.0"), installed)
    store = BundleStore(installed.state_dir)
    assert store.active_version() == "2.0.0"
    assert store.previous_version() == "1.0.0"
    assert "line 2 is not a JSON object, ignored" in caplog.text
    assert "line 3 is not a JSON object, ignored" in caplog.text
    rollback(installed)
    assert store.active_version() == "1.0.0"


def test_the_stores_own_file_names_are_not_versions(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                                    installed: InstallSettings) -> None:
    _config, keys = gateway
    with pytest.raises(StoreError, match=r"bundle version 'history\.jsonl' cannot be stored"):
        install(_bundle(tmp_path, keys, "history.jsonl"), installed)
    assert BundleStore(installed.state_dir).active_version() == "1.0.0"


def test_a_broken_active_link_is_an_error_not_a_silent_fallback(
        tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`active` pointing at a version that is not installed used to make the agent load `[bundle] path`
    (an older bundle, perhaps) without a word; check-config said OK."""
    config, _keys = gateway
    link = installed.state_dir / "bundles" / "active"
    link.unlink()
    link.symlink_to("9.9.9")
    with pytest.raises(ConfigError, match=r"active points to '9\.9\.9', which holds no bundle\.tar: the "
                                          r"installed bundle is damaged"):
        AgentConfig.load(config).bundle_path()
    assert main(["check-config", "--config", str(config)]) == 1
    assert "bundle rollback VERSION` or `bundle install` repairs it" in capsys.readouterr().err


def test_what_is_stored_is_what_was_verified(tmp_path: Path, gateway: tuple[Path, KeyPair],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The file given to `install` is replaced by an unsigned bundle while the checks run (a copy still
    being written, or a swap on purpose): the stored bundle is the copy that was verified, not what the path
    holds by the time it is stored."""
    from edge_agent.bundle import install as install_module

    config, keys = gateway
    settings = _settings(config)
    given = _bundle(tmp_path, keys, "3.0.0")
    verified_bytes = given.read_bytes()
    unsigned = build_test_bundle(tmp_path / "unsigned", version="3.0.0", sign_key=None, name="pumps",
                                 window_length=16, stride=8, channels=CHANNELS)
    real_verify = install_module.verify

    def swapping_verify(bundle_file: Path, settings: InstallSettings, workdir: Path) -> object:
        given.write_bytes(unsigned.read_bytes())  # the path changes under the running install
        return real_verify(bundle_file, settings, workdir)

    monkeypatch.setattr(install_module, "verify", swapping_verify)
    outcome = install(given, settings, notify=False)
    stored = outcome.installed.bundle_file.read_bytes()
    assert stored == verified_bytes
    read_bundle(outcome.installed.bundle_file, trusted_keys=config.parent / "keys", extract_to=tmp_path / "x")


def test_work_files_of_a_killed_install_are_removed_by_the_next_operation(
        tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings) -> None:
    """`kill -9` during an install leaves its extraction and staging copy (the bundle's size each time);
    the next operation that takes the store lock removes them."""
    _config, keys = gateway
    root = installed.state_dir / "bundles"
    (root / ".verify-abc123" / "extracted").mkdir(parents=True)
    (root / ".verify-abc123" / "incoming.bundle").write_bytes(bytes(1024))
    (root / ".staging-def456").mkdir()
    (root / ".active.4242").symlink_to("1.0.0")
    install(_bundle(tmp_path, keys, "2.0.0"), installed, notify=False)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".lock"]
    assert BundleStore(installed.state_dir).active_version() == "2.0.0"


def test_only_a_status_written_after_the_notification_by_that_agent_counts(
        tmp_path: Path, installed: InstallSettings) -> None:
    """status.json from an earlier run (or a stopped agent) can already name the new version: the switch
    check needs one written after the notification by the process in the pid file."""
    from edge_agent.bundle.install import wait_for_agent

    assert installed.status_path is not None
    assert installed.pid_path is not None
    installed.pid_path.write_text("4242\n")
    since = time.time()
    installed.status_path.write_text(json.dumps({"pid": 4242, "updated_at": since - 60,
                                                 "bundle": {"name": "pumps", "version": "1.0.0"}}))
    assert not wait_for_agent(installed, "1.0.0", 0.3, since=since)  # stale
    installed.status_path.write_text(json.dumps({"pid": 999, "updated_at": since + 1,
                                                 "bundle": {"name": "pumps", "version": "1.0.0"}}))
    assert not wait_for_agent(installed, "1.0.0", 0.3, since=since)  # another process wrote it
    installed.status_path.write_text(json.dumps({"pid": 4242, "updated_at": since + 1,
                                                 "bundle": {"name": "pumps", "version": "1.0.0"}}))
    assert wait_for_agent(installed, "1.0.0", 0.3, since=since)


def test_an_install_superseded_while_the_agent_switches_is_not_a_failure(
        tmp_path: Path, gateway: tuple[Path, KeyPair], installed: InstallSettings,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two installs at once: the agent takes the later one before the earlier one sees its own version in
    the status; the earlier one used to report a failed switch and exit 1."""
    from edge_agent.bundle.cli import _switch_agent

    _config, keys = gateway
    install(_bundle(tmp_path, keys, "2.0.0"), installed, notify=False)
    install(_bundle(tmp_path, keys, "3.0.0"), installed, notify=False)  # the other operation, later
    code = _switch_agent(installed, "agent pid 4242 notified (SIGHUP)", "2.0.0", "1.0.0", wait_s=0.2,
                         since=time.time())
    assert code == 0
    assert ("2.0.0 was superseded while the agent switched: the active bundle is 3.0.0 now"
            in capsys.readouterr().out)
    assert BundleStore(installed.state_dir).active_version() == "3.0.0"  # left as it is


def test_without_a_lock_file_the_pid_file_is_trusted_as_before(tmp_path: Path,
                                                              gateway: tuple[Path, KeyPair]) -> None:
    """An agent started before the instance lock existed (the package upgraded, the service not restarted
    yet) has no lock file: install still notifies the edge-agent process the pid file names."""
    config, keys = gateway
    settings = _settings(config)
    with _pid_file_naming_a_stand_in(settings) as older_agent:
        assert not settings.lock_path.exists()
        outcome = install(_bundle(tmp_path, keys, "1.0.0"), settings)
        assert outcome.agent == f"agent pid {older_agent.pid} notified (SIGHUP)"
        assert older_agent.wait(10) == -1  # SIGHUP's default action ended the stand-in
