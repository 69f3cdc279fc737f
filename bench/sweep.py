"""Sustainable deletion rate: the same Poisson streams of user deletions through the real
server, for S3T (B=3, B=1, B=3 placed by prior), SISA and full retraining, two systems at a
time, each pinned to its own CPU core.

Fair by construction: the two systems of a slot run at the same time, each server (and the
background retrainer it starts, which inherits its affinity) pinned to one core with one torch
thread (the run card's numeric environment), so load on the machine falls on both alike;
every system is trained once the same way (pinned, two at a time) and each stream is served
by a fresh copy of its run. Samples belong to users (groups of ``user_size``); a deletion
request deletes one user, drawn among the users not yet deleted either uniformly or with
Zipf-skewed probability (exponent ``zipf``, a random ranking of the users). The placed-by-prior
S3T run is trained with each sample's ``deletion_prior`` set to its user's Zipf weight (what a
deployment estimates from its deletion history), so it runs on the Zipf streams only, where it
takes S3T B=1's place (B=1 runs on the uniform streams): S3T B=3 beside SISA, then S3T B=1 or
placed by prior beside full retraining.

Per system, skew and rate: time-averaged served accuracy (a 503 counts as 0) and capacity
(mean served depth / L), time at full capacity, stages trained and discarded, retrain compute
(the jobs' running time), stages invalidated per deletion, deletion latency, errors, lost
deletions and the audit; each system's sustainable rate is the highest swept rate at which its
time-averaged accuracy stays within 1 point of its undisturbed accuracy (the served accuracy
before the first deletion). Beside each S3T row: ``s3t plan``'s prediction (``plan.advice``)
from the run's own stage timings. Per stream, what ``s3t plan --run`` on the S3T B=3 run
recommends, choosing by the accuracy its stages, scored by depth on held-out glosses (in
neither the training set nor the test traffic), predict for the stream: the system it names
is what "s3t as a system" serves there. (The runs themselves hold no validation split: its
scoring would add to the cost of every stage trained.)

    python -m bench sweep            # the recorded size (about 80 min on 2 cores)
    python -m bench sweep --quick    # a small size (about 10 min)
    python -m bench sweep --smoke    # runs end to end (measures nothing)
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import audit
from bench.stream import (
    cores,
    depth_table_of,
    plan_choice,
    serve_together,
    server_command,
    summarize,
    time_average,
    traffic_order,
    train_pinned,
)

NAME = "sweep"
#: The systems: S3TConfig overrides (``method`` picks a baseline), and the skews they run on.
SYSTEMS: dict[str, dict[str, Any]] = {
    "s3t": {"budget": 3},
    "s3t_b1": {"budget": 1},
    # B=1: with B = L cyclic orderings every slice sits at every depth once, so under eager
    # retraining a deletion invalidates L(L+1)/2 stages wherever it lands and placement cannot
    # help (plan.placement_sim: 0%); with one ordering the likeliest slice is the last one.
    "s3t_prior": {"budget": 1, "placement": "prior", "strategy": "bms"},
    "sisa": {"method": "sisa"},
    "full": {"method": "full"},
}
LABELS = {"s3t": "S3T B=3", "s3t_b1": "S3T B=1", "s3t_prior": "S3T B=1, placed by prior",
          "sisa": "SISA", "full": "full retraining"}
#: Served accuracy from the prediction traffic (bench.stream): one prediction every 0.1 s
#: cycling through 400 test glosses (earlier runs scored 64 glosses every 10 s).
FULL = {"train": 1000, "test": 400, "eval": 300, "user_size": 4, "shards": 5, "slices": 3, "epochs": 1,
        "max_seq_len": 32, "zipf": 1.0, "rates_per_min": [1.0, 4.0, 12.0, 36.0],
        "duration_s": 150.0, "quiet_s": 15.0, "retrain_delay_s": 2.0, "eval_every_s": 2.0,
        "predict_gap_s": 0.1, "skews": ["uniform", "zipf"], "systems": list(SYSTEMS)}
QUICK = dict(FULL, train=300, test=160, eval=100, rates_per_min=[3.0, 20.0], duration_s=90.0,
             quiet_s=15.0)
SMOKE = dict(FULL, train=40, test=16, eval=8, user_size=2, shards=2, slices=2, max_seq_len=16,
             rates_per_min=[60.0], duration_s=8.0, quiet_s=4.0, retrain_delay_s=1.0,
             eval_every_s=4.0, predict_gap_s=1.0, skews=["zipf"], systems=["s3t", "sisa"])
WITHIN = 0.01  # "sustains a rate": time-averaged accuracy within 1 point of undisturbed


def users_of(ids: list[str], user_size: int, seed: int) -> dict[str, str]:
    """Each sample's user: a seeded shuffle cut into groups of ``user_size``."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    return {sid: f"user-{i // user_size:05d}" for i, sid in enumerate(order)}


