"""Errors raised while reading, verifying or writing a bundle.

Every error names what is wrong (the bundle file, the member, the key path, the key id) so that
`edge-agent bundle install` can print it as is. All derive from `BundleError`.
"""

from __future__ import annotations

from pathlib import Path


class BundleError(Exception):
    """Base class: something is wrong with a bundle (or the keys used for it)."""

    def __init__(self, message: str, *, bundle: str | Path | None = None) -> None:
        self.bundle = str(bundle) if bundle is not None else None
        self.message = message
        super().__init__(f"{self.bundle}: {message}" if self.bundle else message)


class BundleFormatError(BundleError):
    """The archive or manifest is malformed: not a tar, bad JSON, unknown key, wrong type or value.

    `path` is the manifest key path (`models -> 0 -> input -> channels`) when the error is in the manifest.
    """

    def __init__(self, message: str, *, bundle: str | Path | None = None, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"manifest.json: {path}: {message}" if path else message, bundle=bundle)


class BundleArchiveError(BundleFormatError):
    """The file is not a readable tar archive: not gzip/tar at all, cut short (a copy that did not finish) or
    corrupt."""


class UnsupportedSchemaError(BundleFormatError):
    """The manifest's `schema_version` is not one this code reads."""


class UnsafeArchiveError(BundleError):
    """An archive member could escape the extraction directory or exhaust resources
    (absolute path, `..`, link, device, fifo, too large, too many members, duplicate name)."""

    def __init__(self, message: str, *, bundle: str | Path | None = None, member: str | None = None) -> None:
        self.member = member
        super().__init__(f"member {member!r}: {message}" if member is not None else message, bundle=bundle)


class BundleIntegrityError(BundleError):
    """The archive's files do not match the manifest: missing, extra, or SHA-256 mismatch."""

    def __init__(self, message: str, *, bundle: str | Path | None = None, file: str | None = None) -> None:
        self.file = file
        super().__init__(message, bundle=bundle)


class BundleSignatureError(BundleError):
    """The signature is absent, malformed, made with an untrusted key, or does not verify."""

    def __init__(self, message: str, *, bundle: str | Path | None = None, key_id: str | None = None) -> None:
        self.key_id = key_id
        super().__init__(message, bundle=bundle)


class SigningKeyError(BundleError):
    """A key file is missing, unreadable, not PEM, or not an Ed25519 key of the expected kind."""

    def __init__(self, message: str, *, key_file: str | Path | None = None) -> None:
        self.key_file = str(key_file) if key_file is not None else None
        super().__init__(f"{self.key_file}: {message}" if self.key_file else message)
