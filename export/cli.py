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
    export.add_argument("--device-profile", action="append", dest="device_profiles", metavar="NAME",
                        help="device profile the bundle is validated for (repeatable; default: generic)")
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


def _warn_unknown_profiles(names: tuple[str, ...] | list[str]) -> None:
    """A profile name no profile directory here knows: likely a typo, and every gateway with another profile
    name would refuse the bundle. A gateway's own profile (in its /etc/edge-agent/device_profiles) may be
    unknown on the workstation, so this warns rather than refuses."""
    from edge_agent.configtools import ConfigError
    from edge_agent.profiles import load_profile

    for name in names:
        if name in ("generic", "any"):
            continue
        try:
            load_profile(name)
        except ConfigError:
            logging.getLogger("export").warning(
                "--device-profile %s: no such profile here (the shipped ones are in device_profiles/); only "
                "gateways whose profile is named %s will install this bundle", name, name)


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
    _warn_unknown_profiles(args.device_profiles or ())
    try:
        result = export_run(args.run, args.out, precision=args.precision, sign_key=args.sign_key,
                            name=args.name, version=args.version, model_name=args.model_name,
                            device_profiles=tuple(args.device_profiles or ("generic",)),
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
    summary = {"bundle": str(result.path), "name": result.manifest.name, "version": result.manifest.version,
               "signed": args.sign_key is not None, "precision": model.precision,
               "reason": model.precision_decision.reason, "threshold": model.threshold.value,
               "metrics": model.metrics}
    print(json.dumps(summary, indent=2))
    return 0