def zipf_by_user(users: list[str], exponent: float, seed: int) -> dict[str, float]:
    import numpy as np

    from s3t.plan.placement import zipf_weights

    w = zipf_weights(len(users), exponent, np.random.default_rng(seed))
    return {u: float(x) for u, x in zip(users, w, strict=True)}


def user_stream(users: list[str], weights: dict[str, float] | None, rate_per_min: float,
                size: dict[str, Any], rng: random.Random) -> list[tuple[float, dict]]:
    """(offset s, request body): Poisson arrivals, each a user not yet deleted, drawn
    uniformly (``weights`` None) or by weight."""
    stream: list[tuple[float, dict]] = []
    pool = list(users)
    t = 0.0
    while pool:
        t += rng.expovariate(rate_per_min / 60.0)
        if t >= size["duration_s"] - size["quiet_s"]:
            break
        k = (rng.randrange(len(pool)) if weights is None else
             rng.choices(range(len(pool)), [weights[u] for u in pool])[0])
        stream.append((round(t, 3), {"groups": [pool.pop(k)]}))
    return stream


def train_all(size: dict[str, Any], seed: int, train: Any, priors: dict[str, float]
              ) -> dict[str, dict[str, Any]]:
    """Every system once (pinned, two at a time); the placed-by-prior run's samples carry
    their user's Zipf weight as ``deletion_prior``."""
    from s3t.data.samples import Dataset

    def data_for(system: str) -> Any:
        if SYSTEMS[system].get("placement") != "prior":
            return train
        return Dataset(ids=list(train.ids), texts=list(train.texts), labels=list(train.labels),
                       groups=list(train.groups), label_names=list(train.label_names),
                       priors=[priors[g] for g in train.groups])

    common = {k: size[k] for k in ("shards", "slices", "epochs", "max_seq_len")}
    return train_pinned({s: SYSTEMS[s] for s in size["systems"]}, dict(common, seed=seed),
                        data_for)


def plan_prediction(trained: dict[str, Any], system: str, size: dict[str, Any], skew: str,
                    rate_per_min: float, n_users: int, job_overhead: float = 0.0
                    ) -> dict[str, Any] | None:
    """``s3t plan``'s prediction for an S3T system from its run's stage timings, over the
    stream's window (``--horizon``: a fresh run starts at full capacity), with a retrain
    job's start-up of ``job_overhead`` seconds (``--job-overhead``)."""
    if system not in ("s3t", "s3t_b1", "s3t_prior"):
        return None
    from s3t.cli.plan import run_timings
    from s3t.plan import advice

    samples, epochs, throughput, overhead, _ = run_timings(trained["run"])
    work = advice.Workload(samples=samples, rate_per_day=rate_per_min * 1440.0,
                           throughput=throughput, epochs=epochs, stage_overhead=overhead,
                           skew=size["zipf"] if skew == "zipf" else 0.0, users=n_users,
                           placement="prior" if system == "s3t_prior" else "uniform",
                           horizon_s=size["duration_s"], job_overhead=job_overhead)
    # the stream's window: a fresh run at full capacity, no deletions in its quiet tail
    row = advice.evaluate(work, size["shards"], size["slices"],
                          min(SYSTEMS[system]["budget"], size["slices"]),
                          arrivals_until=size["duration_s"] - size["quiet_s"])
    return {**{k: row[k] for k in ("capacity", "served_depth_fraction", "trainer_busy", "method")},
            "job_overhead_s": job_overhead}


def job_stage_seconds(run: Path) -> dict[str, float]:
    """Each finished retrain job's seconds spent training stages, from the run's retrain log
    (its ``summary`` events)."""
    import json

    log = run / "service" / "retrain.log"
    out: dict[str, float] = {}
    if not log.is_file():
        return out
    for line in log.read_text().splitlines():
        job, _, kind, payload = (line.split(" ", 3) + ["", "", ""])[:4]
        if kind == "event":
            event = json.loads(payload)
            if event.get("event") == "summary":
                out[job] = float(sum(event["stage_seconds"].values()))
    return out


