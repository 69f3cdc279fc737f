"""The records that cross the HTTP boundary, typed once: what ``s3t serve`` takes and answers,
what ``s3t.client`` returns, and the retrain child's event stream. Long on purpose: the one
contract, every record that crosses a boundary in one file.

Pydantic models, importing nothing of s3t and no web stack, so a client needs only pydantic
and httpx. The service declares them as the responses of its endpoints (``/openapi.json``);
their JSON Schemas are served at ``GET /v1/schemas/{name}`` and kept in ``docs/schemas/``
(``python -m s3t.contract docs/schemas`` rewrites them; a test checks the files are current).

Requests are strict (a number where a string is expected is an error, never coerced) and
refuse unknown fields, so a misspelt field (``ids`` for ``sample_ids``) is an error rather
than an empty request. Answers keep fields they do not declare (``extra="allow"``): a newer
server may add some, and an older client still reads the rest. Fields a server may leave
out are optional here; the service sends only the fields it has (``exclude_unset``).

Long on purpose: every record that crosses the boundary is typed here, once.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CALLBACK_URL = re.compile(r"^https?://[^/\s?#]+(/\S*)?$")
ROUTES_ALL = ("Shard -> every stage that served it, its route first: one with the run's "
              "serve_orderings 'best', every live ordering's stage at the route's depth with "
              "'all'.")


class Request(BaseModel):
    """A request body: strict, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Record(BaseModel):
    """An answer: fields it does not declare are kept."""

    model_config = ConfigDict(extra="allow")


# --- serving ------------------------------------------------------------------------------------

class PredictRequest(Request):
    inputs: list[str] = Field(min_length=1, description="Texts (or image data URIs for an image "
                              "run) to label; at most the server's max_inputs (else 413).")


class PredictResponse(Record):
    labels: list[str] = Field(description="Per input, the most probable label.")
    probabilities: list[list[float]] = Field(description="Per input, the ensemble's probability "
                                             "of each label, in the order of GET /v1/labels.")
    routes: dict[str, str] = Field(description="Shard -> the stage key that served it.")
    routes_all: dict[str, list[str]] = Field(description=ROUTES_ALL)
    live_shards: int


class GenerateRequest(Request):
    prompt: str
    max_new_tokens: int = Field(default=32, ge=0, le=4096)
    sample: bool = Field(default=False, description="Draw tokens instead of taking the most likely one.")
    temperature: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0, description="Seed of the draws (with sample).")


class GenerateResponse(Record):
    text: str
    tokens: int
    finished: bool
    routes: dict[str, str]
    routes_all: dict[str, list[str]] = Field(description=ROUTES_ALL)
    live_shards: int


class Labels(Record):
    """Which label each probability of a prediction belongs to."""

    task: str = Field(description="classification, or causal_lm (which has no labels).")
    labels: list[str] = Field(description="The run's labels: probabilities[i][j] is the "
                              "probability of labels[j].")


# --- deletions ----------------------------------------------------------------------------------

class DeletionRequest(Request):
    sample_ids: list[str] = Field(default_factory=list, description="Sample ids to forget.")
    groups: list[str] = Field(default_factory=list, description="Group keys whose every sample "
                              "is forgotten.")
    request_id: str | None = Field(default=None, min_length=1, max_length=200, description=(
        "A client key making the request idempotent: re-sending it with the same ids and "
        "groups returns the same certificate; with others, 409."))


IDENTITY_TYPES = ("sample_id", "group")
#: s3t's states of a subject request, in order, and the OpenDSR ``request_status`` of each.
SUBJECT_STATES = ("received", "exact", "erased", "restored")


class SubjectIdentity(Request):
    """Who the request is about, as the run knows them: a sample id, or a group key (every
    sample of the group is erased)."""

    identity_type: Literal["sample_id", "group"] = Field(description="sample_id: one sample "
                                                         "of the training data; group: a group "
                                                         "key (e.g. a user id), all its samples.")
    identity_value: str = Field(min_length=1, max_length=1000)
    identity_format: Literal["raw"] = Field(default="raw", description="OpenDSR's format of "
                                            "the value; s3t takes it as given.")


