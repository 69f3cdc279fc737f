"""The HTTP API, version 1. Which endpoints need the token is decided in ``auth.py``; every
call that touches the run goes through ``GuardedModel`` (``guard.py``) in a worker thread.
Every answer is declared as one of the contract's records (``s3t/contract.py``) and sent
with the fields the code gave it (``response_model_exclude_unset``: no nulls added)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse

from s3t.contract import (
    RECORDS,
    AuditReport,
    Certificate,
    DeletionPage,
    DeletionRequest,
    ErrorBody,
    GenerateRequest,
    GenerateResponse,
    Health,
    History,
    Job,
    JobList,
    JobLog,
    JsonSchema,
    Labels,
    PredictRequest,
    PredictResponse,
    Readiness,
    RetrainAccepted,
    SchemaList,
    SigningKeys,
    Status,
    json_schema,
)
from s3t.run import NotARunError
from s3t.run.card import RUN_FILE, read_card
from s3t.service.errors import ApiError, api_error
from s3t.service.limits import check_ids
from s3t.service.logs import request_id as current_request_id
from s3t.service.metrics import CONTENT_TYPE
from s3t.service.state import Service, routes_all

log = logging.getLogger("s3t.service")

# Which routes need the token is access.py's declaration alone: BearerAuthMiddleware checks
# it and the OpenAPI schema documents it (``access.document_security``, in app.py).
ERRORS: dict[int | str, dict] = {code: {"model": ErrorBody} for code in
                                 (400, 401, 404, 409, 413, 422, 503, 507)}
router = APIRouter(responses=ERRORS)
secured = APIRouter(responses=ERRORS)
# Causal-LM runs only: the app lists it in its schema only for them (``serves_generation``).
generation = APIRouter(responses=ERRORS)


def serves_generation(run_dir: Path) -> bool:
    """Whether the run is a causal LM (``/v1/generate`` is then part of its API); a run
    whose card cannot be read fails at start-up, which says why."""
    try:
        info, _ = read_card(Path(run_dir) / RUN_FILE)
    except (NotARunError, OSError):
        return True
    return info.get("task") == "causal_lm"


async def service_of(request: Request) -> Service:
    """The app's service. ``async`` so FastAPI calls it on the event loop: a plain ``def``
    dependency is run in a worker thread, two thread hand-offs before every request's own
    work (on a busy machine, each waits for a CPU)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]


@router.get("/healthz", tags=["operations"], response_model=Health)
async def healthz() -> dict:
    """The process is up and its run is loaded."""
    return {"status": "ok"}


@router.get("/readyz", tags=["operations"], response_model=Readiness,
            response_model_exclude_unset=True, responses={503: {"model": Readiness}})
async def readyz(service: ServiceDep, response: Response) -> dict:
    """200 when at least one live route serves, else 503 (every shard needs a retrain)."""
    try:
        await service.run(service.model.check_ledger)  # the ledger file is still the run's
        routes = await service.run(service.model.live_routes)
    except Exception as err:  # e.g. a damaged stage file: not ready (no path in the reason)
        response.status_code = 503
        known = api_error(err, service.settings.run_dir)
        reason = known.message if known is not None else "internal error; see the server log"
        return {"ready": False, "live_shards": 0, "reason": f"{type(err).__name__}: {reason}"}
    response.status_code = 200 if routes else 503
    return {"ready": bool(routes), "live_shards": len(routes), "routes": routes}