def job_overhead(jobs: list[dict[str, Any]]) -> float:
    """A retrain job's mean seconds outside stage training (start-up: process, imports,
    model load, features; the gaps between stages), over finished jobs with their
    ``stage_seconds``: what ``s3t plan --job-overhead`` takes."""
    spans = [j["finished"] - j["started"] - j["stage_seconds"] for j in jobs
             if j.get("started") and j.get("finished") and j.get("stage_seconds") is not None]
    return max(0.0, sum(spans) / len(spans)) if spans else 0.0


def lost_user_deletions(run: Path, rows: list[dict[str, Any]], members: dict[str, list[str]]
                        ) -> list[str]:
    """Acknowledged requests the ledger does not hold, or whose user kept a sample."""
    conn = sqlite3.connect(run / "ledger.sqlite")
    try:
        requests = {r for (r,) in conn.execute("SELECT request_id FROM deletions")}
        deleted = dict(conn.execute("SELECT sample_id, deleted_request FROM samples "
                                    "WHERE deleted_request IS NOT NULL").fetchall())
    finally:
        conn.close()
    return [r["request_id"] for r in rows if r["status"] == 200
            and (r["request_id"] not in requests
                 or any(sid not in deleted for sid in members[r["body"]["groups"][0]]))]


def measure(pairs: list[tuple[str, Path, set[int]]], stream: list[tuple[float, dict]],
            texts: list[str], labels: list[str], size: dict[str, Any],
            members: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Serve ``stream`` from every pinned system at once; per system its summary."""
    served = serve_together(pairs, stream, texts, labels, size)
    out = {}
    for system, run, _ in pairs:
        res = served[system]
        summary = summarize(res, size)
        erased = [d["erased"] for d in res["deletions"] if d["status"] == 200]
        summary.update(
            undisturbed_accuracy=res["undisturbed_accuracy"],
            time_with_all_shards_full=_full_shards_average(res["samples"], size),
            retrain_seconds=sum((j["finished"] or time.time()) - j["started"]
                                for j in res["jobs"] if j.get("started")),
            stages_invalidated_per_deletion=sum(erased) / len(erased) if erased else 0.0,
            server_exit=res["server_exit"],
            lost_deletions=lost_user_deletions(run, res["deletions"], members), audit=audit(run))
        seconds = job_stage_seconds(run)
        for job in res["jobs"]:
            job["stage_seconds"] = seconds.get(job.get("id", ""))
        out[system] = {"summary": summary, "samples": res["samples"], "traffic": res["traffic"],
                       "deletions": res["deletions"], "jobs": res["jobs"]}
    return out


def _full_shards_average(samples: list[dict[str, Any]], size: dict[str, Any]) -> float:
    """Time average of the fraction of shards at full depth (the planner's *capacity*)."""
    for s in samples:
        s["shards_full"] = s["shards_full_fraction"]
    return time_average(samples, "shards_full", size["duration_s"])


def placement_prediction(size: dict[str, Any], n_users: int, deletions: int) -> dict[str, Any]:
    """The simulator's stages invalidated per deletion, uniform against prior placement, for
    this size's Zipf stream (true priors, as the benchmark gives; every stage restored
    between deletions, as eager retraining does when it keeps up)."""
    from s3t.plan.placement_sim import simulate_placement

    return simulate_placement(size["shards"], size["slices"], SYSTEMS["s3t_prior"]["budget"],
                              users=n_users, samples_per_user=size["user_size"],
                              skew=size["zipf"], deletions=max(1, min(deletions, n_users)),
                              window=1, trials=50, seed=0)


def sustainable(rows: dict[str, dict[str, Any]], rates: list[float]) -> float | None:
    """The highest swept rate up to which the system stays within 1 point of undisturbed."""
    best = None
    for rate in sorted(rates):
        s = rows.get(str(rate))
        if s is None:
            continue
        if s["time_avg_accuracy"] < s["undisturbed_accuracy"] - WITHIN:
            break
        best = rate
    return best


def slots(systems: list[str], skew: str) -> list[list[str]]:
    """The systems of one (skew, rate), two per slot: S3T beside SISA, S3T B=1 beside full
    retraining, and under Zipf choice S3T B=1 placed by prior beside the same placed
    uniformly (the placement comparison: same time, same stream)."""
    pairs = ([["s3t", "sisa"], ["s3t_prior", "s3t_b1"], ["full"]] if skew == "zipf"
             else [["s3t", "sisa"], ["s3t_b1", "full"]])
    return [[x for x in pair if x in systems] for pair in pairs if set(pair) & set(systems)]


def plot(payload: dict[str, Any], quick: bool) -> None:
    plt = harness.pyplot()
    skews = list(payload["cells"])
    fig, axes = plt.subplots(1, len(skews), figsize=(5 * len(skews), 4), squeeze=False)
    for ax, skew in zip(axes[0], skews, strict=True):
        for system, by_rate in payload["cells"][skew].items():
            rates = sorted(by_rate, key=float)
            ax.plot([float(r) for r in rates],
                    [by_rate[r]["time_avg_accuracy"] for r in rates], marker="o",
                    label=LABELS[system])
        ax.set_xscale("log")
        ax.set_xlabel("deletion requests per minute (one user each)")
        ax.set_ylabel("time-averaged served accuracy")
        ax.set_title(f"{skew} choice of deleted users")
        ax.legend(fontsize=8)
    fig.tight_layout()
    harness.save_plot(fig, NAME, quick)


def reused_runs(path: Path, systems: list[str]) -> dict[str, dict[str, Any]]:
    """``--reuse-runs FILE``: {system: trained run directory} from an earlier sweep (kept with
    BENCH_KEEP_RUNS=1), instead of training again; each stream still serves a fresh copy."""
    import json

    given = json.loads(path.read_text())
    missing = [s for s in systems if s not in given]
    if missing:
        raise SystemExit(f"--reuse-runs {path} lacks {missing}: give a run directory for each")
    return {s: {"run": Path(given[s]), "train_seconds": None, "stages": None} for s in systems}


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--reuse-runs", type=Path, default=None,
                   help="JSON {system: run dir} of runs trained by an earlier sweep")
    p.add_argument("--skews", nargs="+", choices=("uniform", "zipf"), default=None)
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=None,
                   help="a subset of the systems (slots keep their pairs)")
    p.add_argument("--replan", action="store_true",
                   help="serve no stream: recompute the recorded result's s3t plan choices "
                        "from its S3T run (--reuse-runs) with the current planner")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    if args.skews:
        size["skews"] = args.skews
    if args.systems:
        size["systems"] = args.systems
    seed = harness.seeds_for(args, [0], [0])[0]
    prov = harness.provenance(NAME, args.quick, [seed], size)
    core_a, core_b = cores()
    prov["cores"] = [sorted(core_a), sorted(core_b)]
    prov["server_command"] = server_command(size)
    harness.print_header(prov)
    from s3t.data.loaders import train_test_split

    train, test = harness.wordnet_split(size["train"] + size["eval"], size["test"], seed)
    train, held_out = train_test_split(train, size["eval"], seed=seed)
    user = users_of(list(train.ids), size["user_size"], seed)
    train.groups = [user[sid] for sid in train.ids]
    users = sorted(set(user.values()))
    members: dict[str, list[str]] = {}
    for sid, u in user.items():
        members.setdefault(u, []).append(sid)
    weights = zipf_by_user(users, size["zipf"], seed)
    if args.replan:
        return replan(args, size, held_out, len(users))
    texts, labels = traffic_order(test, seed)
    trained = (reused_runs(args.reuse_runs, size["systems"]) if args.reuse_runs else
               train_all(size, seed, train, weights))
    table = depth_table_of(trained["s3t"]["run"], core_a | core_b, held_out) \
        if "s3t" in trained else None  # s3t plan --run's view of the S3T B=3 run
    choices: dict[str, dict[str, Any]] = {}
    overheads: dict[tuple[str, str], float] = {}
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    details: dict[str, Any] = {}
    for skew in size["skews"]:
        for rate in size["rates_per_min"]:
            stream = user_stream(users, weights if skew == "zipf" else None, rate, size,
                                 random.Random(f"{seed}/{skew}/{rate}"))
            for group in slots(size["systems"], skew):
                pairs = []
                for system, cpus in zip(group, (core_a, core_b), strict=False):
                    copy = harness.tmp_run_dir(f"sweep-{system}-{skew}-{rate:g}") / "run"
                    shutil.copytree(trained[system]["run"], copy)
                    pairs.append((system, copy, cpus))
                print(f"{skew} {rate:g}/min: {' + '.join(group)}, {len(stream)} requests "
                      f"over {size['duration_s']:.0f} s", flush=True)
                for system, res in measure(pairs, stream, texts, labels, size, members).items():
                    s = res["summary"]
                    # a job's start-up, calibrated on the system's lowest-rate stream
                    start_up = overheads.setdefault((skew, system), job_overhead(res["jobs"]))
                    s["plan"] = plan_prediction(trained[system], system, size, skew, rate,
                                                len(users), start_up)
                    cells.setdefault(skew, {}).setdefault(system, {})[str(rate)] = s
                    details[f"{skew}/{rate:g}/{system}"] = {
                        "samples": res["samples"], "deletions": res["deletions"],
                        "jobs": res["jobs"]}
                    print(f"  {system}: accuracy {s['time_avg_accuracy']:.3f} (undisturbed "
                          f"{s['undisturbed_accuracy']:.3f}), full capacity "
                          f"{s['time_at_full_capacity']:.0%}, stages "
                          f"{s['stages_retrained']} trained / {s['stages_discarded']} "
                          f"discarded, lost {len(s['lost_deletions'])}, audit "
                          f"{'ok' if s['audit']['ok'] else 'FAILED'}", flush=True)
                partial = result_payload(seed, users, trained, cells, details, size)
                harness.write_result(NAME, args.quick, prov,
                                     dict(partial, plan_choice=choices, complete=False))
            if table is not None:  # with the S3T system's job start-up, now calibrated
                choices.setdefault(skew, {})[str(rate)] = plan_choice(
                    trained["s3t"]["run"], table, size, rate,
                    size["zipf"] if skew == "zipf" else 0.0, len(users),
                    f"{skew} {rate:g}/min", overheads.get((skew, "s3t"), 0.0))
    payload = dict(result_payload(seed, users, trained, cells, details, size),
                   plan_choice=choices, complete=True,
                   job_overhead_s={f"{k[0]}/{k[1]}": v for k, v in overheads.items()})
    if "zipf" in cells:
        longest = max(len(d["deletions"]) for d in details.values())
        payload["placement_sim"] = placement_prediction(size, len(users), longest)
    harness.write_result(NAME, args.quick, prov, payload)
    plot(payload, args.quick)
    return 0