class ErasureRequest(Request):
    """An OpenDSR-shaped erasure request (``POST /v1/dsr``): one data subject's erasure,
    tracked by its ``subject_request_id`` through received, exact, erased and restored."""

    subject_request_id: str = Field(min_length=1, max_length=200, description=(
        "The controller's id of the request (a UUID in OpenDSR). It is the deletion's "
        "idempotency key: re-sending it with the same identities and callback URLs is "
        "answered with the same request; with others, 409 naming what differs."))
    subject_request_type: Literal["erasure"] = "erasure"
    submitted_time: str = Field(min_length=10, max_length=64, description="When the subject "
                                "made the request (ISO 8601 with a time zone).")
    subject_identities: list[SubjectIdentity] = Field(min_length=1, description="Mapped to "
                                                      "the run's sample ids and groups.")
    status_callback_urls: list[str] = Field(default_factory=list, max_length=10, description=(
        "http(s) URLs POSTed a SubjectCallback at each state change, signed (header "
        "S3T-Signature), retried with back-off until delivered; only on hosts the server's "
        "--callback-allow lists (else 400)."))
    api_version: str | None = Field(default=None, max_length=20)

    @field_validator("submitted_time")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 time, e.g. 2026-12-06T10:00:00Z") from None
        if parsed.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-12-06T10:00:00Z")
        return value

    @field_validator("status_callback_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not CALLBACK_URL.match(url) or len(url) > 2000:
                raise ValueError(f"{url[:100]!r} is not an http(s) URL")
        return list(dict.fromkeys(urls))  # one callback per URL, however often it is named


class SubjectTransition(Record):
    state: Literal["received", "exact", "erased", "restored"]
    time: str = Field(description="ISO 8601, UTC.")


class SubjectRequestStatus(Record):
    """Where an erasure request stands (``GET /v1/dsr/{subject_request_id}``). ``state``:
    received, exact (committed: nothing served depends on the subject's data), erased (its
    stages' files and ledger text are gone), restored (the shards it hit serve at their
    depth before it again). OpenDSR's ``request_status``: pending, in_progress, then
    completed once restored (or once erased where the retrain policy is manual)."""

    subject_request_id: str
    request_status: Literal["pending", "in_progress", "completed"]
    state: Literal["received", "exact", "erased", "restored"]
    submitted_time: str
    received_time: str
    expected_completion_time: str | None = Field(description="When it should be completed: "
                                                  "restored, from the retrain policy and the "
                                                  "run's measured stage times; null when the "
                                                  "policy will not retrain for it.")
    transitions: list[SubjectTransition] = Field(description="Each state reached, oldest first.")
    deletion_request_id: str = Field(description="The s3t request id of the deletion "
                                     "(its certificate: GET /v1/deletions/{id}).")
    samples: int = Field(description="Samples this request deleted.")
    status_callback_urls: list[str] = Field(default_factory=list)
    callbacks_pending: int = Field(default=0, description="Callbacks not yet delivered.")
    callbacks_failed: int = Field(default=0, description="Callbacks given up after every retry.")


class SubjectCallback(Record):
    """What a status callback POSTs: one state change. Signed: header ``S3T-Signature`` is
    ``ed25519=<hex>`` (the run's key, ``GET /v1/keys``) or ``hmac-sha256=<hex>`` (the
    server's callback secret), over ``S3T-Timestamp`` + ``.`` + the body's bytes."""

    subject_request_id: str
    state: Literal["received", "exact", "erased", "restored"]
    request_status: Literal["pending", "in_progress", "completed"]
    time: str = Field(description="When the state was reached.")
    expected_completion_time: str | None = None
    delivery_id: str = Field(description="The same on every retry of this callback.")


class CellVersion(Record):
    shard: int
    slice: int
    new_version: int = Field(description="The cell's content version after the deletion.")


class CertificateSignature(Record):
    """The run key's Ed25519 signatures of a certificate (``s3t certificates --verify``)."""

    key_id: str = Field(description="First 16 hex digits of the sha256 of the public key.")
    record: str = Field(description="Signature (hex) of what the chain digest covers.")
    outcome: str | None = Field(default=None, description="Signature (hex) of the whole "
                                "certificate without `signature`, once its outcome is written.")


# Mirrors the run's record, s3t.run.certificate.Certificate (which this module may not import):
# tests/test_certificate_record.py checks the two agree field by field.
class Certificate(Record):
    """The receipt of one deletion request: what was deleted, which stages were erased, the
    routes before and after, its place in the hash chain, and its outcome."""

    request_id: str = Field(description="The s3t request id (the certificate's file name).")
    time: str = Field(description="When the deletion committed (ISO 8601, UTC).")
    samples: list[str] = Field(description="Sample ids this request deleted.")
    already_deleted: list[str] = Field(default_factory=list, description="Named sample ids an "
                                       "earlier request had deleted.")
    groups_hmac: list[str] | None = Field(default=None, description="HMAC-SHA256 of each group key "
                                          "(keyed with the run's secret).")
    groups_sha256: list[str] | None = Field(default=None, description="Certificates issued before "
                                            "keyed hashing: sha256 of each group key.")
    cells: list[CellVersion] = Field(default_factory=list)
    erased_stages: list[str] = Field(description="Stage keys taken out of service and erased.")
    routes_before: dict[str, str | None]
    routes_after: dict[str, str | None]
    live_shards: int = Field(description="Shards serving after the deletion.")
    client_request_id: str | None = Field(default=None, description=(
        "The client's `request_id` (its idempotency key), when it gave one. Absent from "
        "certificates issued before it was recorded; covered by the chain link like the "
        "fields above."))
    x_request_id: str | None = Field(default=None, description=(
        "The X-Request-ID of the HTTP request that committed the deletion (the client's, or "
        "one the server made), which every log line of that request carries."))
    sequence: int | None = Field(default=None, description="Position in the certificate hash chain.")
    previous_sha256: str | None = Field(default=None, description="sha256 of the certificate before it.")
    duration_ms: float | None = None
    files_erased: bool | None = None
    ledger_scrubbed: bool | None = None
    feature_blocks_erased: int | None = None
    erase_error: str | None = Field(default=None, description="Why erasing failed after the commit (the "
                                    "next open of the run finishes it).")
    certificate_error: str | None = None
    signature: CertificateSignature | None = Field(default=None, description="Present when the "
                                                   "run has a signing key.")
    kind: str | None = Field(default=None, description="Absent for a deletion; `restore` or "
                             "`restore-gap` for the record of a restore (`s3t restore`).")
    backup_chain_head: dict[str, Any] | None = Field(default=None, description="Restore: the "
                                                     "backup's chain head.")
    replay_source: str | None = Field(default=None, description="Restore: where the deletions "
                                      "after the backup were read.")
    replayed: list[dict[str, Any]] | None = Field(default=None, description="Restore: each "
                                                  "deletion re-applied, and as which request.")
    gap: str | None = Field(default=None, description="restore-gap: what was not re-applied.")


class SigningKeys(Record):
    """``GET /v1/keys``: the run's public signing key (null for an unsigned run)."""

    algorithm: str | None
    signing_key: str | None = Field(description="`ed25519:<64 hex>`, as the run card holds it.")
    key_id: str | None
    signed: bool


class DeletionPage(Record):
    total: int
    offset: int
    limit: int
    certificates: list[Certificate]
    client_request_ids: dict[str, list[str]] = Field(default_factory=dict, description=(
        "s3t request id -> the client's request_id (idempotency keys) it was asked with, for "
        "this page's certificates that had one; kept beside the certificate, which it would "
        "change the chain digest of."))


class AuditReport(Record):
    ok: bool = Field(description="Whether the exactness invariant holds.")
    violations: list[str] = Field(description="Each finding, with its fix.")
    checked: dict[str, int] = Field(description="What was checked, counted.")
    signing: str | None = Field(default=None, description="Whether the run's records are "
                                "signed, and with which key (`unsigned` when it has none).")
    chain_intact: bool | None = Field(default=None, description="Whether the certificate hash "
                                      "chain is unbroken to the ledger's head (its breaks are "
                                      "among the violations).")


class AuditSummary(Record):
    """``/v1/status`` ``last_audit``: this server's last ``GET /v1/audit`` (in memory)."""

    time: float = Field(description="When it ran (unix seconds).")
    ok: bool
    violations: int = Field(description="How many findings (their text: GET /v1/audit).")
    chain_intact: bool | None
    certificates: int = Field(description="Certificates it checked.")


# --- the run's state ----------------------------------------------------------------------------

class StageRef(Record):
    key: str | None = None
    shard: int | None = None
    prefix: list[int] | None = None


class ServedRoute(Record):
    stage: str | None = None
    depth: int
    prefix: list[int] | None = None
    served_stages: list[str] | None = None
    weight: float | None = Field(default=None, description="How much the shard counts when "
                                 "shards are aggregated (the run's ensemble; 1 each with 'mean').")


class Job(Record):
    """One retrain job of a server (times in unix seconds)."""

    id: str
    trigger: str = Field(description="manual | policy")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"] = "queued"
    created: float = Field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stages_done: int = Field(default=0, description="Stages committed by this job.")
    stages_total: int | None = Field(default=None, description="Stages missing when it planned.")
    stages_discarded: int = Field(default=0, description="Stages a deletion invalidated while it ran.")
    stages_cancelled: int = Field(default=0, description=(
        "Of those, stages stopped mid-training because a deletion changed their data."))
    replans: int = Field(default=0, description=(
        "Deletions that re-planned the running job (the stages on the new versions joined it)."))
    phase: Literal["restoring", "fallback"] | None = Field(default=None, description=(
        "restoring: stages of the shards' primary chains (what restores serving depth) are left; "
        "fallback: only other orderings, for later deletions."))
    eta_full_capacity_s: float | None = Field(default=None, description=(
        "Estimated seconds until every shard serves at full depth, from this job's measured "
        "stage times; null before its first stage commits."))
    eta_full_capacity_at: float | None = Field(default=None, description=(
        "Unix time of full capacity: eta_full_capacity_s after the event that reported it."))
    estimated_end: float | None = Field(default=None, description=(
        "Unix time the job should end: after each settled stage, the wall time per settled "
        "stage since its plan times the stages left (never before full capacity); null "
        "before its first stage settles."))
    current_stage: StageRef | None = None
    last_route_switch: float | None = None
    error: str | None = None
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request "
                                   "that triggered it (POST /v1/retrain, or the deletion the "
                                   "policy followed).")

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class JobLog(Record):
    """What a retrain job's child process reported (``GET /v1/jobs/{id}/log``)."""

    id: str
    lines: list[str] = Field(description="The last 2,000 lines, oldest first: `TIME event "
                             "JSON` (its events) or `TIME stderr TEXT` (warnings, errors).")


