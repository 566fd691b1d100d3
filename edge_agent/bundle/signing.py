"""Ed25519 signatures over the canonical manifest bytes, and the PEM key files they use.

The `signature` member of a bundle is JSON::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

signed over `canonical_manifest_bytes(manifest)`. The manifest lists the SHA-256 of every other file,
so this one signature covers the whole bundle. `key_id` is the first 16 hex digits of the SHA-256 of the
raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.bundle.errors import BundleFormatError, BundleSignatureError, SigningKeyError

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
PUBLIC_KEY_SUFFIXES = (".pub", ".pem")

TrustedKeys = Path | str | Mapping[str, Ed25519PublicKey] | Iterable[Ed25519PublicKey | Path | str]


def canonical_manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN/Infinity."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key (of a private key's public half)."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path | str, name: str = "signing") -> tuple[Path, Path]:
    """Create `<name>.key` (PKCS8 PEM, mode 0600) and `<name>.pub` (SubjectPublicKeyInfo PEM) in `out_dir`.

    Refuses to overwrite existing files. Returns (private key path, public key path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError("already exists; refusing to overwrite a key file", key_file=path)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    log.info("created signing key %s (key id %s)", private_path, key_id(private_key))
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningKeyError("already exists; refusing to overwrite a key file", key_file=path) from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(mode)  # os.open's mode is filtered by the umask; set it exactly


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Load an unencrypted PKCS8 PEM Ed25519 private key, with a clear error for anything else."""
    key_file = Path(path)
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read private key: {exc.strerror or exc}", key_file=key_file) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not an unencrypted PEM private key ({exc})", key_file=key_file) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"expected an Ed25519 private key, got {type(key).__name__}", key_file=key_file)
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load one SubjectPublicKeyInfo PEM Ed25519 public key."""
    key_file = Path(path)
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read public key: {exc.strerror or exc}", key_file=key_file) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"not a PEM public key ({exc})", key_file=key_file) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"expected an Ed25519 public key, got {type(key).__name__}", key_file=key_file)
    return key


def load_public_keys(source: TrustedKeys) -> dict[str, Ed25519PublicKey]:
    """Trusted keys by key id, from a directory of `*.pub`/`*.pem` files, one key file, a mapping,
    or an iterable of keys and key files. An empty result is an error (nothing could ever verify)."""
    keys: dict[str, Ed25519PublicKey] = {}
    if isinstance(source, Mapping):
        keys = {key_id(key): key for key in source.values()}
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in PUBLIC_KEY_SUFFIXES and p.is_file())
            keys = {key_id(k): k for k in map(load_public_key, files)}
            if not keys:
                raise SigningKeyError("no trusted public keys (*.pub, *.pem) in this directory",
                                      key_file=path)
        else:
            key = load_public_key(path)
            keys = {key_id(key): key}
    else:
        for item in source:
            key = item if isinstance(item, Ed25519PublicKey) else load_public_key(item)
            keys[key_id(key)] = key
    if not keys:
        raise SigningKeyError("no trusted public keys given")
    return keys


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """The content of the `signature` member for this manifest."""
    signature = private_key.sign(canonical_manifest_bytes(manifest))
    document = {"algorithm": ALGORITHM, "key_id": key_id(private_key),
                "signature": base64.b64encode(signature).decode("ascii")}
    return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()


def verify_manifest(manifest: Mapping[str, Any], signature_file: bytes,
                    trusted: Mapping[str, Ed25519PublicKey], *, bundle: str | Path | None = None) -> str:
    """Check `signature_file` over `manifest` against `trusted` keys; return the signing key id."""
    try:
        document = json.loads(signature_file)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleSignatureError(f"signature file is not valid JSON ({exc})", bundle=bundle) from exc
    if not isinstance(document, dict) or set(document) != {"algorithm", "key_id", "signature"}:
        raise BundleSignatureError("signature file must be an object with exactly the keys "
                                   "algorithm, key_id, signature", bundle=bundle)
    algorithm, signer, encoded = document["algorithm"], document["key_id"], document["signature"]
    if algorithm != ALGORITHM:
        raise BundleSignatureError(f"unsupported signature algorithm {algorithm!r} (expected "
                                   f"{ALGORITHM!r})", bundle=bundle)
    if not isinstance(signer, str) or signer not in trusted:
        raise BundleSignatureError(
            f"signed with key id {signer!r}, which is not trusted (trusted key ids: "
            f"{', '.join(sorted(trusted)) or 'none'})", bundle=bundle, key_id=str(signer))
    try:
        raw = base64.b64decode(str(encoded), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BundleSignatureError("signature is not valid base64", bundle=bundle, key_id=signer) from exc
    try:
        message = canonical_manifest_bytes(manifest)
    except (ValueError, TypeError) as exc:  # NaN/Infinity or a non-JSON value: nothing canonical to verify
        raise BundleFormatError(f"manifest cannot be serialised canonically ({exc})", bundle=bundle) from exc
    try:
        trusted[signer].verify(raw, message)
    except InvalidSignature as exc:
        raise BundleSignatureError(f"signature does not verify with trusted key {signer} (the manifest "
                                   "was changed or signed with another key)", bundle=bundle,
                                   key_id=signer) from exc
    return signer
