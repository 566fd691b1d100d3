"""Ed25519 key files and signatures over the canonical manifest bytes."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from edge_agent.bundle import (
    BundleSignatureError,
    SigningKeyError,
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_keys,
    sign_manifest,
    verify_manifest,
)
from tests.support.bundles import make_keypair

MANIFEST = {"name": "b", "version": "1", "models": [{"threshold": {"value": 1.5}}], "unicode": "Δp"}


def test_keygen_writes_private_key_0600_and_matching_public_key(tmp_path: Path) -> None:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = load_private_key(private_path)
    trusted = load_public_keys(public_path)
    assert list(trusted) == [key_id(private)]
    assert len(key_id(private)) == 16
    int(key_id(private), 16)


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_keypair(tmp_path)
    before = (tmp_path / "signing.key").read_bytes()
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keypair(tmp_path)
    assert (tmp_path / "signing.key").read_bytes() == before


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read private key"),
    (b"not a key", "not an unencrypted PEM private key"),
    ("ed448", "expected an Ed25519 private key"),
])
def test_bad_private_key_files_are_named(tmp_path: Path, content: bytes | str | None, message: str) -> None:
    path = tmp_path / "k.key"
    if content == "ed448":
        content = Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    if isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=message) as info:
        load_private_key(path)
    assert str(path) in str(info.value)


def test_public_key_loading_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SigningKeyError, match="no trusted public keys"):
        load_public_keys(empty)
    keys = make_keypair(tmp_path / "k")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "private.pem").write_bytes(keys.private_path.read_bytes())
    with pytest.raises(SigningKeyError, match=r"private\.pem"):
        load_public_keys(mixed)


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    assert canonical_manifest_bytes({"b": 1, "a": "Δ"}) == '{"a":"Δ","b":1}'.encode()
    with pytest.raises(ValueError, match="JSON compliant"):
        canonical_manifest_bytes({"x": float("nan")})


def test_signature_verifies_and_names_the_key(tmp_path: Path) -> None:
    keys = make_keypair(tmp_path)
    signature = sign_manifest(MANIFEST, keys.private_key)
    assert json.loads(signature)["key_id"] == keys.key_id
    trusted = load_public_keys(tmp_path)
    assert verify_manifest(json.loads(json.dumps(MANIFEST)), signature, trusted) == keys.key_id


def test_changed_manifest_fails_verification(tmp_path: Path) -> None:
    keys = make_keypair(tmp_path)
    signature = sign_manifest(MANIFEST, keys.private_key)
    changed = json.loads(json.dumps(MANIFEST))
    changed["models"][0]["threshold"]["value"] = 1.6
    with pytest.raises(BundleSignatureError, match="does not verify") as info:
        verify_manifest(changed, signature, load_public_keys(tmp_path))
    assert info.value.key_id == keys.key_id


def test_untrusted_key_is_named(tmp_path: Path) -> None:
    signer = make_keypair(tmp_path / "signer")
    make_keypair(tmp_path / "trusted")
    signature = sign_manifest(MANIFEST, signer.private_key)
    with pytest.raises(BundleSignatureError, match=f"key id '{signer.key_id}', which is not trusted"):
        verify_manifest(MANIFEST, signature, load_public_keys(tmp_path / "trusted"))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(algorithm="rsa"), "unsupported signature algorithm"),
    (lambda d: d.update(signature="***"), "not valid base64"),
    (lambda d: d.update(extra=1), "exactly the keys"),
    (lambda d: d.update(signature=base64.b64encode(b"\0" * 64).decode()), "does not verify"),
])
def test_malformed_signature_files(tmp_path: Path, mutate, message: str) -> None:
    keys = make_keypair(tmp_path)
    document = json.loads(sign_manifest(MANIFEST, keys.private_key))
    mutate(document)
    with pytest.raises(BundleSignatureError, match=message):
        verify_manifest(MANIFEST, json.dumps(document).encode(), load_public_keys(tmp_path))
    with pytest.raises(BundleSignatureError, match="not valid JSON"):
        verify_manifest(MANIFEST, b"\xff{", load_public_keys(tmp_path))


def test_verifying_a_manifest_with_nan_is_a_format_error(tmp_path: Path) -> None:
    from edge_agent.bundle import BundleFormatError

    keys = make_keypair(tmp_path)
    signature = sign_manifest(MANIFEST, keys.private_key)
    changed = json.loads(json.dumps(MANIFEST))
    changed["models"][0]["threshold"]["value"] = float("nan")
    with pytest.raises(BundleFormatError, match="cannot be serialised canonically"):
        verify_manifest(changed, signature, load_public_keys(tmp_path), bundle="b.bundle")
