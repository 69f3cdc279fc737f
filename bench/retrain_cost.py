"""Benchmark 23: what a retrain after one deletion costs, against training those stages first.

Why (issue 27, item 2): S3T answers a deletion at once, but its capacity comes back only when
the invalidated stages are retrained, and the issue asks that a retrain after one deletion cost
at most half of what training those stages cost the first time. This trains one MiniLM run on
WordNet glosses (with a never-deletable validation set, so validation passes are in the
profile), then for several single deletions in different cells copies the run, forgets one
sample in the copy and retrains it as ``s3t retrain`` does (``S3T.load(verify=False)``, the
backbone's fingerprint cache cleared so the model load is a fresh process's), and reports side
by side:

* the first training's seconds for exactly the stages the retrain trains (``train_stage``'s
  seconds, matched by shard and prefix) against the retrain's seconds for them and the retrain
  job's whole wall time;
* a per-phase profile of the fit and of each retrain (model load, trunk features, feature
  reads, LoRA optimiser steps, validation passes, ancestor reads, stage writes, ledger
  commits, planning, the integrity check), exclusive seconds from ``time.perf_counter``
  wrappers installed around those functions for the measurement only (nothing computed
  changes);
* the time until full capacity is back (the scheduler's primary chains) against the first
  training of every invalidated stage;
* whether a sample's trunk features depend on the chunk it is computed in (rows compared
  bitwise with other neighbours and one by one) and what one-by-one passes would cost;
* why the work cannot be skipped bitwise: how many invalidated stages had an invalidated
  ancestor (their inputs changed throughout), and the most that reusing the optimiser steps
  before the deleted sample's first batch could save even with a batch order that a deletion
  did not shift (``step_reuse_bound``).

    python -m bench retrain_cost [--quick] [--seeds 0 1]
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from typing import Any

from bench import harness

NAME = "retrain_cost"
QUICK = {"train": 180, "eval": 32, "shards": 2, "slices": 3, "budget": 3, "epochs": 2,
         "deletions": 3, "neighbours": 96}
FULL = {"train": 600, "eval": 128, "shards": 2, "slices": 3, "budget": 3, "epochs": 3,
        "deletions": 4, "neighbours": 256}
SMOKE = {"train": 24, "eval": 4, "shards": 2, "slices": 2, "budget": 2, "epochs": 1,
         "deletions": 2, "neighbours": 8}
PHASES = ("model_load", "features_compute", "feature_reads", "lora_steps", "validation",
          "ancestors_read", "stage_writes", "ledger_commits", "planning", "integrity_check")
TARGET = 0.5  # retrain cost / first-training cost of the same stages (issue 27)


class Profiler:
    """Exclusive wall and CPU seconds per phase: each wrapped function's time minus that of
    wrapped functions it called; and each ``train_stage`` call's own (inclusive) seconds by
    (shard, prefix). Installed around functions for a measurement, then removed. CPU seconds
    (``time.process_time``; stages run one torch thread) are what other jobs on a shared
    machine disturb least."""

    def __init__(self) -> None:
        self._stack: list[list[float]] = []
        self._undo: list[tuple[Any, str, Any]] = []
        self.reset()

    def wrap(self, owner: Any, attr: str, phase: str) -> None:
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0, 0.0])
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                inner = self._stack.pop()
                self.seconds[phase] += wall - inner[0]
                self.cpu[phase] += cpu - inner[1]
                if self._stack:
                    self._stack[-1][0] += wall
                    self._stack[-1][1] += cpu
                if "prefix" in kwargs and "shard" in kwargs:  # train_stage
                    self.stages[(kwargs["shard"], tuple(kwargs["prefix"]))] = (wall, cpu)

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.stages: dict[tuple[int, tuple[int, ...]], tuple[float, float]] = {}

    def close(self) -> None:
        while self._undo:
            owner, attr, original = self._undo.pop()
            setattr(owner, attr, original)

    def report(self, wall: float, cpu: float) -> dict[str, dict[str, float]]:
        """Per phase: exclusive wall and CPU seconds; ``other`` is the rest of the call."""
        out = {"wall": {k: round(v, 4) for k, v in self.seconds.items()},
               "cpu": {k: round(v, 4) for k, v in self.cpu.items()}}
        out["wall"]["other"] = round(max(0.0, wall - sum(self.seconds.values())), 4)
        out["cpu"]["other"] = round(max(0.0, cpu - sum(self.cpu.values())), 4)
        return out


def profiler() -> Profiler:
    """A profiler around the functions a fit or retrain spends its time in."""
    import s3t.engine
    import s3t.train.local
    import s3t.train.stage_trainer
    from s3t.models.adapted import AdaptedBackbone
    from s3t.models.stage_weights import WeightBank
    from s3t.run.directory import Run
    from s3t.run.files import StageStore
    from s3t.train.features import FeatureCache
    from s3t.train.scheduler import Scheduler

    prof = Profiler()
    for owner, attr, phase in (
        (AdaptedBackbone, "__init__", "model_load"), (s3t.engine, "model_fingerprint", "model_load"),
        (FeatureCache, "ensure", "features_compute"), (FeatureCache, "batch", "feature_reads"),
        (FeatureCache, "targets", "feature_reads"), (s3t.train.local, "train_stage", "lora_steps"),
        (s3t.train.stage_trainer, "val_score", "validation"), (WeightBank, "get", "ancestors_read"),
        (StageStore, "write", "stage_writes"), (Scheduler, "commit", "ledger_commits"),
        (Scheduler, "plan", "planning"), (Run, "quarantine_damaged", "integrity_check"),
    ):
        prof.wrap(owner, attr, phase)
    return prof


Stage = tuple[int, tuple[int, ...]]


def cells_for(size: dict[str, Any]) -> list[tuple[int, int]]:
    """One cell per deletion, spread over shards and slices."""
    return [(k % size["shards"], k % size["slices"]) for k in range(size["deletions"])]


def structure(erased: list[Stage], first: dict[Stage, float], epochs: int) -> dict[str, Any]:
    """What a deletion's invalidated stages allow to be reused, bitwise, at best.

    A stage whose parent was also invalidated trains on changed inputs from its first step:
    nothing of it can be reused. A stage whose ancestors are intact (the first invalidated
    stage of its ordering) sees the same data up to the deleted sample's first batch; with a
    batch order that a deletion does not shift (today's ``randperm`` over the retained ids
    shifts every batch), at most its first epoch's steps before that batch could be kept: at
    most 1/epochs of its steps (the deleted sample last), 1/(2 epochs) in expectation.
    ``first`` is each stage's first-training cost."""
    gone = set(erased)
    heads = [s for s in erased if len(s[1]) == 1 or (s[0], s[1][:-1]) not in gone]
    total = sum(first.get(s, 0.0) for s in erased)
    share = sum(first.get(s, 0.0) for s in heads) / total if total else 0.0
    return {"invalidated": len(erased), "ancestors_changed": len(erased) - len(heads),
            "first_invalidated": len(heads), "first_invalidated_share": share,
            "step_reuse_bound": share / epochs, "step_reuse_expected": share / (2 * epochs)}


