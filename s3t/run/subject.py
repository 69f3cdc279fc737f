"""Subject requests (OpenDSR-shaped erasures) as records: how one moves through its states,
pure. The ledger stores them (tables ``subject_requests`` and ``callbacks``, written only by
``Ledger``'s named operations); ``s3t.service.subjects`` serves them and sends the callbacks.

States, in order, each reached once:

* ``received`` and ``exact``: written in the deletion's own transaction, so a request the run
  acknowledged is already exact (no served parameter depends on the subject's samples) and
  a rejected one leaves no trace;
* ``erased``: its certificate's outcome says the files are gone (``files_erased``);
* ``restored``: every shard whose served depth the deletion lowered serves at that depth
  again (a retrain rebuilt it), checked against the live routes.

Each transition queues one callback per status URL in the same transaction (at least once:
a delivery is removed only after the receiver answered 2xx).

A request is recorded once: re-sending its ``subject_request_id`` with the same identities
and callback URLs (in any order) is answered with the recorded request; with other ones it is
refused (``changes``), inside the deletion's transaction, and nothing changes. Its
``submitted_time`` is the first one sent (a client that stamps each try anew still replays).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

STATES = ("received", "exact", "erased", "restored")
OpenDsrStatus = Literal["pending", "in_progress", "completed"]


@dataclass(frozen=True)
class SubjectOpening:
    """What the deletion's transaction records for a subject request (identities are not
    kept: the certificate holds the sample ids and the group keys' HMACs)."""

    subject_request_id: str
    submitted_time: str
    received_time: str
    callback_urls: tuple[str, ...] = ()


def changes(record: Mapping, opening: SubjectOpening, same_identities: bool) -> list[str]:
    """What a re-sent request would change in the recorded one (``record``: its ledger
    record; ``same_identities``: whether its identities' fingerprint is the recorded one), as
    the fields of ``POST /v1/dsr`` that differ; empty for a replay."""
    differ = [] if same_identities else ["subject_identities"]
    if sorted(set(record.get("callback_urls", []))) != sorted(set(opening.callback_urls)):
        differ.append("status_callback_urls")
    return differ


def conflict_message(subject_request_id: str, differ: list[str]) -> str:
    """The 409's words for a re-sent subject request id whose content differs."""
    return (f"subject_request_id {subject_request_id!r} was already received with other "
            f"{' and other '.join(differ)}: nothing was changed; re-send it as first sent to "
            f"read its status (or GET /v1/dsr/{subject_request_id}), or give a new request a "
            "new subject_request_id")


def depth_of(prefix_length: int | None) -> int:
    return 0 if prefix_length is None else int(prefix_length)


def restore_targets(routes_before: Mapping[str, str | None],
                    routes_after: Mapping[str, str | None],
                    depths: Mapping[str, int]) -> dict[str, int]:
    """Shard -> the served depth to get back to: the shards whose depth the deletion lowered
    (``depths``: stage key -> its prefix length)."""
    targets = {}
    for shard, before in routes_before.items():
        was = depths.get(before, 0) if before else 0
        now = depths.get(routes_after.get(shard) or "", 0)
        if now < was:
            targets[str(shard)] = was
    return targets


def stages_left(targets: Mapping[str, int], served: Mapping[str, int]) -> int:
    """Stages to retrain before the targets are met (one per missing level of depth)."""
    return sum(max(0, depth - served.get(shard, 0)) for shard, depth in targets.items())


def next_states(state: str, files_erased: bool, targets: Mapping[str, int],
                served: Mapping[str, int]) -> list[str]:
    """The states a request in ``state`` reaches now, in order (possibly none)."""
    reached = []
    if state == "exact" and files_erased:
        reached.append("erased")
        state = "erased"
    if state == "erased" and stages_left(targets, served) == 0:
        reached.append("restored")
    return reached


def request_status(state: str, retrains: bool) -> OpenDsrStatus:
    """OpenDSR's status: pending (received), in_progress, completed (restored; or erased when
    the retrain policy never retrains, so nothing more is coming)."""
    if state == "received":
        return "pending"
    if state == "restored" or (state == "erased" and not retrains):
        return "completed"
    return "in_progress"


def parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def expected_completion(state: str, transitions: Mapping[str, str], retrains: bool,
                        stages: int, stage_seconds: float | None, delay_s: float,
                        job_eta_s: float | None, now: datetime) -> str | None:
    """When the request should be completed: the time it was, once it is; else from the
    retrain policy (``retrains``: it will retrain for this request), the retrain job's own
    estimate (``job_eta_s``) or ``stages`` x the run's measured ``stage_seconds`` after the
    policy's delay; None when nothing will complete it or nothing was measured."""
    done = "restored" if retrains else "erased"
    if "restored" in transitions:
        return iso(parse_time(transitions["restored"]))
    if done in transitions:
        return iso(parse_time(transitions[done]))
    if not retrains:
        return None
    if stages == 0:
        return iso(now)
    if job_eta_s is not None:
        return iso(now + timedelta(seconds=job_eta_s))
    if stage_seconds is None:
        return None
    received = parse_time(transitions.get("received", iso(now)))
    start = max(now, received + timedelta(seconds=delay_s))
    return iso(start + timedelta(seconds=stages * stage_seconds))


def backoff(attempts: int, base_s: float, cap_s: float = 300.0) -> float:
    """Seconds before the next try of a callback that failed ``attempts`` times."""
    return min(cap_s, base_s * 2 ** max(0, attempts - 1))