class JobEvent(Record):
    """One line of ``s3t retrain --events``: plan, stage-start, stage-commit, stage-discard,
    stage-cancel (a deletion stopped it mid-training), replan (a deletion re-planned the job),
    done, then summary."""

    event: str
    time: str | None = None
    key: str | None = None
    shard: int | None = None
    prefix: list[int] | None = None
    stages: int | None = Field(default=None, description="plan: stages to train.")
    stages_total: int | None = None
    order: list[str] | None = None
    seconds: float | None = None
    route_switched: bool | None = None
    routes: dict[str, str | None] | None = None
    discarded: list[str] | None = None
    cancelled: list[str] | None = None
    replans: int | None = None
    primary: list[str] | None = Field(default=None, description=(
        "plan, replan: the planned stages on the shards' primary chains."))
    dropped: list[str] | None = Field(default=None, description=(
        "replan: planned stages never started that the deletion made obsolete."))
    phase: Literal["restoring", "fallback"] | None = None
    eta_full_capacity_s: float | None = None

    def stage(self) -> StageRef:
        return StageRef(key=self.key, shard=self.shard, prefix=self.prefix)


class RetrainState(Record):
    policy: str = Field(description="manual | eager | capacity:<threshold>")
    delay_s: float
    job: Job | None = Field(description="The current or last job.")