def job(run_dir: Any, prof: Profiler, victim: str | None = None,
        damage: list[Stage] | None = None) -> dict[str, Any]:
    """One retrain job in a fresh copy of the run, as ``s3t retrain`` runs it
    (``S3T.load(verify=False)``, then ``retrain``), after forgetting ``victim``, or (the
    control) after removing a file of each stage in ``damage``, which ``retrain`` then
    quarantines and rebuilds on the same data as the first time."""
    import s3t.run.card
    from s3t.engine import S3T

    copy = harness.tmp_run_dir("retrain-copy")
    shutil.copytree(run_dir, copy)
    s3t.run.card._FINGERPRINTS.clear()  # as a fresh retrain process: the backbone is hashed
    est = S3T.load(copy, verify=False)
    out: dict[str, Any] = {}
    try:
        live = {r.key: (r.shard, tuple(r.prefix)) for r in est.ledger.stages("live")}
        if victim is not None:
            with harness.stopwatch() as t_forget:
                cert = est.forget([victim])
            out["forget_ms"] = t_forget["s"] * 1000
            out["erased"] = [live[k] for k in cert["erased_stages"]]
        for key, stage in live.items():
            if stage in (damage or []):
                (copy / "stages" / str(stage[0]) / key / "adapter.safetensors").unlink()
        events: list[tuple[float, dict]] = []
        prof.reset()
        started, cpu = time.perf_counter(), time.process_time()

        def record(event: dict) -> None:
            events.append((time.perf_counter() - started, event))

        summary = est.retrain(progress=False, on_event=record)
        out["wall"], out["cpu"] = time.perf_counter() - started, time.process_time() - cpu
        out["trained"] = dict(prof.stages)
        out["profile"] = prof.report(out["wall"], out["cpu"])
        primary = {k for _, e in events if e["event"] == "plan" for k in e.get("primary", [])}
        commits = [(t, e) for t, e in events if e["event"] == "stage-commit"]
        out["full_capacity_seconds"] = max((t for t, e in commits if e["key"] in primary),
                                           default=0.0)
        out["primary"] = [(e["shard"], tuple(e["prefix"])) for _, e in commits if e["key"] in primary]
        out["audit_ok"] = est.audit().ok
    finally:
        est.close()
        shutil.rmtree(copy.parent, ignore_errors=True)
    if summary["stages_trained"] != len(out["trained"]):
        raise RuntimeError(f"the retrain reported {summary['stages_trained']} stages, the "
                           f"profiler saw {len(out['trained'])}")
    return out


