"""The deletion log as a hash chain: certificate ``n`` carries the sha256 of certificate
``n - 1`` (``previous_sha256``) and its own position (``sequence``), and the ledger keeps the
head (the last position and its sha256). Removing, editing or reordering a certificate
breaks a link or the head, and :func:`chain_problems` says which.

A certificate is linked (``Certificate.link``) in the deletion's own transaction
(``Ledger.record_deletion``), so the chain is exactly as crash-safe as the deletion itself,
and a re-issued request (answered with its original certificate) never extends it.

What a link covers: the certificate as committed with its deletion (request id, time, samples,
groups, cells, erased stages, routes, sequence, previous link). The outcome fields added after
the commit (:data:`OUTCOME_FIELDS`: duration, whether the files and the write-ahead log were
erased) are outside it; audit checks the disk and the ledger for those itself.

What it does not protect against: someone who can write the ledger can rewrite every
certificate and the head consistently. Against that, keep an export taken earlier
(``s3t certificates RUN --export DIR``): the chain of a later export must extend it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from s3t.run.files import IntegrityError

#: Certificate fields written after the deletion committed, outside the chain.
OUTCOME_FIELDS = frozenset({"duration_ms", "files_erased", "ledger_scrubbed",
                            "feature_blocks_erased", "erase_error", "certificate_error"})
#: The run key's signature (``s3t.run.signing``): it signs the digest's content, outside it.
UNCHAINED = OUTCOME_FIELDS | {"signature"}

#: What an altered deletion log asks of its operator (every chain message ends with it).
RESTORE = ("the deletion log was altered: restore ledger.sqlite from a backup and compare with "
           "certificates exported earlier (`s3t certificates RUN --export DIR`)")


class DeletionLogError(IntegrityError):
    """The ledger's deletion log (certificate chain or group-key secret) is damaged."""


@dataclass(frozen=True)
class ChainHead:
    """The last certificate on the chain: its position (0: none yet) and its sha256."""

    sequence: int
    sha256: str | None

    def to_meta(self) -> dict:
        return {"sequence": self.sequence, "sha256": self.sha256}

    @classmethod
    def from_meta(cls, value: object) -> ChainHead | None:
        if not isinstance(value, dict) or not isinstance(value.get("sequence"), int):
            return None
        sha = value.get("sha256")
        return cls(value["sequence"], sha if isinstance(sha, str) else None)


def certificate_sha256(certificate: dict) -> str:
    """sha256 of the certificate's canonical JSON (sorted keys, no spaces, ASCII) without
    :data:`OUTCOME_FIELDS` and its ``signature``: what the next certificate's
    ``previous_sha256`` names."""
    record = {k: v for k, v in certificate.items() if k not in UNCHAINED}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_linked(certificate: dict) -> bool:
    return isinstance(certificate.get("sequence"), int) and "previous_sha256" in certificate


def _name(certificate: dict) -> str:
    return f"#{certificate.get('sequence')} ({certificate.get('request_id')})"


def chain_problems(certificates: list[dict], head: ChainHead | None) -> list[str]:
    """Re-walk the chain from certificate #1 to the head; one message per break."""
    if head is None:
        if any(is_linked(c) for c in certificates):
            return ["the ledger holds linked certificates but no chain head (meta "
                    f"`certificate_chain`): it was removed; {RESTORE}"]
        return [] if not certificates else [
            f"the ledger holds {len(certificates)} certificates but no certificate chain: open "
            "the run once with this version of s3t (any command) to link them"]
    problems = []
    by_position: dict[int, dict] = {}
    for certificate in certificates:
        if not is_linked(certificate):
            problems.append(f"certificate {certificate.get('request_id')} carries no chain link "
                            f"(`sequence`, `previous_sha256`): it was added or edited outside "
                            f"s3t; {RESTORE}")
            continue
        position = certificate["sequence"]
        if position in by_position:
            problems.append(f"certificates {_name(by_position[position])} and "
                            f"{certificate.get('request_id')} both claim position #{position} on "
                            f"the chain; {RESTORE}")
            continue
        by_position[position] = certificate
        if not 1 <= position <= head.sequence:
            problems.append(f"certificate {_name(certificate)} lies beyond the ledger's chain "
                            f"head (#{head.sequence}): it was added outside s3t, or the head "
                            f"was rolled back; {RESTORE}")
    for position in range(1, head.sequence + 1):
        current = by_position.get(position)
        if current is None:
            problems.append(f"certificate #{position} of {head.sequence} is missing from the "
                            f"ledger: a certificate was removed; {RESTORE}")
            continue
        expected = None if position == 1 else (
            certificate_sha256(by_position[position - 1])
            if position - 1 in by_position else current["previous_sha256"])
        if position == 1 and current["previous_sha256"] is not None:
            problems.append(f"certificate {_name(current)} names a previous certificate "
                            f"(sha256 {str(current['previous_sha256'])[:12]}...) but is the "
                            f"first on the chain: the certificates before it were removed; "
                            f"{RESTORE}")
        elif current["previous_sha256"] != expected:
            problems.append(
                f"certificate {_name(current)} names previous sha256 "
                f"{str(current['previous_sha256'])[:12]}..., but certificate "
                f"{_name(by_position[position - 1])} "
                f"hashes to {str(expected)[:12]}...: that certificate was edited, or the "
                f"certificates were reordered; {RESTORE}")
    last = by_position.get(head.sequence)
    if last is not None and certificate_sha256(last) != head.sha256:
        problems.append(f"the ledger's chain head (#{head.sequence}, sha256 "
                        f"{str(head.sha256)[:12]}...) does not match certificate {_name(last)}, "
                        f"which hashes to {certificate_sha256(last)[:12]}...: the latest "
                        f"certificate was edited; {RESTORE}")
    return problems
