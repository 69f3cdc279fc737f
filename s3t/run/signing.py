"""Signed proof: a run's Ed25519 key signs each certificate and each stage record its writers
commit, so that records forged by someone who can write the run directory (files, hashes,
``meta.json``, ledger rows, the certificate chain and its head) fail ``s3t audit`` and
``s3t certificates --verify``.

The private key lives outside the run directory (``--signing-key FILE`` or the environment
variable ``S3T_SIGNING_KEY``, made by ``s3t keys new``); the run card records the public key
(``signing_key``: ``ed25519:<64 hex>``). A run without one keeps working unsigned. A writer of
a run whose card names a key refuses to write without the matching private key.

What is signed (each over a canonical JSON: sorted keys, separators ``(',', ':')``, ASCII):

- a certificate: ``signature.record`` over what its chain digest covers (the certificate
  without its outcome fields and without ``signature``), so the sequence and the link to the
  previous certificate are signed too; ``signature.outcome`` over the whole certificate
  without ``signature``, once its outcome fields are written;
- a stage: :func:`stage_payload` (key, shard, slices, versions, parent, the sha256 of each of
  its files including ``meta.json``, sample count, validation score).

Pure: no torch, no ledger; files only where keys are read or written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from s3t.run.certificate import Certificate, Signature
from s3t.run.chain import OUTCOME_FIELDS

ENV = "S3T_SIGNING_KEY"
PREFIX = "ed25519:"
SIGNATURE = "signature"


class SigningKeyError(ValueError):
    """A signing key is missing, unreadable, misplaced or not the run's."""


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public: str) -> str:
    """A short name for a public key (first 16 hex digits of its sha256)."""
    return hashlib.sha256(public.encode()).hexdigest()[:16]


def _public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + raw.hex()


def parse_public(text: str) -> Ed25519PublicKey:
    """``ed25519:<hex>`` (as the run card and ``keys new`` write it) or a PEM public key."""
    text = text.strip()
    try:
        if text.startswith(PREFIX):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text[len(PREFIX):]))
        key = serialization.load_pem_public_key(text.encode())
    except ValueError as err:
        raise SigningKeyError(f"not an Ed25519 public key ({err}): expected `ed25519:<hex>` as "
                              "`s3t keys new` writes it, or a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 public key: s3t signs with Ed25519 only")
    return key


def normalise_public(text: str) -> str:
    return _public_text(parse_public(text))


@dataclass(frozen=True)
class Signer:
    """A loaded private key: signs records; ``public`` is what the run card records."""

    key: Ed25519PrivateKey

    @property
    def public(self) -> str:
        return _public_text(self.key.public_key())

    def sign(self, record: dict) -> str:
        return self.key.sign(canonical(record)).hex()

    def seal_record(self, certificate: Certificate) -> Certificate:
        """Sign a linked certificate's chained part (once it holds its ``sequence``)."""
        return certificate.with_signature(Signature(
            key_id(self.public), self.sign(_record_part(certificate.to_dict()))))

    def seal_outcome(self, certificate: Certificate) -> Certificate:
        """Sign the whole certificate once its outcome fields are filled in (a certificate
        whose chained part is unsigned is returned as it is)."""
        if certificate.signature is None:
            return certificate
        outcome = self.sign(_without_signature(certificate.to_dict()))
        return certificate.with_signature(replace(certificate.signature, outcome=outcome))


def _without_signature(certificate: dict) -> dict:
    return {k: v for k, v in certificate.items() if k != SIGNATURE}


def _record_part(certificate: dict) -> dict:
    return {k: v for k, v in certificate.items() if k not in OUTCOME_FIELDS and k != SIGNATURE}


def verify(public: str, record: dict, signature: object) -> bool:
    """Whether ``signature`` (hex) is the key's signature of ``record``'s canonical JSON."""
    if not isinstance(signature, str):
        return False
    try:
        parse_public(public).verify(bytes.fromhex(signature), canonical(record))
    except (InvalidSignature, ValueError, SigningKeyError):
        return False
    return True


