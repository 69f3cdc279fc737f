"""s3t: exact machine unlearning for fine-tuned transformers (S3T).

The heavy parts (torch, transformers) load on first use, so the planner and
``s3t simulate`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["S3T", "S3TConfig", "NoLiveShardError", "NotARunError", "Prediction"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from s3t.config import S3TConfig
    from s3t.engine import S3T, Prediction
    from s3t.run import NoLiveShardError, NotARunError


def __getattr__(name: str):
    if name == "S3TConfig":
        from s3t.config import S3TConfig

        return S3TConfig
    if name in ("NotARunError", "NoLiveShardError"):
        from s3t import run

        return getattr(run, name)
    if name in __all__:
        from s3t import engine

        return getattr(engine, name)
    raise AttributeError(f"module 's3t' has no attribute {name!r}")