def retrain_one(run_dir: Any, victim: str, first: dict[Stage, tuple[float, float]],
                prof: Profiler, epochs: int) -> dict[str, Any]:
    """Forget ``victim`` in a copy of the run and retrain it; then, in another copy, rebuild
    exactly the stages the deletion invalidated on the undeleted data (the control: what
    training those stages costs, measured minutes apart in the same warm process)."""
    deleted = job(run_dir, prof, victim=victim)
    erased, trained = deleted["erased"], deleted["trained"]
    if set(trained) != set(erased):
        raise RuntimeError(f"the retrain trained {sorted(trained)}, not the invalidated "
                           f"stages {sorted(erased)}")
    control = job(run_dir, prof, damage=erased)
    if set(control["trained"]) != set(erased):
        raise RuntimeError(f"the control rebuilt {sorted(control['trained'])}, not {sorted(erased)}")
    out: dict[str, Any] = {
        "victim": victim, "forget_ms": deleted["forget_ms"], "stages_trained": len(trained),
        "retrain_wall_seconds": deleted["wall"], "retrain_cpu_seconds": deleted["cpu"],
        "control_wall_seconds": control["wall"], "control_cpu_seconds": control["cpu"],
        "profile": deleted["profile"], "control_profile": control["profile"],
        "primary_stages": len(deleted["primary"]),
        "full_capacity_seconds": deleted["full_capacity_seconds"],
        "audit_ok": deleted["audit_ok"] and control["audit_ok"]}
    for i, unit in enumerate(("seconds", "cpu_seconds")):
        out[f"first_{unit}"] = sum(first[s][i] for s in trained)
        out[f"retrain_stage_{unit}"] = sum(t[i] for t in trained.values())
        out[f"control_stage_{unit}"] = sum(t[i] for t in control["trained"].values())
        out[f"first_{unit}_primary"] = sum(first[s][i] for s in deleted["primary"])
        out[f"first_{unit}_all_invalidated"] = sum(first[s][i] for s in erased)
    out["ratio_cpu"] = deleted["cpu"] / control["cpu"]
    out["ratio_wall"] = deleted["wall"] / control["wall"]
    out["ratio_first_cpu"] = deleted["cpu"] / out["first_cpu_seconds"]
    out["ratio_stages_cpu"] = out["retrain_stage_cpu_seconds"] / out["control_stage_cpu_seconds"]
    out["structure"] = structure(erased, {s: v[1] for s, v in control["trained"].items()}, epochs)
    # What would remain if every phase but the optimiser steps and validation passes cost
    # nothing and the most reusable steps were reused, against the control job.
    prof_cpu = deleted["profile"]["cpu"]
    steps = prof_cpu["lora_steps"] * (1 - out["structure"]["step_reuse_bound"])
    out["floor_ratio_cpu"] = (steps + prof_cpu["validation"]) / control["cpu"]
    return out


