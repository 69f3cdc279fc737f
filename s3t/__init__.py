"""s3t: exact machine unlearning for fine-tuned transformers (S3T).

The heavy parts (torch, transformers) load on first use, so the planner and
``s3t simulate`` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["S3T", "ConfigError", "S3TConfig", "ForgetRequestError", "IntegrityError",
           "NoLiveShardError", "NotARunError", "Prediction"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from s3t.config import ConfigError, S3TConfig
    from s3t.engine import S3T, Prediction
    from s3t.run import ForgetRequestError, IntegrityError, NoLiveShardError, NotARunError


def __getattr__(name: str) -> Any:
    if name in ("S3TConfig", "ConfigError"):
        from s3t import config

        return getattr(config, name)
    if name in ("NotARunError", "NoLiveShardError", "IntegrityError", "ForgetRequestError"):
        from s3t import run

        return getattr(run, name)
    if name in __all__:
        from s3t import engine

        return getattr(engine, name)
    raise AttributeError(f"module 's3t' has no attribute {name!r}")
