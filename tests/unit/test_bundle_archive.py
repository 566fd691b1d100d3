"""Reading and writing bundle archives: verification, safe extraction, atomic writes."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import (
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    BundleSignatureError,
    UnsafeArchiveError,
    read_bundle,
    write_bundle,
)
from tests.support.bundles import build_test_bundle, make_keypair, run_model, write_test_public_key


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle signed with the test key, trusted-keys dir holding its public key)."""
    root = tmp_path_factory.mktemp("built")
    path = build_test_bundle(root, compress=False)
    return path, write_test_public_key(root / "trusted").parent


@pytest.fixture
def bundle_path(built: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copy(built[0], tmp_path / "b.bundle"))


@pytest.fixture
def trusted(built: tuple[Path, Path]) -> Path:
    return built[1]


def members_of(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def repack(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> Path:
    """Write `members` (plus raw `extra` headers without data) as a plain tar at `path`."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return path


def test_read_verifies_and_extracts(bundle_path: Path, trusted: Path, tmp_path: Path) -> None:
    bundle = read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")
    assert bundle.root == tmp_path / "x"
    assert bundle.key_id is not None
    assert bundle.model_path("pump").is_file()
    reference = bundle.reference("pump")
    assert reference["window"].shape == (3, 3, 32)
    outputs = run_model(bundle.model_path("pump"), reference["window"])
    np.testing.assert_allclose(outputs["score"], reference["score"], rtol=1e-6)
    # the offset on channel 0 in the last reference window raises the score and ranks channel 0 first
    assert reference["score"][2] > bundle.manifest.model("pump").threshold.value
    assert int(np.argmax(reference["channel_error"][2])) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]  # no staging dir left


def test_gzip_bundle_without_extract_to_uses_a_temp_dir(tmp_path: Path, trusted: Path) -> None:
    path = build_test_bundle(tmp_path, name="gz", channels=["a"], window_length=4, stride=4)
    with path.open("rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"
    bundle = read_bundle(path, trusted_keys=trusted)
    try:
        assert bundle.manifest.model("pump").input.channels == ("a",)
    finally:
        shutil.rmtree(bundle.root)


def test_unsigned_bundle_needs_no_keys_but_fails_with_keys(tmp_path: Path, trusted: Path) -> None:
    path = build_test_bundle(tmp_path, sign_key=None, channels=["a"], window_length=4)
    assert read_bundle(path, extract_to=tmp_path / "ok").key_id is None
    with pytest.raises(BundleSignatureError, match="not signed"):
        read_bundle(path, trusted_keys=trusted, extract_to=tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_untrusted_signer_is_named(tmp_path: Path) -> None:
    signer = make_keypair(tmp_path / "signer")
    other = make_keypair(tmp_path / "other")
    path = build_test_bundle(tmp_path, sign_key=signer.private_path, channels=["a"], window_length=4)
    with pytest.raises(BundleSignatureError, match=signer.key_id) as info:
        read_bundle(path, trusted_keys=[other.public_path], extract_to=tmp_path / "x")
    assert info.value.key_id == signer.key_id
    bundle = read_bundle(path, trusted_keys=[signer.public_key], extract_to=tmp_path / "y")
    assert bundle.key_id == signer.key_id


@pytest.mark.parametrize("member", ["manifest.json", "signature", "models/pump.onnx", "reference/pump.npz"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_any_bit_flip_fails(bundle_path: Path, trusted: Path, tmp_path: Path, member: str,
                            where: float) -> None:
    members = members_of(bundle_path)
    data = bytearray(members[member])
    data[int(len(data) * where)] ^= 0x04
    members[member] = bytes(data)
    repack(bundle_path, members)
    expected = {"manifest.json": (BundleSignatureError, BundleFormatError), "signature": BundleSignatureError,
                "models/pump.onnx": BundleIntegrityError, "reference/pump.npz": BundleIntegrityError}[member]
    with pytest.raises(expected) as info:
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")
    if expected is BundleIntegrityError:
        assert member in str(info.value)
        assert "SHA-256 mismatch" in str(info.value)
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b.bundle"]


def test_missing_and_extra_files(bundle_path: Path, trusted: Path, tmp_path: Path) -> None:
    members = members_of(bundle_path)
    del members["reference/pump.npz"]
    repack(bundle_path, members)
    with pytest.raises(BundleIntegrityError, match=r"'reference/pump\.npz' is listed in the manifest but"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")
    members = members_of(bundle_path) | {"reference/pump.npz": b"", "notes.txt": b"hi"}
    repack(bundle_path, members)
    with pytest.raises(BundleIntegrityError, match=r"'notes\.txt' is in the archive but not listed"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")


def _link(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(("bad", "message"), [
    (_link("/etc/evil", tarfile.REGTYPE), "absolute"),
    (_link("../evil", tarfile.REGTYPE), ".."),
    (_link("models/../../evil", tarfile.REGTYPE), ".."),
    (_link("models/link.onnx", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    (_link("models/hard.onnx", tarfile.LNKTYPE, "manifest.json"), "hard link"),
    (_link("dev", tarfile.CHRTYPE), "device file"),
    (_link("pipe", tarfile.FIFOTYPE), "fifo"),
    (_link("models", tarfile.DIRTYPE), "directory"),
    (_link("manifest.json", tarfile.REGTYPE), "more than once"),
])
def test_unsafe_members_are_refused_before_extraction(bundle_path: Path, trusted: Path, tmp_path: Path,
                                                      bad: tarfile.TarInfo, message: str) -> None:
    repack(bundle_path, members_of(bundle_path), extra=[bad])
    with pytest.raises(UnsafeArchiveError, match=message) as info:
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")
    assert info.value.member == bad.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]


def test_size_and_count_limits(bundle_path: Path, trusted: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="over the 100-byte limit"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x", max_member_bytes=100)
    with pytest.raises(UnsafeArchiveError, match="more than 2 members"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x", max_members=2)
    with pytest.raises(UnsafeArchiveError, match="total more than"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x", max_total_bytes=1000)


def test_not_a_bundle(tmp_path: Path, trusted: Path) -> None:
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(BundleFormatError, match="not a readable tar"):
        read_bundle(junk, trusted_keys=trusted)
    with pytest.raises(BundleError, match="no such bundle file"):
        read_bundle(tmp_path / "absent.bundle")
    no_manifest = repack(tmp_path / "nm.bundle", {"models/pump.onnx": b"x"})
    with pytest.raises(BundleFormatError, match=r"no manifest\.json"):
        read_bundle(no_manifest)


def test_schema_version_checked_after_signature(bundle_path: Path, tmp_path: Path) -> None:
    members = members_of(bundle_path)
    manifest = json.loads(members["manifest.json"])
    manifest["schema_version"] = 7
    members["manifest.json"] = json.dumps(manifest).encode()
    repack(bundle_path, members)
    with pytest.raises(BundleFormatError, match="unsupported schema_version 7"):
        read_bundle(bundle_path, extract_to=tmp_path / "x")


def test_extract_to_must_be_new_or_empty(bundle_path: Path, trusted: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(BundleError, match="not empty"):
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    assert read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "empty").root.is_dir()


def test_write_is_atomic_and_refuses_existing_output(bundle_path: Path, tmp_path: Path) -> None:
    x = read_bundle(bundle_path, extract_to=tmp_path / "x")
    files = {name: x.root / name for name in x.manifest.files}
    before = bundle_path.read_bytes()
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(bundle_path, x.manifest, files)
    assert bundle_path.read_bytes() == before
    bad = x.manifest.to_dict()
    bad["models"][0]["debounce"]["k"] = 0
    with pytest.raises(BundleFormatError, match="debounce -> k"):
        write_bundle(tmp_path / "bad.bundle", bad, files)
    with pytest.raises(BundleIntegrityError, match="does not match the files given"):
        write_bundle(tmp_path / "bad.bundle", x.manifest, {"models/pump.onnx": files["models/pump.onnx"]})
    assert not (tmp_path / "bad.bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_is_deterministic(bundle_path: Path, tmp_path: Path) -> None:
    x = read_bundle(bundle_path, extract_to=tmp_path / "x")
    files = {name: x.root / name for name in x.manifest.files}
    keys = make_keypair(tmp_path / "k")
    first = write_bundle(tmp_path / "a.bundle", x.manifest, files, sign_key=keys.private_key)
    write_bundle(tmp_path / "c.bundle", x.manifest.to_dict(), files, sign_key=keys.private_key)
    assert first == x.manifest
    assert (tmp_path / "a.bundle").read_bytes() == (tmp_path / "c.bundle").read_bytes()
    assert read_bundle(tmp_path / "a.bundle", trusted_keys=tmp_path / "k", extract_to=tmp_path / "y").key_id \
        == keys.key_id


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_the_manifest_are_a_format_error(bundle_path: Path, trusted: Path,
                                                               tmp_path: Path, literal: str) -> None:
    members = members_of(bundle_path)
    text = members["manifest.json"].decode()
    manifest = json.loads(text)
    value = manifest["models"][0]["threshold"]["value"]
    members["manifest.json"] = text.replace(json.dumps(value), literal, 1).encode()
    assert literal.encode() in members["manifest.json"]
    repack(bundle_path, members)
    for keys in (trusted, None):
        with pytest.raises(BundleFormatError, match=r"manifest\.json is not valid JSON"):
            read_bundle(bundle_path, trusted_keys=keys, extract_to=tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]


def test_member_that_is_also_a_directory_prefix_is_refused(bundle_path: Path, trusted: Path,
                                                           tmp_path: Path) -> None:
    clash = tarfile.TarInfo("models")  # a regular file named like the directory of models/pump.onnx
    clash.size = 1
    repack(bundle_path, members_of(bundle_path), extra=[clash])
    with pytest.raises(UnsafeArchiveError, match="both a file and a directory") as info:
        read_bundle(bundle_path, trusted_keys=trusted, extract_to=tmp_path / "x")
    assert info.value.member is not None
    assert "models" in info.value.member
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bundle"]
