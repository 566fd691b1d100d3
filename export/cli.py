"""`edge-trainer keygen` and `edge-trainer export`."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from edge_agent.bundle import BundleError, generate_keypair, key_id, load_private_key
from trainer.cli import at_least

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keygen` and `export` to the `edge-trainer` parser."""
    keygen = subparsers.add_parser("keygen", help="create an Ed25519 bundle-signing key pair")
    keygen.add_argument("--out", type=Path, required=True,
                        help="directory for signing.key (0600) and signing.pub")
    keygen.add_argument("--name", default="signing", help="file name stem (default: signing)")
    keygen.set_defaults(func=cmd_keygen)

    export = subparsers.add_parser("export", help="export a trained run to a signed ONNX bundle")
    export.add_argument("--run", type=Path, required=True, help="RUN_DIR written by `edge-trainer fit`")
    export.add_argument("--out", type=Path, required=True,
                        help="bundle file to write (NAME.bundle); must not exist")
    export.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="auto keeps int8 only if it passes the accuracy and speed guard (default)")
    export.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign the manifest with")
    export.add_argument("--name", type=_bundle_name, help="bundle name, at most 128 characters (default: the "
                        "run directory's name)")
    export.add_argument("--version", type=_bundle_version, help="bundle version, at most 64 characters "
                        "(default: UTC date-time)")
    export.add_argument("--model-name", help="model name in the manifest (default: the run's data source)")
    export.add_argument("--device-profile", action="append", dest="device_profiles", metavar="NAME|PATH",
                        type=_device_profile,
                        help="device profile of the gateways that may install the bundle: a known profile's "
                        "name, or the path of a profile file (its name is the file's stem), repeatable; "
                        "default: generic, any gateway")
    export.add_argument("--latency-repeats", type=at_least(1), default=200,
                        help="timed runs per latency measurement (batch 1; batch 32 uses a quarter)")
    export.set_defaults(func=cmd_export)


def _bundle_version(text: str) -> str:
    """Checked before any work: the manifest, and the gateway's store, take 1-64 letters, digits, . _ + -."""
    from edge_agent.bundle.parsing import VERSION_RE

    return _matching(text, VERSION_RE, 64)


def _bundle_name(text: str) -> str:
    from edge_agent.bundle.parsing import NAME_RE

    return _matching(text, NAME_RE, 128)


def _matching(text: str, pattern: re.Pattern[str], most: int) -> str:
    if not pattern.match(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: 1-{most} characters of letters, digits, . _ + - "
                                         "starting with a letter or digit")
    return text


def _device_profile(text: str) -> str:
    """One `--device-profile`, checked before any work; returns the name the manifest lists.

    A gateway installs a bundle only when the manifest names its profile, and a gateway's profile is named
    after its file's stem (`edge_agent.profiles`), so a misspelt name would give a bundle that no gateway
    with a profile installs. Accepted: `generic`/`any`; a name `edge_agent.profiles.load_profile` finds here
    ($EDGE_AGENT_PROFILE_PATH, /etc/edge-agent/device_profiles, the shipped device_profiles/); or the path of
    a profile file (a gateway's own profile, copied to the workstation), which is loaded strictly and gives
    its stem. Anything else is refused with the known names."""
    from edge_agent.bundle.install import ANY_PROFILE
    from edge_agent.configtools import ConfigError
    from edge_agent.profiles import available_profiles, load_profile

    if text in ANY_PROFILE:
        return text
    is_path = "/" in text or text.endswith(".toml")
    known_profiles = available_profiles()  # one scan of the profile directories
    if not is_path and text not in known_profiles:
        known = ", ".join(sorted(known_profiles)) or "none"
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r}: no such device profile (known: {known}; generic or any: every gateway). For a "
            "gateway's own profile give the path of its file (NAME.toml: the bundle then names NAME) or add "
            "its directory to $EDGE_AGENT_PROFILE_PATH")
    try:
        return load_profile(text).name
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(
            f"{text[:200]!r}: {exc.message if exc.path == 'device_profile' else exc}") from exc


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = generate_keypair(args.out, args.name)
    except BundleError as exc:
        print(f"edge-trainer keygen: {exc}", file=sys.stderr)
        return 1
    kid = key_id(load_private_key(private_path))
    print(f"private key {private_path} (mode 0600, keep it secret)\npublic key  {public_path} "
          f"(copy into the gateways' trusted-keys directory)\nkey id      {kid}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from export.pipeline import export_run
    from export.run_dir import ExportError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # onnxruntime's quantisation tools log their internal steps at INFO ("Performing symbolic shape
    # inference..."): nothing the user acts on
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    try:
        result = export_run(args.run, args.out, precision=args.precision, sign_key=args.sign_key,
                            name=args.name, version=args.version, model_name=args.model_name,
                            device_profiles=tuple(dict.fromkeys(args.device_profiles or ("generic",))),
                            latency_repeats=args.latency_repeats)
    except (ExportError, BundleError) as exc:
        print(f"edge-trainer export: {exc}", file=sys.stderr)
        return 1
    model = result.manifest.models[0]
    if args.sign_key is None:
        log.warning("the bundle is not signed: a gateway refuses it unless its config sets [bundle] "
                    "require_signature = false; sign with --sign-key (edge-trainer keygen makes a key)")
    if args.model_name is None:
        log.warning("model name %r (the run's data source, the default): a gateway's assets name it as "
                    "model = %r; --model-name chooses another", model.name, model.name)
    flat = model.flatline.channels if model.flatline is not None else ()
    left_out = [c for c in model.input.channels if c not in flat]
    if left_out:
        log.info("flat-line check (a stuck sensor alerts): %s; left out, since in healthy data they held one "
                 "value for over half a window: %s", ", ".join(flat) or "no channel", ", ".join(left_out))
    summary = {"bundle": str(result.path), "name": result.manifest.name, "version": result.manifest.version,
               "signed": args.sign_key is not None, "precision": model.precision,
               "reason": model.precision_decision.reason, "threshold": model.threshold.value,
               "flatline": {"channels": list(flat), "left_out": left_out}, "metrics": model.metrics}
    print(json.dumps(summary, indent=2))
    return 0
