"""``s3t plan``: which m, L, B and retrain policy suit a data size, a deletion rate and a
training speed (planning only: ``s3t.plan.advice``; a run is only read for its timings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from s3t.cli import inputs
from s3t.cli.errors import engine_errors, fail
from s3t.plan import advice
from s3t.plan.accuracy import DepthTable
from s3t.plan.placement import parse_skew


def run_timings(path: Path) -> tuple[int, int, float, float, int]:
    """From a trained run: retained samples, epochs, throughput (samples x epochs per second,
    fitted with a per-stage overhead) and the number of timed stages, from every live stage's
    recorded ``train_seconds`` (its meta.json, hash-checked).

    The retained samples are those placed in cells: an anchored run's anchor set
    (``S3TConfig.anchor``) is left out, since the plan's cell is samples / (shards x slices)
    and a deletion lands in one; anchors are no cell's, can never be deleted, and are in every
    shard's first slice. Throughput is still fitted on each stage's whole ``n_samples``."""
    from s3t.run import Run

    run = Run.open(path)
    try:
        visits, seconds = [], []
        for record in run.live_stages().values():
            meta = json.loads(run.store.read(record.shard, record.key, record.files)["meta.json"])
            took = meta.get("train_seconds")
            if isinstance(took, (int, float)) and took > 0 and record.n_samples > 0:
                visits.append(run.config.stage_sample_visits(record.n_samples, record.depth))
                seconds.append(float(took))
        total, deleted = run.ledger.counts()
        anchors = run.ledger.anchor_count()
        epochs = run.config.epochs
    finally:
        run.close()
    if not seconds:
        raise fail("--run", f"{path} has no live stage with a recorded training time; give "
                   "--throughput instead")
    throughput, overhead = advice.fit_throughput(visits, seconds)
    return total - deleted - anchors, epochs, throughput, overhead, len(seconds)


def run_table(path: Path) -> tuple[DepthTable | None, str | None]:
    """The run's :class:`DepthTable` (its stages scored on its validation samples, by depth),
    or None and the reason it cannot have one (a causal LM, no validation samples)."""
    from s3t.engine import S3T  # imports torch: only when a run is scored

    model = S3T.load(path, verify=False, repair=False)
    try:
        return model.depth_table(lambda done, total: typer.echo(
            f"scoring the run's stages on its validation samples: shard {done}/{total}",
            err=True)), None
    except ValueError as exc:
        return None, str(exc)
    finally:
        model.close()


def plan_cmd(
    rate: Annotated[str, typer.Option("--rate", help="Expected deletion requests, e.g. 10/day, "
                    "2/h, 1/min.")],
    samples: Annotated[int | None, typer.Option("--samples", help="Training samples (default: "
                       "the --run's retained samples).")] = None,
    throughput: Annotated[float | None, typer.Option("--throughput", help="Training speed in "
                          "samples x epochs per second (default: fitted from the --run's stage "
                          "timings).")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="A trained run whose stage timings "
                   "give the throughput, per-stage overhead, samples and epochs.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs per stage (default: "
                      "the --run's, else 3).")] = None,
    stage_overhead: Annotated[float | None, typer.Option("--stage-overhead", help="Seconds per "
                              "stage beyond its samples (default: fitted from --run, else 0).")]
    = None,
    job_overhead: Annotated[float, typer.Option("--job-overhead", help="Seconds a retrain job "
                            "spends starting before its first stage (process start, imports, "
                            "model load, features): 9-13 s on one CPU core for MiniLM "
                            "(BENCHMARKS.md section 26). Paid each time a deletion finds the "
                            "retrainer idle.")] = 0.0,
    skew: Annotated[str, typer.Option("--skew", help="Which users are deleted: uniform or "
                    "zipf:S (e.g. zipf:1.1).")] = "uniform",
    users: Annotated[int | None, typer.Option("--users", help="Groups (users) deleted as a "
                     "whole; default one per sample.")] = None,
    placement: Annotated[str, typer.Option("--placement", help="uniform, or prior: place data "
                         "by deletion likelihood (needs --skew zipf:S to differ).")] = "uniform",
    shards: Annotated[str, typer.Option("--shards", help="Shard counts to consider, "
                      "comma-separated.")] = "1,2,3,4,5,6,7,8",
    max_slices: Annotated[int, typer.Option("--max-slices", help="Largest L to consider "
                          "(slices x layers per slice must fit the backbone).")] = 4,
    horizon: Annotated[str | None, typer.Option("--horizon", help="Average over this window "
                       "from a fully trained run, e.g. 8h until a scheduled full retrain "
                       "(150s, 30min, 8h, 2d); default: the steady state. A fresh run starts "
                       "at full capacity, so over a short window at a high rate capacity is "
                       "well above the steady state.")] = None,
    accuracy: Annotated[bool, typer.Option("--accuracy/--no-accuracy", help="With --run: "
                        "score the run's stages on its validation samples by depth and choose "
                        "among the plans with its shard count by predicted served accuracy "
                        "(SISA where S3T's partial depths are worth too little).")] = True,
    target: Annotated[float, typer.Option("--target", help="Capacity to reach: fraction of "
                      "shards at full depth, time-averaged.")] = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
    = False,
) -> None:
    """Recommend m, L, B and a retrain policy; predict capacity, served depth and retrain compute."""
    try:
        per_day = advice.parse_rate(rate)
    except ValueError as exc:
        raise fail("--rate", str(exc)) from None
    try:
        exponent = parse_skew(skew)
    except ValueError as exc:
        raise fail("--skew", str(exc)) from None
    try:
        counts = [int(x) for x in inputs.csv(shards)]
    except ValueError:
        raise fail("--shards", f"expected comma-separated integers, got {shards!r}") from None
    try:
        window = advice.parse_duration(horizon) if horizon is not None else None
    except ValueError as exc:
        raise fail("--horizon", str(exc)) from None
    fitted = None
    table, no_table = None, None
    if run is not None:
        with engine_errors(run=run):
            fitted = run_timings(run)
            if accuracy:
                table, no_table = run_table(run)
    if samples is None and fitted is None:
        raise fail("--samples", "give --samples N or a trained --run")
    if throughput is None and fitted is None:
        raise fail("--throughput", "give --throughput (samples x epochs per second) or a "
                   "trained --run whose stage timings give it")
    work = advice.Workload(
        samples=samples if samples is not None else fitted[0],  # type: ignore[index]
        rate_per_day=per_day,
        throughput=throughput if throughput is not None else fitted[2],  # type: ignore[index]
        epochs=epochs if epochs is not None else fitted[1] if fitted else 3,
        stage_overhead=stage_overhead if stage_overhead is not None
        else fitted[3] if fitted and throughput is None else 0.0,
        skew=exponent, users=users, placement=placement, horizon_s=window,
        job_overhead=job_overhead)
    try:
        report = advice.recommend(work, counts, max_slices, target=target, table=table)
    except ValueError as exc:
        raise fail(_option_of(str(exc)), str(exc)) from None
    if fitted is not None:
        report["timed_stages"] = fitted[4]
    if table is not None and report["chosen_by"] != "accuracy":
        no_table = (f"no plan considered has the run's {table.n_shards} shards (--shards "
                    f"{shards}): only those can be scored")
    if no_table is not None:
        report["accuracy_not_predicted"] = no_table
    typer.echo(json.dumps(report) if as_json else _text(report))


def _option_of(message: str) -> str:
    """The flag a ``ValueError`` from the planner is about (its first word is the field)."""
    field = message.split(" ", 1)[0]
    return {"rate_per_day": "--rate", "stage_overhead": "--stage-overhead",
            "job_overhead": "--job-overhead",
            "max_slices": "--max-slices", "horizon": "--horizon"}.get(field, f"--{field.replace('_', '-')}")


def _text(report: dict) -> str:
    best = report["recommended"]
    per_day = best["retrain_seconds_per_day"] / 3600
    lines = [
        f"recommended: --shards {best['shards']} --slices {best['slices']} --budget "
        f"{best['budget']} --strategy {best['strategy']}"
        + (" --placement prior" if report["workload"]["placement"] == "prior"
           and best["slices"] > 1 else ""),
        f"  capacity (shards at full depth) {best['capacity']:.3f}, served depth "
        f"{best['served_depth_fraction']:.3f}, trainer busy {best['trainer_busy']:.0%} "
        f"({per_day:.1f} h of retraining per day), first training "
        f"{best['training_seconds'] / 60:.1f} min [{best['method']}]",
        f"  why: {report['why']}",
        f"  retrain policy: {report['retrain_policy']}",
    ]
    if report["chosen_by"] == "accuracy":
        basis = report["accuracy_basis"]
        lines.insert(2, f"  predicted served accuracy {best['accuracy']:.3f} (SISA "
                     f"{report['sisa']['accuracy']:.3f}; undisturbed {basis['undisturbed']:.3f} "
                     f"on {basis['validation_samples']} validation samples)")
    elif "accuracy_not_predicted" in report:
        lines.append(f"  accuracy not predicted: {report['accuracy_not_predicted']}")
    if not report["meets_target"]:
        lines.append(f"  no plan reaches the target capacity {report['target']}: this is the "
                     "closest")
    return "\n".join(lines)
