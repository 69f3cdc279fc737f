"""Standard deletion requests: OpenDSR-shaped erasures, beside ``POST /v1/deletions``.

``POST /v1/dsr`` maps the subject's identities to the run's sample ids (``sample_id``) and
groups (``group``) and deletes them as ``/v1/deletions`` does, with the subject request id as
the deletion's idempotency key (the run's one replay rule, ``s3t.run.deletion``). The
ledger tracks the request's states (``s3t.run.subject``); ``GET /v1/dsr/{id}`` reads them,
and ``subjects.py`` sends the status callbacks.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response

from s3t.contract import ErasureRequest, SubjectRequestStatus
from s3t.run.deletion import now
from s3t.run.subject import SubjectOpening
from s3t.service import callback_hosts
from s3t.service.endpoints import ERRORS, ServiceDep
from s3t.service.errors import ApiError
from s3t.service.limits import check_ids
from s3t.service.logs import request_id as current_request_id

log = logging.getLogger("s3t.service")

erasures = APIRouter(responses=ERRORS)  # the token: access.py declares it


@erasures.post("/v1/dsr", tags=["deletions"], response_model=SubjectRequestStatus)
async def erase(body: ErasureRequest, service: ServiceDep, response: Response) -> dict:
    """An erasure request (OpenDSR's shape): the subject's samples and groups are forgotten
    exactly before the answer, which is the request's status (``exact``, then ``erased``
    once the files are gone; ``restored`` follows when a retrain brings capacity back).
    Re-sending the same ``subject_request_id`` with the same identities and callback URLs
    is answered with the same request (header ``S3T-Replayed``); with other ones, 409 naming
    what differs, and nothing changes. Callback URLs must be on hosts ``--callback-allow``
    lists (else 400)."""
    received = now()
    ids = [i.identity_value for i in body.subject_identities if i.identity_type == "sample_id"]
    groups = [i.identity_value for i in body.subject_identities if i.identity_type == "group"]
    check_ids(len(ids) + len(groups), service.settings.max_ids)
    subjects = service.subjects
    if body.status_callback_urls and not subjects.signs:
        raise ApiError(400, "status_callback_urls need a key to sign the callbacks: start the "
                       "server with --callback-secret-file (or S3T_CALLBACK_SECRET), or serve a "
                       "signed run; nothing was deleted")
    refused = callback_hosts.refused(body.status_callback_urls, service.settings.callback_allow)
    if refused:  # before anything is recorded: a caller cannot aim the server anywhere
        raise ApiError(400, callback_hosts.refusal(refused, service.settings.callback_allow))
    opening = SubjectOpening(body.subject_request_id, body.submitted_time, received,
                             tuple(body.status_callback_urls))
    outcome = await service.run(service.model.forget, ids, groups, body.subject_request_id,
                                opening, current_request_id.get())
    certificate = outcome.certificate
    log.info("erasure %s: deletion %s %s, %d sample(s)", body.subject_request_id,
             certificate.get("request_id"), "committed" if outcome.committed else
             "answered with its certificate", len(certificate.get("samples", ())), extra={
                 "subject_request": body.subject_request_id,
                 "deletion": certificate.get("request_id"), "committed": outcome.committed})
    if outcome.committed:
        service.deleted(current_request_id.get())
    subjects.wake()  # its callbacks go out now, from the subjects' thread
    status = await service.run(subjects.status, body.subject_request_id)
    if status is None:  # the ledger holds it from the deletion's transaction on
        raise ApiError(503, "the erasure was committed but its record cannot be read: "
                       f"GET /v1/dsr/{body.subject_request_id} again")
    response.headers["S3T-Replayed"] = "true" if outcome.replayed else "false"
    return status


@erasures.get("/v1/dsr/{subject_request_id}", tags=["deletions"],
              response_model=SubjectRequestStatus)
async def subject_request(subject_request_id: str, service: ServiceDep) -> dict:
    """Where an erasure request stands: its state, each transition's time, the expected
    completion time (from the retrain policy), its deletion's request id and its callbacks."""
    status = await service.run(service.subjects.status, subject_request_id)
    if status is None:
        raise ApiError(404, f"no erasure request {subject_request_id!r}: POST /v1/dsr makes "
                            "one (a plain deletion is at GET /v1/deletions/{id})")
    return status
