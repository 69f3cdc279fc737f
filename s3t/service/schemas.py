"""Request and response bodies of the HTTP API (version 1), as pydantic models.

Requests are strict (a number where a string is expected is 422, never coerced) and
refuse unknown fields, so a misspelt field (``ids`` for ``sample_ids``) is an error rather
than an empty request.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

ROUTES_ALL = ("Shard -> every stage that served it, its route first: one with the run's "
              "serve_orderings 'best', every live ordering's stage at the route's depth with "
              "'all'.")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictRequest(Request):
    inputs: list[str] = Field(min_length=1, description="Texts (or image data URIs for an image "
                              "run) to label; at most the server's max_inputs (else 413).")


class PredictResponse(BaseModel):
    labels: list[str]
    probabilities: list[list[float]] = Field(description="Per input, the ensemble's probability "
                                             "of each label (the run's label order).")
    routes: dict[str, str] = Field(description="Shard -> the stage key that served it.")
    routes_all: dict[str, list[str]] = Field(description=ROUTES_ALL)
    live_shards: int


class GenerateRequest(Request):
    prompt: str
    max_new_tokens: int = Field(32, ge=0, le=4096)
    sample: bool = Field(False, description="Draw tokens instead of taking the most likely one.")
    temperature: float = Field(1.0, gt=0, le=100, allow_inf_nan=False)
    seed: int = Field(0, ge=0, description="Seed of the draws (with sample).")


class GenerateResponse(BaseModel):
    text: str
    tokens: int
    finished: bool
    routes: dict[str, str]
    routes_all: dict[str, list[str]] = Field(description=ROUTES_ALL)
    live_shards: int


class DeletionRequest(Request):
    sample_ids: list[str] = Field(default_factory=list, description="Sample ids to forget.")
    groups: list[str] = Field(default_factory=list, description="Group keys whose every sample "
                              "is forgotten.")
    request_id: str | None = Field(None, min_length=1, max_length=200, description=(
        "A client key making the request idempotent: re-sending it with the same ids and "
        "groups returns the same certificate; with others, 409."))


class DeletionPage(BaseModel):
    total: int
    offset: int
    limit: int
    certificates: list[dict]


class ErrorBody(BaseModel):
    error: str
    message: str
