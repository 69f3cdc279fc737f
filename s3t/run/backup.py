"""Backups that cannot resurrect deleted data.

``backup`` writes a consistent snapshot of a run while it serves: the ledger through SQLite's
online backup API (one point in time, taken while deletions go on), the files of the stages
that snapshot holds live (each checked against the snapshot's sha256), the certificates the
snapshot holds, the run card and ``backup.json`` (the snapshot's chain head). A stage a
concurrent deletion erased before its files were copied is marked erased in the snapshot
(never copied half, never kept live without files). The card is stored as ``card.json``, so
a backup is not a run: it cannot be served or trained by mistake.

``restore`` builds the new run in a hidden sibling directory and, before renaming it into
place (only then can it serve or train), re-applies every deletion recorded after the
backup's chain head, read from a replay source: the damaged run's ``certificates/`` folder
or an export (``s3t certificates RUN --export DIR``). The source must extend the backup's
chain (certificate #head hashes to the backup's head, every later one links to the one
before), and on a signed run each replayed certificate must carry the run key's signature.
Certificates name their deleted sample ids (``samples``), which is what replay applies. The
new run's chain then records a ``restore`` certificate naming what was replayed, or, with
``no_replay``, a ``restore-gap`` certificate saying that deletions after the head may be
missing.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

from s3t.run.card import RUN_FILE
from s3t.run.certificate import Certificate, CertificateRecordError, ReplayedDeletion, Restore
from s3t.run.certificates import (
    CHAIN_FILE,
    restore_certificates,
    write_certificate,
    write_json_atomic,
)
from s3t.run.chain import ChainHead, certificate_sha256
from s3t.run.directory import Run
from s3t.run.files import IntegrityError
from s3t.run.forget import now
from s3t.run.ledger import Ledger
from s3t.run.signing import certificate_problems, signer_for

MANIFEST = "backup.json"
CARD = "card.json"


class RestoreError(ValueError):
    """A restore that would resurrect deleted data, or whose inputs do not fit; nothing made."""


def _empty_target(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists and is not an empty directory: give a new {what} "
                              "directory (nothing is ever merged into another)")


def backup(run: Run, dest: Path) -> dict:
    """Snapshot ``run`` (open, possibly serving) into the new or empty directory ``dest``."""
    _empty_target(dest, "backup")
    dest.mkdir(parents=True, exist_ok=True)
    copy = sqlite3.connect(dest / Ledger.FILE)
    try:
        run.ledger.conn.backup(copy)  # one consistent point in time, concurrent writers wait
    finally:
        copy.close()
    snapshot = Ledger(dest / Ledger.FILE)
    try:
        gone = []
        for record in snapshot.stages("live"):
            try:
                blobs = run.store.read(record.shard, record.key, record.files)
            except (IntegrityError, OSError):  # erased by a deletion after the snapshot
                gone.append(record.key)
                continue
            target = dest / "stages" / str(record.shard) / record.key
            target.mkdir(parents=True)
            for name, data in blobs.items():
                (target / name).write_bytes(data)
        if gone:
            with snapshot.transaction():
                snapshot.erase_stages(gone, reason="backup: files erased during the backup")
                snapshot.refresh_routes(run.config.shards, run.method.servable)
        snapshot.checkpoint()
        restore_certificates(snapshot, dest / "certificates")
        head = snapshot.chain_head()
        live = len(snapshot.stages("live"))
    finally:
        snapshot.close()
    shutil.copyfile(run.path / RUN_FILE, dest / CARD)
    manifest = {"format": 1, "kind": "s3t-backup", "source": str(run.path), "time": now(),
                "chain_head": None if head is None else head.to_meta(),
                "live_stages": live, "stages_erased_meanwhile": sorted(gone),
                "signing_key": run.public_key}
    write_json_atomic(dest / MANIFEST, manifest, fault=False)
    return {"backup_dir": str(dest), **manifest}


def replay_source(source: Path) -> list[dict]:
    """The certificates of a replay source (a run's ``certificates/`` folder or an export), in
    chain order."""
    if not source.is_dir():
        raise RestoreError(f"replay source {source} is not a directory: give the damaged run's "
                           "certificates folder or an export (`s3t certificates --export`)")
    found = []
    for path in sorted(source.glob("*.json")):
        if path.name == CHAIN_FILE:
            continue
        try:
            certificate = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RestoreError(f"replay source file {path} is not a certificate ({err}): "
                               "nothing was restored") from None
        if isinstance(certificate, dict) and isinstance(certificate.get("sequence"), int):
            found.append(certificate)
    return sorted(found, key=lambda c: c["sequence"])


def to_replay(certificates: list[dict], head: ChainHead, public: str | None
              ) -> list[Certificate]:
    """The certificates after ``head``, checked: the source holds the head itself, and every
    later certificate links to the one before it (and is signed, on a signed run), and reads
    as a certificate."""
    by_sequence = {c["sequence"]: c for c in certificates}
    if head.sequence > 0:
        at_head = by_sequence.get(head.sequence)
        if at_head is None or certificate_sha256(at_head) != head.sha256:
            raise RestoreError(
                f"the replay source does not hold the backup's chain head (certificate "
                f"#{head.sequence}, sha256 {str(head.sha256)[:12]}...): it is not this run's "
                "deletion log, or it was altered; nothing was restored")
    later = [c for c in certificates if c["sequence"] > head.sequence]
    previous = head.sha256
    for expected, certificate in enumerate(later, start=head.sequence + 1):
        if certificate["sequence"] != expected or certificate.get("previous_sha256") != previous:
            raise RestoreError(
                f"the replay source's chain breaks at certificate #{expected} (after the "
                f"backup's head #{head.sequence}): a certificate is missing or was edited; "
                "nothing was restored")
        if public is not None and certificate_problems(public, certificate):
            raise RestoreError(f"replay source: {certificate_problems(public, certificate)[0]}"
                               "; nothing was restored")
        previous = certificate_sha256(certificate)
    try:
        return [Certificate.from_dict(c) for c in later]
    except CertificateRecordError as err:
        raise RestoreError(f"replay source: {err}; nothing was restored") from None


def restore(backup_dir: Path, target: Path, replay_from: Path | None, no_replay: bool = False,
            signing_key: str | None = None) -> dict:
    """Restore ``backup_dir`` into the new run ``target``, re-applying every deletion recorded
    after the backup's chain head (from ``replay_from``) before the run appears."""
    if replay_from is None and not no_replay:
        raise RestoreError(
            "a backup restored without replaying the deletions made after it brings deleted "
            "samples back: give --replay FROM (the damaged run's certificates folder or an "
            "export from `s3t certificates RUN --export DIR`), or --no-replay to restore anyway "
            "(the certificate chain then records the gap)")
    try:
        manifest = json.loads((backup_dir / MANIFEST).read_text(encoding="utf-8"))
        card = json.loads((backup_dir / CARD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RestoreError(f"{backup_dir} is not an s3t backup ({err}): make one with `s3t "
                           "backup RUN DEST`") from None
    head = ChainHead.from_meta(manifest.get("chain_head")) or ChainHead(0, None)
    public = card.get("signing_key") if isinstance(card.get("signing_key"), str) else None
    signer_for(public, target, signing_key)  # a signed run's replay needs its key: check first
    replay = [] if replay_from is None else to_replay(replay_source(replay_from), head, public)
    _empty_target(target, "run")
    staging = target.with_name(f".{target.name}.restoring-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(backup_dir, staging, ignore=shutil.ignore_patterns(MANIFEST, CARD))
    shutil.copyfile(backup_dir / CARD, staging / RUN_FILE)
    try:
        summary = _replay(staging, replay, head, replay_from, signing_key)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"run_dir": str(target), **summary}


def _replay(staging: Path, replay: list[Certificate], head: ChainHead, source: Path | None,
            signing_key: str | None) -> dict:
    run = Run.open(staging)
    run.signing_key_path = signing_key
    try:
        replayed = []
        for original in replay:
            ids = list(original.samples)
            if not ids or original.sequence is None:
                continue
            _, certificate = run.forget(sample_ids=ids)
            replayed.append(ReplayedDeletion(
                request_id=original.request_id, sequence=original.sequence,
                sha256=original.sha256(), samples=len(ids),
                replayed_as=certificate["request_id"]))
        routes = {str(k): v for k, v in run.ledger.routes().items()}
        gap = None if source is not None else (
            f"restored without replay: deletions acknowledged after the backup's chain head "
            f"(#{head.sequence}) were not re-applied and their samples may be back")
        record = Certificate(
            request_id=uuid.uuid4().hex, time=now(), samples=(), erased_stages=(),
            routes_before=routes, routes_after=routes,
            live_shards=sum(v is not None for v in routes.values()),
            restore=Restore(kind="restore" if source is not None else "restore-gap",
                            backup_chain_head=head,
                            replay_source=None if source is None else str(source),
                            replayed=tuple(replayed), gap=gap))
        signer = run.signer()
        with run.ledger.transaction():
            record = run.ledger.record_deletion(
                record, seal=None if signer is None else signer.seal_record)
        write_certificate(run.certificates_dir, record, fault=False)
        report = run.audit()
        if not report.ok:
            raise RestoreError("the restored run fails its audit, so it was not put in place: "
                               + "; ".join(report.violations[:3]))
        return {"replayed": len(replayed), "samples_deleted_again":
                sum(r.samples for r in replayed), "certificate": record.to_dict()}
    finally:
        run.close()
