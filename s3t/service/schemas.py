"""Request and response bodies of the HTTP API (version 1): the typed records of
``s3t/contract.py``, which the client shares (they need no web stack), named here for the
endpoints."""

from __future__ import annotations

from s3t.contract import (
    ROUTES_ALL,
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
    Request,
    RetrainAccepted,
    SchemaList,
    SigningKeys,
    Status,
)

__all__ = ["ROUTES_ALL", "AuditReport", "Certificate", "DeletionPage", "DeletionRequest",
           "ErrorBody", "GenerateRequest", "GenerateResponse", "Health", "History", "Job",
           "JobList", "JobLog", "JsonSchema", "Labels", "PredictRequest", "PredictResponse",
           "Readiness", "Request", "RetrainAccepted", "SchemaList", "SigningKeys", "Status"]