def fit_run(size: dict[str, Any], seed: int, prof: Profiler) -> tuple[Any, dict[str, Any], dict]:
    from s3t.config import S3TConfig
    from s3t.data.loaders import train_test_split
    from s3t.engine import S3T

    data, _ = harness.wordnet_split(size["train"] + size["eval"], 4, seed)
    train, evald = train_test_split(data, size["eval"], seed=seed)
    config = S3TConfig(model=harness.backbone(), shards=size["shards"], slices=size["slices"],
                       budget=size["budget"], epochs=size["epochs"], seed=seed, torch_threads=1)
    est = S3T(config, run_dir=harness.tmp_run_dir(NAME))
    prof.reset()
    started, cpu = time.perf_counter(), time.process_time()
    est.fit(train, eval_data=evald, progress=False)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    first = dict(prof.stages)
    cells = {cell: [r[0] for r in est.ledger.cell_samples(*cell)] for cell in cells_for(size)}
    out = {"fit_wall_seconds": wall, "fit_cpu_seconds": cpu, "stages": len(first),
           "stage_seconds": sum(v[0] for v in first.values()),
           "stage_cpu_seconds": sum(v[1] for v in first.values()),
           "profile": prof.report(wall, cpu)}
    run_dir = est.run_dir
    est.close()
    out["neighbours"] = neighbours(config, list(train.texts[:size["neighbours"]]),
                                   config.batch_size)
    return run_dir, out, {"first": first, "cells": cells}


def neighbours(config: Any, texts: list[str], chunk: int) -> dict[str, Any]:
    """Whether a sample's trunk features depend on the chunk it is computed in, and what
    computing them one sample at a time (the way that makes rows independent of their
    neighbours by construction) would cost: the rows of ``texts`` computed in chunks, in
    chunks shifted by one sample (other neighbours, other padding), and one by one; rows
    compared bitwise, CPU seconds of each pass."""
    import numpy as np
    import torch

    from s3t.models.adapted import AdaptedBackbone
    from s3t.run.numeric import new_env
    from s3t.train.numeric import numeric_env

    with numeric_env(new_env(config.torch_threads)), torch.no_grad():
        backbone = AdaptedBackbone(config, num_labels=2)

        def rows(pieces: list[list[str]]) -> tuple[list[dict[int, np.ndarray]], float]:
            out, cpu = [], time.process_time()
            for piece in pieces:
                batch = backbone.encode(piece)
                bounds = backbone.boundaries(batch)
                for r, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
                    out.append({g: h[r, :int(n)].float().numpy() for g, h in bounds.items()})
            return out, time.process_time() - cpu

        chunked, chunked_cpu = rows([texts[i:i + chunk] for i in range(0, len(texts), chunk)])
        shifted, _ = rows([texts[:1]] + [texts[i:i + chunk] for i in range(1, len(texts), chunk)])
        single, single_cpu = rows([[t] for t in texts])

    def same(a: list, b: list) -> int:
        return sum(all(np.array_equal(x[g], y[g]) for g in x) for x, y in zip(a, b, strict=True))

    return {"samples": len(texts), "chunk": chunk, "equal_rows_shifted": same(chunked, shifted),
            "equal_rows_single": same(chunked, single), "chunked_cpu_seconds": chunked_cpu,
            "single_cpu_seconds": single_cpu, "single_over_chunked": single_cpu / chunked_cpu}