class RequestStats(Record):
    """One kind of request of this server (``service/traffic.py``)."""

    requests: int = Field(description="Answered since the server started.")
    errors: int = Field(description="Of those, answered 4xx or 5xx.")
    server_errors: int = Field(description="Of those, answered 5xx.")
    rate_per_s: float = Field(description="Requests per second over the last rate_s seconds.")
    window: int = Field(description="How many of the latest requests answered below 400 the "
                        "percentiles cover (at most Traffic.window).")
    p50_ms: float | None = Field(description="Their median latency (null: none yet).")
    p99_ms: float | None = Field(description="Their 99th percentile latency (nearest rank).")


class Traffic(Record):
    """``/v1/status`` ``traffic``: this server's HTTP requests since it started, in memory
    (each replica reports its own)."""

    time: float = Field(description="The server's clock when read (unix seconds).")
    since: float = Field(description="When it started counting (unix seconds).")
    window: int = Field(description="Latencies kept per kind (the most recent).")
    rate_s: int = Field(description="Seconds the rates are measured over.")
    requests: RequestStats = Field(description="Every request, the page's own reads included.")
    predictions: RequestStats = Field(description="POST /v1/predict and /v1/generate.")
    deletions: RequestStats = Field(description="POST /v1/deletions.")


class ErasureCounts(Record):
    """The run's erasure requests (``POST /v1/dsr``) by state, and their status callbacks."""

    received: int
    exact: int
    erased: int
    restored: int
    callbacks_pending: int = Field(description="Not delivered yet (being tried).")
    callbacks_failed: int = Field(description="Given up after --callback-attempts tries, or "
                                  "for a host --callback-allow does not list.")