def replan(args: Any, size: dict[str, Any], held_out: Any, n_users: int) -> int:
    """``--replan``: the recorded result's plan predictions and choices again, from its kept
    S3T runs (``--reuse-runs``) and the retrain logs of its kept stream copies
    (BENCH_KEEP_RUNS=1), with the current planner and each system's job start-up calibrated
    on its lowest-rate stream."""
    import glob
    import json
    import sys
    import tempfile

    if args.reuse_runs is None:
        raise SystemExit("--replan needs --reuse-runs FILE naming the sweep's S3T runs")
    path = harness.result_path(NAME, args.quick)
    recorded = json.loads(path.read_text())
    cells = recorded["cells"]
    systems = sorted({s for by in cells.values() for s in by if s.startswith("s3t")})
    runs = {s: r["run"] for s, r in reused_runs(args.reuse_runs, systems).items()}
    overheads = {}
    for skew, by_system in cells.items():
        for system in systems:
            for rate in sorted(by_system.get(system, {}), key=float):
                copies = sorted(glob.glob(f"{tempfile.gettempdir()}/s3t-bench-sweep-{system}-"
                                          f"{skew}-{float(rate):g}-*/run/run"))
                jobs = recorded["details"][f"{skew}/{float(rate):g}/{system}"]["jobs"]
                seconds = job_stage_seconds(Path(copies[-1])) if copies else {}
                for job in jobs:
                    job["stage_seconds"] = seconds.get(job.get("id", ""))
                start_up = overheads.setdefault((skew, system), job_overhead(jobs))
                by_system[system][rate]["plan"] = plan_prediction(
                    {"run": runs[system]}, system, size, skew, float(rate), n_users, start_up)
    table = depth_table_of(runs["s3t"], set().union(*cores()), held_out)
    recorded["plan_choice"] = {
        skew: {rate: plan_choice(runs["s3t"], table, size, float(rate),
                                 size["zipf"] if skew == "zipf" else 0.0, n_users,
                                 f"{skew} {float(rate):g}/min", overheads[(skew, "s3t")])
               for rate in by_system.get("s3t", {})}
        for skew, by_system in cells.items()}
    recorded["job_overhead_s"] = {f"{k[0]}/{k[1]}": v for k, v in overheads.items()}
    recorded["plan_choice_replanned"] = {"command": " ".join(sys.argv),
                                         "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"# rewrote the plan predictions and choices of {harness.shown(path)}")
    return 0


def result_payload(seed: int, users: list[str], trained: dict[str, Any], cells: dict[str, Any],
                   details: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    rates_by = {skew: {system: sustainable(rows, size["rates_per_min"])
                       for system, rows in by_system.items()}
                for skew, by_system in cells.items()}
    payload = {"seed": seed, "users": len(users),
               "trained": {k: {x: v[x] for x in ("train_seconds", "stages")}
                           for k, v in trained.items()},
               "cells": cells, "sustainable_rate_per_min": rates_by, "details": details}
    return payload


if __name__ == "__main__":
    raise SystemExit(main())
