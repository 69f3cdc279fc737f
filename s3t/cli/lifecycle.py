"""``s3t forget``, ``retrain``, ``status`` and ``audit``: a trained run's deletions, the
retraining that restores its routes, and the checks of where it stands."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from s3t.cli import inputs
from s3t.cli.errors import engine_errors, fail
from s3t.cli.inputs import JsonOpt, RunArg, emit
from s3t.cli.train import CONFIG_FLAGS
from s3t.contract import Status
from s3t.run import Run

# retrain's overrides of the run's config: a ConfigError about them names these options
RETRAIN_FLAGS = {f: CONFIG_FLAGS[f] for f in ("executor", "ray_address")}


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
    emit(as_json, certificate, json.dumps(certificate, indent=2))


def _print_event(event: dict) -> None:
    print(json.dumps(event, default=str), flush=True)


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
        from s3t.engine import S3T

        # Not verified at load: retrain itself quarantines and rebuilds damaged stage files,
        # which is the repair the integrity error message points users to.
        est = S3T.load(run, verify=False)
        summary = est.retrain(progress=not (as_json or events),
                              on_event=_print_event if events else None,
                              executor=executor, ray_address=ray_address)
        summary["capacity"] = est.status()["capacity"]
        est.close()
    if events:
        _print_event({"event": "summary", **summary})
        return
    emit(as_json, summary, f"retrained {summary['stages_trained']} stages in "
         f"{summary['train_seconds']:.1f} s; capacity {summary['capacity']:.2f}")


def status_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Live shards, routes, deletions and capacity of a run."""
    with engine_errors(run=run), Run.open(run, verify=True) as opened:
        status = Status.model_validate(opened.status())  # the record /v1/status answers
    lines = [f"run {status.run_dir}: {status.shards} shards x {status.slices} slices, "
             f"budget {status.budget} ({status.strategy})",
             f"samples {status.samples}, deleted {status.deleted}, "
             f"deletion requests {status.deletion_requests}",
             f"live shards {status.live_shards}/{status.shards}, capacity {status.capacity:.2f}",
             f"validation samples {status.validation_samples}: {status.validation_use}"]
    if status.anchor_samples is not None:
        lines.append(f"anchor samples {status.anchor_samples}: in every shard's first slice "
                     "(never deletable)")
    for shard, route in status.routes.items():
        served = "" if route is None or route.served_stages is None else \
            f", serving {len(route.served_stages)} stages"
        lines.append(f"  shard {shard}: " + ("dead (retrain required)" if route is None else
                                              f"{route.stage} (depth {route.depth}{served})"))
    emit(as_json, status.model_dump(mode="json", exclude_unset=True), "\n".join(lines))


def audit_cmd(run: RunArg, as_json: JsonOpt = False) -> None:
    """Re-check the exactness invariant from the ledger and the files; exit 0 only if it holds."""
    with engine_errors(run=run), Run.open(run, verify=False, repair=False) as opened:
        report = opened.audit()
    text = "audit passed: " if report.ok else "audit FAILED:\n  " + "\n  ".join(report.violations)
    if report.ok:
        text += ", ".join(f"{k} {v}" for k, v in report.checked.items())
    emit(as_json, report.to_dict(), f"{text}\nrecords: {report.signing}")
    if not report.ok:
        raise typer.Exit(1)