class Status(Record):
    run_dir: str | None = None
    shards: int
    slices: int
    budget: int
    strategy: str
    method: str
    live_shards: int
    routes: dict[str, ServedRoute | None] = Field(description="Shard -> its route (None: the "
                                                  "shard serves nothing).")
    serve_orderings: str | None = None
    ensemble: str | None = None
    samples: int
    deleted: int
    live_stages: int
    erased_stages: int
    capacity: float = Field(description="Mean served depth over shards, as a fraction of full.")
    deletion_requests: int
    validation_samples: int | None = None
    validation_use: str | None = None
    anchor_samples: int | None = Field(default=None, description="With anchor: the samples "
                                       "every shard trains on in its first slice (never "
                                       "deletable); absent otherwise.")
    stages_total: int | None = None
    training: Literal["idle", "starting", "running"] | None = Field(default=None, description=(
        "running: a process holds the run's retrain lock; starting: this server's job is "
        "queued or its trainer is loading, before its plan."))
    retrain: RetrainState | None = None
    val_accuracy: float | None = None
    traffic: Traffic | None = Field(default=None, description="This server's requests.")
    last_audit: AuditSummary | None = Field(default=None, description="Null: none yet.")
    erasures: ErasureCounts | None = Field(default=None, description="The run's erasure "
                                           "requests (from its ledger).")


class JobList(Record):
    jobs: list[Job] = Field(description="Newest first.")


class RetrainAccepted(Record):
    job: Job


class HistoryPoint(Record):
    time: float
    event: str
    capacity: float
    live_shards: int
    deletion_requests: int
    deleted: int
    val_accuracy: float | None = None


class Evaluation(Record):
    time: float
    val_accuracy: float = Field(description="Accuracy of what this server served on (at most "
                                "eval_size of) the validation split.")


class History(Record):
    points: list[HistoryPoint] = Field(description="After each stage commit and deletion, "
                                       "derived from the run's ledger (every server on the run "
                                       "reports the same); oldest first.")
    evaluations: list[Evaluation] = Field(default_factory=list, description="This server's "
                                          "measurements (kept in memory); oldest first.")


class Health(Record):
    status: Literal["ok"]


class Readiness(Record):
    ready: bool
    live_shards: int
    routes: dict[str, str] | None = None
    reason: str | None = None


class Issue(Record):
    type: str
    loc: list[str | int]
    msg: str


class ErrorBody(Record):
    error: str = Field(description="The kind of error (bad_request, unauthorized, not_found, "
                       "conflict, too_large, invalid_request, unavailable, internal_error).")
    message: str = Field(description="What is wrong and what to do.")
    detail: list[Issue] | None = Field(default=None, description="Invalid requests: what is wrong where.")


class JsonSchema(Record):
    title: str
    type: str | None = None
    description: str | None = None
    properties: dict[str, Any] | None = None
    required: list[str] | None = None
    defs: dict[str, Any] | None = Field(default=None, alias="$defs")


class SchemaList(Record):
    names: list[str]


#: The published records, by the name ``GET /v1/schemas/{name}`` and ``docs/schemas`` use.
RECORDS: dict[str, type[BaseModel]] = {
    "certificate": Certificate, "deletion-request": DeletionRequest, "status": Status,
    "audit-report": AuditReport, "job": Job, "job-event": JobEvent,
    "history-point": HistoryPoint, "error": ErrorBody, "predict-request": PredictRequest,
    "predict-response": PredictResponse, "labels": Labels, "signing-keys": SigningKeys,
    "erasure-request": ErasureRequest, "subject-request-status": SubjectRequestStatus,
    "subject-callback": SubjectCallback,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a published record (requests as sent, answers as received)."""
    model = RECORDS[name]
    return model.model_json_schema(mode="validation" if issubclass(model, Request)
                                   else "serialization")


def write_schemas(directory: Path) -> list[Path]:
    """Write every published record's JSON Schema as ``<name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RECORDS:
        path = directory / f"{name}.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written


def schema_text(name: str) -> str:
    return json.dumps(json_schema(name), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for written in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written)