# Its errors are JSON like every other route's (the 200 alone is text).
JSON_ERRORS: dict[int | str, dict] = {
    code: {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
    for code in ERRORS}


@router.get("/metrics", tags=["operations"], response_class=PlainTextResponse,
            responses=JSON_ERRORS)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(await service.render_metrics(), media_type=CONTENT_TYPE)


@secured.post("/v1/predict", response_model=PredictResponse, tags=["serving"])
async def predict(body: PredictRequest, service: ServiceDep) -> dict:
    """Label inputs with the ensemble of live shards. Concurrent requests are batched into one
    model call; ``routes`` names the stage that served each shard."""
    limit = service.settings.max_inputs
    if len(body.inputs) > limit:
        raise ApiError(413, f"{len(body.inputs)} inputs in one request; at most {limit}: split "
                            "them over several requests")
    return await service.predict(body.inputs)


@secured.get("/v1/labels", response_model=Labels, tags=["serving"])
async def labels(service: ServiceDep) -> dict:
    """Which label each probability of a prediction belongs to: ``probabilities[i][j]`` is
    the probability of ``labels[j]``."""
    engine = service.model.model
    return {"task": engine.task, "labels": list(engine.label_names)}


@generation.post("/v1/generate", response_model=GenerateResponse, tags=["serving"])
async def generate(body: GenerateRequest, service: ServiceDep) -> dict:
    """Answer an instruction (causal-LM runs): the live shards' next-token probabilities are
    averaged at every step."""
    generate = service.metrics.timed("generate", service.model.generate)
    result, routes = await service.run_model(generate, body.prompt,
                                             body.max_new_tokens, not body.sample,
                                             body.temperature, body.seed)
    return {"text": result.text, "tokens": len(result.token_ids), "finished": result.finished,
            "routes": routes, "routes_all": routes_all(result.routes_all),
            "live_shards": result.live_shards}


@secured.post("/v1/deletions", tags=["deletions"], response_model=Certificate,
               response_model_exclude_unset=True)
async def delete(body: DeletionRequest, service: ServiceDep, response: Response) -> dict:
    """Forget samples and groups exactly. Answers with the certificate once the deletion is
    durable, its stages' files are erased and they are out of service: a prediction that
    starts after this response never uses them. With ``request_id`` the request is
    idempotent."""
    if not body.sample_ids and not body.groups:
        raise ApiError(400, "empty deletion request: give at least one sample id or group")
    check_ids(len(body.sample_ids) + len(body.groups), service.settings.max_ids)
    outcome = await service.run(service.model.forget, body.sample_ids, body.groups,
                                body.request_id, None, current_request_id.get())
    certificate = outcome.certificate
    log.info("deletion %s %s: %d sample(s), %d stage(s) erased, %s live shard(s), %s ms",
             certificate.get("request_id"), "committed" if outcome.committed else
             "answered with its certificate", len(certificate.get("samples", ())),
             len(certificate.get("erased_stages", ())), certificate.get("live_shards"),
             certificate.get("duration_ms"), extra={
                 "deletion": certificate.get("request_id"), "committed": outcome.committed,
                 "replayed": outcome.replayed, "client_key": body.request_id,
                 "samples": len(certificate.get("samples", ())),
                 "erased_stages": len(certificate.get("erased_stages", ())),
                 "files_erased": certificate.get("files_erased")})
    if outcome.committed:
        service.deleted(current_request_id.get())
    response.headers["S3T-Replayed"] = "true" if outcome.replayed else "false"
    return outcome.certificate


@secured.get("/v1/deletions/{request_id}", tags=["deletions"], response_model=Certificate,
              response_model_exclude_unset=True)
async def deletion(request_id: str, service: ServiceDep) -> dict:
    """A deletion's certificate, by the s3t request id or by the client's ``request_id``."""
    certificate = await service.run(service.model.certificate, request_id)
    if certificate is None:
        raise ApiError(404, f"no deletion with request id or client key {request_id!r}")
    return certificate


@secured.get("/v1/deletions", response_model=DeletionPage, tags=["deletions"],
              response_model_exclude_unset=True)
async def deletions(service: ServiceDep, offset: Annotated[int, Query(ge=0)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """Deletion certificates, oldest first, a page at a time, with the client's
    ``request_id`` of each that was asked with one."""
    total, page, keys = await service.run(service.model.certificates, offset, limit)
    return {"total": total, "offset": offset, "limit": limit, "certificates": page,
            "client_request_ids": keys}


@router.get("/v1/status", tags=["operations"], response_model=Status,
            response_model_exclude_unset=True)
async def status(service: ServiceDep) -> dict:
    """Live shards, routes, deletions and capacity of the run (as ``s3t status``);
    ``training`` is ``running`` while a retrain (this server's or ``s3t retrain``'s) trains
    stages (``starting`` while this server's job waits for its trainer to plan);
    ``retrain`` gives the policy and the current or last job; ``traffic`` this server's
    request rates, errors and latencies; ``last_audit`` its last audit's outcome."""
    status = await service.run(service.model.status)
    job = service.retrainer.current()
    if status.get("training") == "idle" and job is not None:  # never "idle" as a job starts
        status["training"] = "starting" if job.stages_total is None else "running"
    return {**status, "retrain": service.retrainer.describe(),
            "val_accuracy": service.history.val_accuracy,
            "traffic": service.metrics.traffic.snapshot(), "last_audit": service.last_audit}


@router.get("/v1/keys", tags=["operations"], response_model=SigningKeys)
async def keys(service: ServiceDep) -> dict:
    """The run's public signing key (open: an auditor checks certificates and stage records
    with it, e.g. ``s3t certificates --verify --public-key``); null for an unsigned run."""
    from s3t.run.signing import key_id

    public = service.model.records.public_key
    return {"algorithm": None if public is None else "ed25519", "signing_key": public,
            "key_id": None if public is None else key_id(public), "signed": public is not None}


@secured.get("/v1/audit", tags=["deletions"], response_model=AuditReport)
async def audit(service: ServiceDep) -> dict:
    """Re-check the exactness invariant (as ``s3t audit``); ``ok`` says whether it holds.
    Its outcome, without the findings' text, is ``/v1/status``'s ``last_audit``."""
    report = await service.run(service.model.audit)
    service.last_audit = {"time": time.time(), "ok": report["ok"],
                          "violations": len(report["violations"]),
                          "chain_intact": report.get("chain_intact"),
                          "certificates": report["checked"].get("certificates", 0)}
    return report


@secured.post("/v1/retrain", tags=["operations"], status_code=202,
               response_model=RetrainAccepted)
async def retrain(service: ServiceDep) -> dict:
    """Start a retrain job in the background (or return the one queued or running): it
    rebuilds the stages deletions invalidated, each serving from its commit on."""
    job = service.retrainer.request()
    return {"job": job.model_dump()}


@router.get("/v1/jobs", tags=["operations"], response_model=JobList)
async def jobs(service: ServiceDep) -> dict:
    """Recent retrain jobs of this server, newest first."""
    return {"jobs": [job.model_dump() for job in reversed(service.retrainer.jobs)]}


@router.get("/v1/jobs/{job_id}", tags=["operations"], response_model=Job)
async def job(job_id: str, service: ServiceDep) -> dict:
    """A retrain job: state, stages done of planned, the stage training now, the last route
    switch."""
    found = service.retrainer.job(job_id)
    if found is None:
        raise ApiError(404, f"no retrain job {job_id!r} on this server (jobs are kept in memory, "
                            "the last 50): see GET /v1/jobs")
    return found.model_dump()


@router.get("/v1/history", tags=["operations"], response_model=History)
async def history(service: ServiceDep) -> dict:
    """``points``: capacity, live shards and deletions after each stage commit and deletion,
    derived from the run's ledger (every server on the run reports the same); ``evaluations``:
    the validation accuracy of what this server served, as it measured it. Oldest first."""
    return await service.run(service.history.snapshot)  # reads the ledger: off the loop


@router.get("/v1/schemas", tags=["contract"], response_model=SchemaList)
async def schemas() -> dict:
    """The names of the published records (``docs/schemas/<name>.json``)."""
    return {"names": list(RECORDS)}


@router.get("/v1/schemas/{name}", tags=["contract"], response_model=JsonSchema,
            response_model_exclude_unset=True)
async def schema(name: str) -> dict:
    """The JSON Schema of a record that crosses the API (certificate, status, job, ...)."""
    if name not in RECORDS:
        raise ApiError(404, f"no record named {name!r}: one of {', '.join(RECORDS)}")
    return json_schema(name)


@secured.get("/v1/jobs/{job_id}/log", tags=["operations"], response_model=JobLog)
async def job_log(job_id: str, service: ServiceDep) -> dict:
    """What a retrain job's child process reported, one line each (the last 2,000): its
    events (JSON) and whatever it wrote on stderr (warnings, errors), with the time."""
    found = service.retrainer.job(job_id)
    if found is None:
        raise ApiError(404, f"no retrain job {job_id!r} on this server (jobs are kept in memory, "
                            "the last 50): see GET /v1/jobs")
    return {"id": job_id, "lines": service.retrainer.log_of(job_id)}
