"""The bundle: the one contract between the trainer/export side and the agent.

A bundle is a tar archive holding `manifest.json` (schema version 1, see docs/bundle-format.md), the ONNX
files and reference I/O it lists by SHA-256, and an Ed25519 `signature` over the canonical manifest bytes.
"""

from edge_agent.bundle.archive import Bundle, read_bundle, sha256_file, write_bundle
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
from edge_agent.bundle.manifest import (
    SCHEMA_VERSION,
    Compatibility,
    Debounce,
    DriftReference,
    InputSpec,
    Manifest,
    ModelSpec,
    OutputNames,
    PrecisionDecision,
    ReferenceSpec,
    RootCause,
    ScoreBaseline,
    SeverityLevel,
    ThresholdSpec,
    TrainerInfo,
    default_severity,
)
from edge_agent.bundle.signing import (
    canonical_manifest_bytes,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign_manifest,
    verify_manifest,
)

__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "BundleArchiveError",
    "BundleError",
    "BundleFormatError",
    "BundleIntegrityError",
    "BundleSignatureError",
    "Compatibility",
    "Debounce",
    "DriftReference",
    "InputSpec",
    "Manifest",
    "ModelSpec",
    "OutputNames",
    "PrecisionDecision",
    "ReferenceSpec",
    "RootCause",
    "ScoreBaseline",
    "SeverityLevel",
    "SigningKeyError",
    "ThresholdSpec",
    "TrainerInfo",
    "UnsafeArchiveError",
    "UnsupportedSchemaError",
    "canonical_manifest_bytes",
    "default_severity",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
    "read_bundle",
    "sha256_file",
    "sign_manifest",
    "verify_manifest",
    "write_bundle",
]