def mean(rows: list[dict[str, Any]], get: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
    return harness.summarize([get(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--tag", default="", help="suffix of the result name (--tag=-before)")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0, 1])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    prof = profiler()
    fits, deletions = [], []
    try:
        for seed in seeds:
            run_dir, fit, info = fit_run(size, seed, prof)
            fit["seed"] = seed
            fits.append(fit)
            print(f"seed {seed}: fit {fit['fit_wall_seconds']:.1f} s ({fit['fit_cpu_seconds']:.1f} s "
                  f"CPU), {fit['stages']} stages", flush=True)
            for k, (cell, ids) in enumerate(info["cells"].items()):
                victim = random.Random(seed * 1000 + k).choice(sorted(ids))
                row = retrain_one(run_dir, victim, info["first"], prof, size["epochs"])
                row.update(seed=seed, cell=list(cell))
                deletions.append(row)
                s = row["structure"]
                print(f"  delete {victim} in cell {cell}: {row['stages_trained']} stages "
                      f"({s['ancestors_changed']} with a changed ancestor); first time "
                      f"{row['first_cpu_seconds']:.1f} s CPU in the fit, "
                      f"{row['control_cpu_seconds']:.1f} s CPU rebuilt (control job); retrain job "
                      f"{row['retrain_cpu_seconds']:.1f} s CPU (x{row['ratio_cpu']:.2f}; wall "
                      f"x{row['ratio_wall']:.2f}); full capacity after "
                      f"{row['full_capacity_seconds']:.1f} s", flush=True)
    finally:
        prof.close()
    cpu_total = sum(r["retrain_cpu_seconds"] for r in deletions)
    summary = {
        "ratio_cpu": mean(deletions, lambda r: r["ratio_cpu"]),
        "ratio_wall": mean(deletions, lambda r: r["ratio_wall"]),
        "ratio_stages_cpu": mean(deletions, lambda r: r["ratio_stages_cpu"]),
        "ratio_first_cpu": mean(deletions, lambda r: r["ratio_first_cpu"]),
        "floor_ratio_cpu": mean(deletions, lambda r: r["floor_ratio_cpu"]),
        "full_capacity_over_first_all": mean(
            deletions, lambda r: r["full_capacity_seconds"] / r["first_seconds_all_invalidated"]),
        "step_reuse_bound": mean(deletions, lambda r: r["structure"]["step_reuse_bound"]),
        "ancestors_changed_share": mean(deletions, lambda r: r["structure"]["ancestors_changed"]
                                        / r["structure"]["invalidated"]),
        "retrain_phase_share_cpu": {ph: sum(r["profile"]["cpu"][ph] for r in deletions) / cpu_total
                                    for ph in (*PHASES, "other")},
        "audit_ok": all(r["audit_ok"] for r in deletions),
    }
    ratio = summary["ratio_cpu"]["mean"]
    summary["targets"] = [{
        "target": f"retrain after one deletion <= {TARGET:g}x the first training of its stages",
        "measured": f"{ratio:.2f}x CPU (retrain job / a job rebuilding the same stages on the "
                    f"undeleted data, mean of {len(deletions)} deletions); floor "
                    f"{summary['floor_ratio_cpu']['mean']:.2f}x",
        "met": ratio <= TARGET}]
    print(f"retrain job / rebuild of the same stages: x{ratio:.2f} CPU, x{summary['ratio_wall']['mean']:.2f} "
          f"wall; floor x{summary['floor_ratio_cpu']['mean']:.2f} (at most "
          f"{summary['step_reuse_bound']['mean']:.0%} of the steps reusable)", flush=True)
    harness.write_result(NAME + args.tag, args.quick, prov,
                         {"fits": fits, "deletions": deletions, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