def certificate_problems(public: str, certificate: dict) -> list[str]:
    """Why a certificate is not signed by ``public`` (empty: it is)."""
    name = f"certificate #{certificate.get('sequence')} ({certificate.get('request_id')})"
    seal = certificate.get(SIGNATURE)
    if not isinstance(seal, dict) or "record" not in seal:
        return [f"{name} is not signed, but the run signs its records with key "
                f"{key_id(public)}: it was written without the key or forged"]
    if not verify(public, _record_part(certificate), seal["record"]):
        return [f"{name}: its signature does not verify with key {key_id(public)}: the "
                "certificate was edited or signed with another key"]
    if "outcome" in seal:
        if not verify(public, _without_signature(certificate), seal["outcome"]):
            return [f"{name}: the signature of its outcome fields does not verify with key "
                    f"{key_id(public)}: an outcome field was edited"]
    elif any(k in certificate for k in OUTCOME_FIELDS - {"certificate_error"}):
        return [f"{name}: its outcome fields are not signed: they were added outside s3t"]
    return []


def stage_payload(key: str, shard: int, prefix: list[int] | tuple[int, ...],
                  versions: list[int] | tuple[int, ...], parent: str | None,
                  files: dict[str, str], n_samples: int, val_score: float | None) -> dict:
    """What a stage's signature covers: its identity, lineage and the sha256 of its files."""
    return {"kind": "stage", "key": key, "shard": shard, "prefix": list(prefix),
            "versions": list(versions), "parent": parent, "files": dict(sorted(files.items())),
            "n_samples": n_samples, "val_score": val_score}


# --- key files ----------------------------------------------------------------------------------

def new_key(path: Path) -> Signer:
    """Write a new private key to ``path`` (PEM, mode 0600, never over an existing file) and
    its public key to ``path.pub``; return the signer."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise SigningKeyError(f"{path} exists: a key is never overwritten; choose another "
                              "file") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    signer = Signer(key)
    public_file(path).write_text(signer.public + "\n")
    return signer


def public_file(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def load_signer(path: str | Path) -> Signer:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SigningKeyError(f"cannot read the signing key {path} ({err.strerror or err}): "
                              "give the private key `s3t keys new FILE` wrote") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key ({err}): give the "
                              "private key `s3t keys new FILE` wrote") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key: make one with `s3t keys new FILE`")
    return Signer(key)


def load_public(path: str | Path) -> str:
    """A public key file (``.pub`` as ``keys new`` writes it, or PEM); a private key file is
    accepted too (its public half is used)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SigningKeyError(f"cannot read the public key {path} ({err})") from None
    if "PRIVATE KEY" in text:
        return load_signer(path).public
    return normalise_public(text)


def signer_for(public: str | None, run_path: Path, key_path: str | Path | None = None
               ) -> Signer | None:
    """The signer a writer of the run must use: None for an unsigned run (``public`` None);
    else the key from ``key_path`` or ``S3T_SIGNING_KEY``, which must be the run's and must
    live outside the run directory. Raises ``SigningKeyError`` otherwise (nothing written)."""
    if public is None:
        return None
    path = key_path or os.environ.get(ENV) or None
    if path is None:
        raise SigningKeyError(
            f"{run_path} signs its records with key {key_id(public)}: give its private key "
            f"with --signing-key FILE (or {ENV}=FILE); nothing was written")
    check_outside(Path(path), run_path)
    signer = load_signer(path)
    if signer.public != public:
        raise SigningKeyError(
            f"{path} is not the key of {run_path} (its key is {key_id(public)}, this one "
            f"{key_id(signer.public)}): give the run's --signing-key; nothing was written")
    return signer


def check_outside(key_path: Path, run_path: Path) -> None:
    """The private key must not live in the run directory (whoever writes the run could then
    sign forgeries)."""
    key, run = key_path.resolve(), run_path.resolve()
    if key == run or run in key.parents:
        raise SigningKeyError(f"the signing key {key_path} lies inside the run directory "
                              f"{run_path}: keep it elsewhere (anyone who can write the run "
                              "could sign with it)")
