"""Certificate files: ``<run>/certificates/<request-id>.json``, copies of the ledger's
certificates (the ledger's are authoritative), and exports of the deletion log for an auditor.

Files are written atomically under the writer's own temporary name; opening a run restores a
missing one from the ledger and removes the temporary files of writers that are gone.
``file_problems`` (audit) reports a missing, edited or unknown certificate file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from s3t.run.certificate import Certificate, CertificateRecordError
from s3t.run.chain import OUTCOME_FIELDS, certificate_sha256, chain_problems
from s3t.run.faults import fault_point
from s3t.run.ledger import GROUP_HASH, Ledger
from s3t.run.locks import process_alive

CERTIFICATES_DIR = "certificates"
CHAIN_FILE = "chain.json"
_TMP = ".tmp-"


def write_json_atomic(path: Path, payload: dict, fault: bool = True,
                      replace: bool = True, sync: bool = True) -> bool:
    """Write, fsync, rename; the temporary name is the writer's own (``.tmp-<pid>-<random>``)
    so that two writers never share one and a crashed writer's file can be told apart.
    ``sync=False`` skips the fsync, for copies of what the ledger holds durably (a
    deletion's certificate file): a power loss may then leave the file empty or torn, which
    ``restore_certificates`` rewrites from the ledger.
    ``fault``: pass the ``forget:mid-certificate`` fault point (run files only).
    ``replace=False`` never overwrites an existing file (a restore from a ledger snapshot
    must not undo a newer write by the deletion's own process); returns whether it wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}-{os.urandom(4).hex()}")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    if fault:
        fault_point("forget:mid-certificate")
    if replace:
        os.replace(tmp, path)
        return True
    try:
        os.link(tmp, path)  # fails if the file exists: create-if-absent, atomically
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_certificate(certificates_dir: Path, certificate: Certificate, fault: bool = True,
                      replace: bool = True, sync: bool = True) -> bool:
    """``certificates_dir/<request-id>.json`` (``write_json_atomic``)."""
    return write_json_atomic(certificates_dir / f"{certificate.request_id}.json",
                             certificate.to_dict(), fault=fault, replace=replace, sync=sync)


def _writer_gone(tmp: Path) -> bool:
    pid = tmp.name.rsplit(_TMP, 1)[-1].split("-")[0]
    return not pid.isdigit() or not process_alive(int(pid))


def restore_certificates(ledger: Ledger, certificates_dir: Path) -> list[str]:
    """Write the certificate file of every deletion the ledger holds but the directory lacks
    (a crash between the commit and the file) or holds torn (empty or not a JSON object: a
    deletion does not sync its copy, so a power loss can leave it so), and remove temporary
    files of writers that are gone. A readable file is never rewritten: one that differs
    from the ledger is for ``audit`` to report. Returns the restored request ids."""
    if certificates_dir.is_dir():
        for tmp in certificates_dir.glob(f"*{_TMP}*"):
            if _writer_gone(tmp):
                tmp.unlink(missing_ok=True)
    present = {p.stem for p in certificates_dir.glob("*.json")} if certificates_dir.is_dir() \
        else set()
    restored = []
    for request_id in ledger.deletion_ids():
        path = certificates_dir / f"{request_id}.json"
        torn = request_id in present and _torn(path)
        if request_id not in present or torn:
            try:
                certificate = ledger.certificate(request_id)
            except CertificateRecordError:
                continue  # a damaged row is not copied: audit reports it and the file
            if certificate is not None and write_certificate(certificates_dir, certificate,
                                                             replace=torn):
                restored.append(request_id)
    return restored


def _torn(path: Path) -> bool:
    """A regular file that is empty or not a JSON object (what an unsynced write leaves
    after a power loss); links and folders are strays, never rewritten."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return not isinstance(json.loads(path.read_bytes() or b"null"), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True


def rewrite_stale_files(ledger: Ledger, certificates_dir: Path) -> int:
    """After a legacy ledger was upgraded (its certificates gained their chain links), write
    every certificate file again from the ledger; the mark that asks for it is cleared only
    once all are written, so a crash in between is finished by the next open."""
    if not ledger.get_meta("certificate_files_stale"):
        return 0
    certificates = ledger.certificates()
    for certificate in certificates:
        write_certificate(certificates_dir, certificate)
    with ledger.transaction():
        ledger.clear_meta("certificate_files_stale")
    return len(certificates)


def file_problems(certificates: list[dict], certificates_dir: Path) -> list[str]:
    """Audit ``certificates/`` against the ledger's certificates: every one has its file,
    equal to the ledger's; nothing else is there but the temporary files of live writers."""
    problems = []
    by_id = {str(c.get("request_id")): c for c in certificates}
    entries = sorted(certificates_dir.iterdir()) if certificates_dir.is_dir() else []
    present = set()
    for entry in entries:
        request_id = entry.name[:-len(".json")] if entry.name.endswith(".json") else None
        if _TMP in entry.name and entry.is_file():
            if _writer_gone(entry):
                problems.append(f"temporary certificate file of a writer that is gone: {entry} "
                                "(opening the run removes it)")
            continue
        if request_id not in by_id or entry.is_symlink() or not entry.is_file():
            problems.append(f"stray entry {entry}: not the certificate of any deletion in the "
                            "ledger; s3t did not write it and never deletes it: move it out of "
                            "the run directory")
            continue
        present.add(request_id)
        try:
            on_disk = json.loads(entry.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            on_disk = None
        recorded = by_id[request_id]
        if on_disk != recorded:
            fields = sorted(k for k in set(recorded) | set(on_disk or {})
                            if (on_disk or {}).get(k) != recorded.get(k))
            problems.append(f"certificate file {entry} differs from the ledger's record of "
                            f"request {request_id} ({', '.join(fields) or 'unreadable'}): it was "
                            "edited; remove it and open the run (e.g. `s3t status`) to restore "
                            "it from the ledger")
    for request_id in sorted(set(by_id) - present):
        problems.append(f"certificate file {certificates_dir / f'{request_id}.json'} is missing: "
                        "opening the run (e.g. `s3t status`) restores it from the ledger")
    return problems


def chain_summary(ledger: Ledger) -> dict:
    """The deletion log as ``s3t certificates`` shows it: each certificate's position, id,
    time, counts and sha256, the head and whether the chain is intact."""
    certificates = sorted(ledger.stored_certificates(),
                          key=lambda c: (not isinstance(c.get("sequence"), int),
                                         c.get("sequence") or 0))
    head = ledger.chain_head()
    problems = chain_problems(certificates, head)
    return {
        "certificates": [
            {"sequence": c.get("sequence"), "request_id": c.get("request_id"),
             "time": c.get("time"), "samples": len(c.get("samples", [])),
             "groups": len(c.get("groups_hmac", c.get("groups_sha256", []))),
             "erased_stages": len(c.get("erased_stages", [])),
             "sha256": certificate_sha256(c), "previous_sha256": c.get("previous_sha256")}
            for c in certificates],
        "head": None if head is None else head.to_meta(),
        "intact": not problems,
        "problems": problems,
        "legacy_certificates": ledger.get_meta("legacy_certificates") or 0,
    }


def export(ledger: Ledger, directory: Path, signing_key: str | None = None) -> dict:
    """Write every certificate (the ledger's copy, ``<request-id>.json``) and ``chain.json``
    (order, sha256 of each, the head, how the digest is computed, the run's public signing
    key) into a new or empty ``directory``, for an auditor to keep (``s3t certificates DIR
    --verify`` checks it offline). Nothing secret is written. Returns the summary."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} exists and is not an empty directory: export "
                              "into a new one (an export is never merged into another)")
    summary = chain_summary(ledger)
    for certificate in ledger.stored_certificates():  # as stored: --verify reports damage
        write_json_atomic(directory / f"{certificate['request_id']}.json", certificate,
                          fault=False)
    write_json_atomic(directory / CHAIN_FILE, fault=False, payload={
        **summary,
        "digest": "sha256 of the certificate's JSON with sorted keys, separators (',', ':') "
                  f"and ASCII escapes, without the fields {sorted(OUTCOME_FIELDS)} and "
                  "`signature`; each certificate's previous_sha256 is the digest of the one "
                  "before it; signature.record is the Ed25519 signature of those same bytes, "
                  "signature.outcome of the whole certificate without `signature`",
        "signing_key": signing_key,
        "groups": f"groups_hmac = {GROUP_HASH} (the secret stays in the run); groups_sha256 "
                  "(certificates from before the upgrade) = plain sha256(group key)",
    })
    return summary

