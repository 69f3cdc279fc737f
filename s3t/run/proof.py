"""Checking signed proof offline (``s3t certificates SOURCE --verify``) and attaching a signing
key to a run that has none (``s3t keys attach``).

``SOURCE`` is a run directory (the ledger's certificates, its chain head and its live stages'
signatures are checked) or a copy written by ``s3t certificates RUN --export DIR`` (its
certificate files and ``chain.json``). The public key is the one given (``--public-key``,
pinned by the auditor out of band: the only choice that holds against someone who rewrote the
run card) or else the one the run card or the export names.
"""

from __future__ import annotations

import json
from pathlib import Path

from s3t.run.audit import stage_signature_problems
from s3t.run.card import card_stamp, write_card
from s3t.run.certificates import CHAIN_FILE, write_certificate
from s3t.run.chain import ChainHead, chain_problems
from s3t.run.directory import Run
from s3t.run.ledger import Ledger
from s3t.run.signing import (
    Signer,
    SigningKeyError,
    certificate_problems,
    key_id,
    stage_payload,
)


def load_export(directory: Path) -> tuple[list[dict], ChainHead | None, str | None, list[str]]:
    """An export's certificates (by sequence), its head, the public key it names, and the
    files that could not be read as certificates."""
    try:
        chain = json.loads((directory / CHAIN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{directory} is neither a run directory nor an export "
                         f"(`s3t certificates RUN --export DIR`): {CHAIN_FILE} unreadable "
                         f"({err})") from None
    certificates, problems = [], []
    for path in sorted(directory.glob("*.json")):
        if path.name == CHAIN_FILE:
            continue
        try:
            certificate = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"certificate file {path} does not read as JSON ({err}): it was "
                            "edited")
            continue
        if not isinstance(certificate, dict):
            problems.append(f"certificate file {path} is not a JSON object: it was edited")
            continue
        certificates.append(certificate)
    certificates.sort(key=lambda c: c["sequence"] if isinstance(c.get("sequence"), int) else 0)
    head = ChainHead.from_meta(chain.get("head")) if isinstance(chain, dict) else None
    public = chain.get("signing_key") if isinstance(chain, dict) else None
    return certificates, head, public if isinstance(public, str) else None, problems


def verify_records(certificates: list[dict], head: ChainHead | None,
                   public: str | None) -> list[str]:
    """The chain from certificate #1 to the head, and each certificate's signature."""
    problems = chain_problems(certificates, head)
    if public is not None:
        problems += [p for c in certificates for p in certificate_problems(public, c)]
    return problems


def summary(source: Path, kind: str, public: str | None, card_key: str | None,
            certificates: list[dict], problems: list[str], stages: int = 0) -> dict:
    """What ``certificates --verify`` prints."""
    if public is None:
        problems = [*problems, "no public key: the records are unsigned (no --public-key given "
                    f"and the {kind} names none), so only the hash chain was checked"]
    elif card_key is not None and card_key != public:
        problems = [*problems, f"the {kind} names signing key {key_id(card_key)}, not the "
                    f"given key {key_id(public)}: its key was replaced"]
    return {"source": str(source), "kind": kind, "signing_key": public,
            "key_id": None if public is None else key_id(public),
            "certificates": len(certificates), "stages": stages, "intact": not problems,
            "problems": problems}


def verify_run(run: Run, public: str | None) -> dict:
    """A run's deletion log (the ledger's certificates and head) and its live stages'
    signatures, with ``public`` or else the run card's key."""
    card_key = run.public_key
    key = public or card_key
    certificates = run.ledger.stored_certificates()
    problems = verify_records(certificates, run.ledger.chain_head(), key)
    live = run.ledger.stages("live")
    if key is not None:
        signatures = run.ledger.stage_signatures()
        problems += [p for r in live for p in stage_signature_problems(r, key, signatures)]
    return summary(run.path, "run", key, card_key, certificates, problems, len(live))


def verify_export(directory: Path, public: str | None) -> dict:
    """An export's certificate files and ``chain.json``, with ``public`` or else the key the
    export names."""
    certificates, head, named, unreadable = load_export(directory)
    key = public or named
    return summary(directory, "export", key, named, certificates,
                   unreadable + verify_records(certificates, head, key))


def attach_key(run: Run, signer: Signer) -> dict:
    """Make ``signer`` the run's key: after an audit that passes, sign every live stage and
    every certificate as they are (under the writer lock), then record the public key in the
    run card; certificates a concurrent deletion wrote meanwhile are signed after the card."""
    problem = attach_problems(run.public_key)
    report = run.audit()
    if problem is None and not report.ok:
        problem = ("`s3t audit` fails on this run, and attaching a key vouches for its records "
                   f"as they are: fix what audit reports first ({report.violations[0][:200]})")
    if problem is not None:
        raise SigningKeyError(problem)
    with run.writer_lock():
        with run.ledger.transaction():
            stages = run.ledger.stages("live")
            for record in stages:
                run.ledger.sign_stage(record.key, signer.sign(stage_payload(
                    record.key, record.shard, record.prefix, record.versions, record.parent,
                    record.files, record.n_samples, record.val_score)))
        sealed = seal_all(run.ledger, run.certificates_dir, signer)
        info = {**run.info, "signing_key": signer.public}
        write_card(run.path, info)
        run.info, run.card_version = info, card_stamp(run.path)
    sealed += seal_all(run.ledger, run.certificates_dir, signer)
    return {"run_dir": str(run.path), "signing_key": signer.public,
            "key_id": key_id(signer.public), "stages_signed": len(stages),
            "certificates_signed": sealed}


def attach_problems(public: str | None) -> str | None:
    """Why a key cannot be attached (None: it can)."""
    if public is not None:
        return (f"this run already has signing key {key_id(public)}: a run's key is never "
                "replaced (its records are signed with it)")
    return None


def seal_all(ledger: Ledger, certificates_dir: Path, signer: Signer) -> int:
    """Sign every unsigned certificate in the ledger (its digest does not cover the signature,
    so the chain is unchanged) and rewrite its file; returns how many."""
    sealed = []
    with ledger.transaction():
        for certificate in ledger.certificates():
            if certificate.signature is not None:
                continue
            certificate = signer.seal_outcome(signer.seal_record(certificate))
            ledger.update_certificate(certificate)
            sealed.append(certificate)
    for certificate in sealed:
        write_certificate(certificates_dir, certificate, fault=False)
    return len(sealed)
