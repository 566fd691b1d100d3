"""Read and write bundle archives: one tar (gzip or plain) with `manifest.json`, `signature` and the files
the manifest lists by SHA-256.

`read_bundle` checks every member's name, type and size before extracting anything, verifies the
signature over the manifest (when trusted keys are given), parses the manifest strictly, checks the
member set against the manifest's `files`, then extracts into a temporary directory while hashing and
only renames it into place when every hash matches. `write_bundle` writes a temp file and renames it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.errors import (
    BundleArchiveError,
    BundleError,
    BundleFormatError,
    BundleIntegrityError,
    BundleSignatureError,
    UnsafeArchiveError,
)
from edge_agent.bundle.manifest import (
    MANIFEST_NAME,
    RESERVED_NAMES,
    SIGNATURE_NAME,
    Manifest,
    ModelSpec,
    check_member_name,
)
from edge_agent.bundle.signing import TrustedKeys, load_public_keys, sign_manifest, verify_manifest

log = logging.getLogger(__name__)

MAX_MEMBERS = 256
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_CHUNK = 1 << 20
_REFERENCE_KEYS = ("window", "score", "channel_error", "latent_mean", "time_error")


@dataclass(frozen=True)
class Bundle:
    """A verified, extracted bundle. `key_id` is the signing key (None when read without trusted keys)."""

    manifest: Manifest
    root: Path
    source: Path
    key_id: str | None

    def model(self, name: str) -> ModelSpec:
        return self.manifest.model(name)

    def model_path(self, name: str) -> Path:
        """Path of model `name`'s ONNX file inside the extracted bundle."""
        return self.root / self.manifest.model(name).file

    def reference(self, name: str) -> dict[str, np.ndarray]:
        """Reference inputs (`window` [N, C, L]) and expected outputs (`score` [N], `channel_error` [N, C],
        `latent_mean` [N, Z], `time_error` [N, L]) of model `name`."""
        spec = self.manifest.model(name).reference
        path = self.root / spec.file
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError) as exc:
            raise BundleFormatError(f"reference file {spec.file} is not a readable .npz ({exc})",
                                    bundle=self.source) from exc
        missing = [key for key in _REFERENCE_KEYS if key not in arrays]
        if missing:
            raise BundleFormatError(f"reference file {spec.file} lacks arrays: {', '.join(missing)}",
                                    bundle=self.source)
        return arrays


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(path: Path | str, trusted_keys: TrustedKeys | None = None,
                extract_to: Path | str | None = None, *, max_members: int = MAX_MEMBERS,
                max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> Bundle:
    """Verify and extract the bundle at `path`.

    `trusted_keys` (a directory of `*.pub`/`*.pem`, key files, or public keys): when given, a `signature`
    made by one of them is required. `extract_to`: a directory that must not exist (or be empty); by
    default a new temporary directory (the caller removes it). Raises a `BundleError` subclass naming
    the problem; nothing is left at `extract_to` on failure.
    """
    source = Path(path)
    trusted = load_public_keys(trusted_keys) if trusted_keys is not None else None
    try:
        archive = tarfile.open(source, "r:*")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError as exc:
        raise BundleError("no such bundle file", bundle=source) from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleArchiveError(f"not a readable tar archive ({exc})", bundle=source) from exc
    with archive:
        members = _checked_members(archive, source, max_members, max_member_bytes, max_total_bytes)
        if MANIFEST_NAME not in members:
            raise BundleFormatError(f"archive has no {MANIFEST_NAME}", bundle=source)
        raw_manifest = _read_member(archive, members[MANIFEST_NAME], source, MAX_MANIFEST_BYTES)
        manifest_dict = parse_manifest_json(raw_manifest, source)
        key_id = None
        if trusted is not None:
            if SIGNATURE_NAME not in members:
                raise BundleSignatureError("bundle is not signed (no signature file) but trusted keys are "
                                           "required", bundle=source)
            signature = _read_member(archive, members[SIGNATURE_NAME], source, 64 * 1024)
            key_id = verify_manifest(manifest_dict, signature, trusted, bundle=source)
        manifest = Manifest.from_dict(manifest_dict, bundle=source)
        expected = set(manifest.files)
        present = set(members) - set(RESERVED_NAMES)
        for name in sorted(expected - present):
            raise BundleIntegrityError(f"file {name!r} is listed in the manifest but missing from the "
                                       "archive", bundle=source, file=name)
        for name in sorted(present - expected):
            raise BundleIntegrityError(f"file {name!r} is in the archive but not listed in the manifest's "
                                       "files", bundle=source, file=name)
        root = _extract(archive, members, manifest, source, extract_to)
    log.info("read bundle %s %s from %s (%d models, signed by %s)", manifest.name, manifest.version, source,
             len(manifest.models), key_id or "nobody checked")
    return Bundle(manifest, root, source, key_id)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (NaN and Infinity are not allowed)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range (it would be {value})")
    return value


def parse_manifest_json(raw: bytes, source: Path | None = None) -> Any:
    """Strict JSON for manifests: invalid JSON, NaN, Infinity and numbers that overflow to infinity are a
    `BundleFormatError` (they cannot be signed canonically nor compared)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleFormatError(f"{MANIFEST_NAME} is not valid JSON ({exc})", bundle=source) from exc


def _check_prefix_clashes(members: Mapping[str, tarfile.TarInfo], source: Path) -> None:
    """A member `a` and a member `a/b` cannot both be extracted (one would be a file and a directory)."""
    for name in members:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in members:
                raise UnsafeArchiveError(f"clashes with member {prefix!r}, which would have to be both a "
                                         "file and a directory", bundle=source, member=name)


def _checked_members(archive: tarfile.TarFile, source: Path, max_members: int, max_member_bytes: int,
                     max_total_bytes: int) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    try:
        for member in archive:
            if len(members) >= max_members:
                raise UnsafeArchiveError(f"more than {max_members} members", bundle=source)
            name = member.name
            problem = check_member_name(name)
            if problem:
                raise UnsafeArchiveError(f"unsafe path: {problem}", bundle=source, member=name)
            if not member.isreg():
                raise UnsafeArchiveError(f"is a {_kind(member)}; only regular files are allowed",
                                         bundle=source, member=name)
            if name in members:
                raise UnsafeArchiveError("appears more than once", bundle=source, member=name)
            if member.size > max_member_bytes:
                raise UnsafeArchiveError(f"is {member.size} bytes, over the {max_member_bytes}-byte limit",
                                         bundle=source, member=name)
            total += member.size
            if total > max_total_bytes:
                raise UnsafeArchiveError(f"members total more than {max_total_bytes} bytes", bundle=source)
            members[name] = member
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleArchiveError(f"corrupt tar archive ({exc})", bundle=source) from exc
    _check_prefix_clashes(members, source)
    return members


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "fifo"
    if member.isdir():
        return "directory entry"
    return f"non-regular member (type {member.type!r})"


def _chunks(archive: tarfile.TarFile, member: tarfile.TarInfo, source: Path) -> Iterator[bytes]:
    try:
        handle: IO[bytes] | None = archive.extractfile(member)
        if handle is None:
            raise UnsafeArchiveError("cannot be read as a file", bundle=source, member=member.name)
        with handle:
            remaining = member.size
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    raise BundleArchiveError(f"member {member.name!r} is truncated", bundle=source)
                remaining -= len(chunk)
                yield chunk
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleArchiveError(f"cannot read member {member.name!r} ({exc})", bundle=source) from exc


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, source: Path, limit: int) -> bytes:
    if member.size > limit:
        raise UnsafeArchiveError(f"is {member.size} bytes, over the {limit}-byte limit for this file",
                                 bundle=source, member=member.name)
    return b"".join(_chunks(archive, member, source))


def _extract(archive: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], manifest: Manifest,
             source: Path, extract_to: Path | str | None) -> Path:
    if extract_to is None:
        target = None
        staging = Path(tempfile.mkdtemp(prefix=f"bundle-{manifest.name}-"))
    else:
        target = Path(extract_to)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise BundleError(f"extraction directory {target} already exists and is not empty", bundle=source)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        extras = [name for name in RESERVED_NAMES if name in members]
        for name in (*extras, *sorted(manifest.files)):
            destination = staging.joinpath(*name.split("/"))
            destination.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(destination, "xb") as out:
                for chunk in _chunks(archive, members[name], source):
                    digest.update(chunk)
                    out.write(chunk)
            expected = manifest.files.get(name)
            if expected is not None and digest.hexdigest() != expected:
                raise BundleIntegrityError(f"SHA-256 mismatch for file {name!r}: manifest says {expected}, "
                                           f"archive has {digest.hexdigest()}", bundle=source, file=name)
        if target is None:
            return staging
        if target.exists():
            target.rmdir()
        staging.rename(target)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bundle(out_path: Path | str, manifest: Manifest | Mapping[str, Any],
                 files: Mapping[str, Path | str], sign_key: Ed25519PrivateKey | None = None, *,
                 compress: bool = True, overwrite: bool = False) -> Manifest:
    """Write a bundle atomically (temp file + rename) and return its parsed manifest.

    `files` maps archive names to local files. The manifest's `files` table is computed from them (a given
    table must agree); a model's or reference's `sha256` that is missing or null is filled in. The manifest
    is parsed strictly before anything is written. An existing `out_path` is an error unless `overwrite`.
    """
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise BundleError("output file already exists; refusing to overwrite", bundle=out)
    hashes = {}
    for arcname, local in files.items():
        problem = check_member_name(arcname)
        if problem or arcname in RESERVED_NAMES:
            raise BundleFormatError(f"cannot store file as {arcname!r}: {problem or 'reserved name'}",
                                    bundle=out)
        try:
            hashes[arcname] = sha256_file(Path(local))
        except OSError as exc:
            raise BundleError(f"cannot read {local} (for {arcname!r}): {exc}", bundle=out) from exc
    data = json.loads(json.dumps(manifest.to_dict() if isinstance(manifest, Manifest) else manifest))
    given = data.get("files")
    if given not in (None, {}) and given != hashes:
        raise BundleIntegrityError("the manifest's files table does not match the files given "
                                   f"(manifest: {sorted(given)}, given: {sorted(hashes)})", bundle=out)
    data["files"] = hashes
    for model in data.get("models", []):
        for holder in (model, model.get("reference", {})):
            if isinstance(holder, dict) and holder.get("sha256") is None and holder.get("file") in hashes:
                holder["sha256"] = hashes[holder["file"]]
    parsed = Manifest.from_dict(data, bundle=out)
    manifest_dict = parsed.to_dict()
    manifest_bytes = (json.dumps(manifest_dict, indent=2, sort_keys=True, ensure_ascii=False,
                                 allow_nan=False) + "\n").encode()
    members: list[tuple[str, bytes | Path]] = [(MANIFEST_NAME, manifest_bytes)]
    if sign_key is not None:
        members.append((SIGNATURE_NAME, sign_manifest(manifest_dict, sign_key)))
    members += [(name, Path(files[name])) for name in sorted(files)]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            _write_tar(raw, members, compress)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.chmod(0o644)
        if overwrite:
            tmp.replace(out)
        else:
            os.link(tmp, out)  # fails if `out` appeared meanwhile: never clobber
            tmp.unlink()
    except FileExistsError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError("output file already exists; refusing to overwrite", bundle=out) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote bundle %s %s to %s (%s)", parsed.name, parsed.version, out,
             "signed" if sign_key is not None else "unsigned")
    return parsed


def _write_tar(raw: IO[bytes], members: list[tuple[str, bytes | Path]], compress: bool) -> None:
    # Fixed mtimes/owners so the same inputs give the same bytes.
    stream: IO[bytes] = (gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[assignment]
                         if compress else raw)
    try:
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in members:
                info = tarfile.TarInfo(name)
                info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
                if isinstance(content, Path):
                    info.size = content.stat().st_size
                    with open(content, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
    finally:
        if compress:
            stream.close()
