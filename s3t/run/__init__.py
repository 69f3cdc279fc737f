"""The run's records: ledger, stage files, spilled feature files, and forget, sweep, audit,
and the deletion log (a hash chain of certificates).

Nothing here imports torch or a model: the whole deletion path lives in this package.
"""

from s3t.run.audit import AuditReport, audit
from s3t.run.card import model_fingerprint
from s3t.run.chain import DeletionLogError
from s3t.run.directory import (
    FORMAT,
    RUN_FILE,
    NoLiveShardError,
    NotARunError,
    RetrainRunningError,
    Run,
)
from s3t.run.files import FeatureFiles, IntegrityError, StageStore, UnsafeRunError
from s3t.run.forget import ForgetPlan, ForgetRequestError, forget, sweep
from s3t.run.ledger import Ledger
from s3t.run.stages import StageRecord, compute_routes, lineage_chain, stage_key

__all__ = [
    "FORMAT",
    "RUN_FILE",
    "AuditReport",
    "DeletionLogError",
    "FeatureFiles",
    "ForgetPlan",
    "ForgetRequestError",
    "IntegrityError",
    "Ledger",
    "NoLiveShardError",
    "NotARunError",
    "RetrainRunningError",
    "Run",
    "StageRecord",
    "StageStore",
    "UnsafeRunError",
    "audit",
    "compute_routes",
    "forget",
    "lineage_chain",
    "model_fingerprint",
    "stage_key",
    "sweep",
]
