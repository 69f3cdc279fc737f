"""Continuous unlearning: one Poisson deletion stream through `s3t serve --retrain eager`,
served by S3T and by SISA at the same time, with predictions and served accuracy measured
throughout.

Both systems serve the same WordNet-noun training set with the same number of shards and
slices (S3T: B orderings per shard; SISA: one), under the same retrain policy and delay.
Fair by construction: the two run at the same time, each server (and the background
retrainer it starts, which inherits its affinity) pinned to its own CPU core with one torch
thread (the run card's numeric environment), so load on the machine falls on both alike; both
are trained the same way (pinned, at the same time). The deletion stream is drawn once
(Poisson arrivals at ``rate_per_min``, a uniformly random not-yet-deleted training sample
each) and sent to both, each request at the same offset. Throughout, a client sends
single-text predictions, cycling through a fixed test subset in the same order for both, and
every ``eval_every_s`` reads ``/v1/status`` (capacity, live shards, the retrain job). The
served accuracy is that of this traffic: each prediction's correctness holds until the next
one (a 503 because no shard serves, or a failed request, counts as wrong), time-averaged.
Measuring on the traffic a deployment serves anyway costs nothing extra; scoring the whole
subset every few seconds through the server, as earlier runs did, took S3T's pinned core
from its retrainer (S3T serving every ordering runs B times SISA's adapted layers per text:
at 400 test glosses a score took 10-35 s of S3T's core, and S3T's retrains starved).

Reported per system: time-averaged served accuracy, the fraction of time at least one shard
served and at full capacity, retrain jobs, stages trained and discarded, deletion latency
p50/p99, errors, acknowledged deletions lost, and the audit after the run.

    python -m bench stream            # the recorded run (about 25 min on 2 cores)
    python -m bench stream --quick    # a small size (a few minutes)
    python -m bench stream --smoke    # runs end to end in seconds (measures nothing)
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import HOST, ClientError, Server, audit, http_client, lost_deletions, s3t_cmd

NAME = "stream"
QUICK = {"train": 400, "test": 200, "eval": 300, "shards": 5, "slices": 3, "budget": 3, "epochs": 1,
         "max_seq_len": 32, "duration_s": 150.0, "rate_per_min": 6.0, "retrain_delay_s": 2.0,
         "eval_every_s": 2.0, "predict_gap_s": 0.2}
#: 400 test glosses: one binomial standard error is 2.4 points at accuracy 0.35 (100: 4.8).
FULL = dict(QUICK, train=1200, test=400, duration_s=420.0, rate_per_min=4.0)
#: Checks that the stream runs end to end (a few deletions, a retrain may not finish).
SMOKE = dict(QUICK, train=40, test=16, eval=8, shards=2, slices=2, budget=2, max_seq_len=16,
             duration_s=8.0, quiet_s=5.0, rate_per_min=90.0, retrain_delay_s=1.0,
             eval_every_s=4.0, predict_gap_s=1.0)
SYSTEMS = ("s3t", "sisa")
REQUEST_TIMEOUT_S = 60.0
#: A request unanswered this long counts as nothing served (one pinned core serves and trains).
EVAL_TIMEOUT_S = 180.0
CHUNK = 128  # test texts per scoring request
MAX_PREDICTS = 100_000  # the count bound of the prediction loop (time is the other)


def cores() -> tuple[set[int], set[int]]:
    """One core for each of two systems (the same set twice on a one-core machine)."""
    mine = sorted(os.sched_getaffinity(0))
    return ({mine[0]}, {mine[1]}) if len(mine) >= 2 else (set(mine), set(mine))


def config_for(overrides: dict[str, Any], common: dict[str, Any]) -> Any:
    """``S3TConfig(**common, **overrides)``; ``method`` picks a baseline; a budget above the
    number of orderings L allows is cut to L (the smoke size has L=2)."""
    from s3t.config import S3TConfig

    kw = {k: v for k, v in overrides.items() if k != "method"}
    if "budget" in kw:
        kw["budget"] = min(kw["budget"], common["slices"])
    return (S3TConfig.baseline(overrides["method"], **common, **kw) if "method" in overrides
            else S3TConfig(**common, **kw))


def _train(overrides: dict[str, Any], common: dict[str, Any], data: Any, run_dir: str,
           cpus: set[int]) -> dict[str, Any]:
    """Train one system pinned to ``cpus`` (in a worker process): its time and stages."""
    os.sched_setaffinity(0, cpus)
    from s3t.engine import S3T

    started = time.perf_counter()
    est = S3T(config_for(overrides, common), run_dir=Path(run_dir)).fit(data, progress=False)
    seconds = time.perf_counter() - started
    stages = est.status()["live_stages"]
    est.close()
    return {"train_seconds": seconds, "stages": stages}


def train_pinned(systems: dict[str, dict[str, Any]], common: dict[str, Any],
                 data_for: Callable[[str], Any]) -> dict[str, dict[str, Any]]:
    """Train every system once, two at a time, each worker process on its own core; per
    system its run directory, training seconds and stage count."""
    core_a, core_b = cores()
    common = dict(common, model=harness.backbone())
    out: dict[str, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        futures = []
        for i, (system, overrides) in enumerate(systems.items()):
            run = harness.tmp_run_dir(f"{NAME}-{system}")
            futures.append((system, run, pool.submit(_train, overrides, common, data_for(system),
                                                     str(run), core_a if i % 2 == 0 else core_b)))
        for system, run, future in futures:
            out[system] = dict(future.result(), run=run)
            print(f"{system}: trained {out[system]['stages']} stages in "
                  f"{out[system]['train_seconds']:.1f} s", flush=True)
    return out


def serve_together(pairs: list[tuple[str, Path, set[int]]], stream: list[tuple],
                   texts: list[str], labels: list[str], size: dict[str, Any]
                   ) -> dict[str, dict[str, Any]]:
    """Serve ``stream`` from every (system, run, cores) at once, each server pinned, with
    eager background retraining; per system what :func:`run_stream` measured and the
    server's exit status (servers stopped: the run may be read)."""
    servers: dict[str, tuple[Server, str]] = {}
    warm: dict[str, float] = {}
    try:
        for system, run, cpus in pairs:
            token = secrets.token_urlsafe(24)
            token_file = run.parent / f"token-{system}.txt"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
            servers[system] = Server(run, token_file, 32, 5.0, run.parent / f"server-{system}.log",
                                     extra_args=["--retrain", "eager",
                                                 "--retrain-delay", size["retrain_delay_s"]],
                                     cpus=cpus), token
        with ThreadPoolExecutor(len(servers)) as starting:  # each loads on its own core
            list(starting.map(lambda pair: pair[0].start(), servers.values()))
        for system, (server, _) in servers.items():
            print(f"{system}: serving on {server.base_url} (cores {sorted(server.cpus or [])}, "
                  f"started in {server.startup_s:.1f} s)", flush=True)

        for system, (server, token) in servers.items():  # first model calls load stages
            warm[system] = warm_accuracy(server, token, texts, labels)

        async def together() -> list[dict[str, Any]]:
            return await asyncio.gather(*(run_stream(s, tok, stream, texts, labels, size)
                                          for s, tok in servers.values()))

        results = dict(zip(servers, asyncio.run(together()), strict=True))
    finally:
        codes = {system: s.stop() for system, (s, _) in servers.items()}
    return {system: dict(results[system], server_exit=codes[system],
                         undisturbed_accuracy=warm[system]) for system in results}


def server_command(size: dict[str, Any]) -> str:
    """How each server of :func:`serve_together` runs (for the provenance)."""
    return " ".join(s3t_cmd(
        "serve", "RUN", "--host", HOST, "--port", "PORT", "--token-file", "TOKEN_FILE",
        "--retrain", "eager", "--retrain-delay", size["retrain_delay_s"]))


def warm_accuracy(server: Server, token: str, texts: list[str], labels: list[str]) -> float:
    """The served accuracy before any deletion, by one unhurried request (it also makes the
    server load its stages before the stream's clock starts)."""
    import httpx

    correct = 0
    for lo in range(0, len(texts), CHUNK):  # the server takes at most 256 inputs a request
        response = httpx.post(server.base_url + "/v1/predict",
                              json={"inputs": texts[lo:lo + CHUNK]},
                              headers={"Authorization": f"Bearer {token}"}, timeout=900.0)
        response.raise_for_status()
        correct += sum(p == y for p, y in zip(response.json()["labels"], labels[lo:lo + CHUNK],
                                              strict=True))
    return correct / len(texts)


def traffic_order(test: Any, seed: int) -> tuple[list[str], list[str]]:
    """The test subset's texts and label names in a seeded random order, which the prediction
    traffic cycles through: in the split's order (grouped by category) a window of the traffic
    is not a sample of the subset, and two systems answering at different speeds would be at
    different places of the cycle (measured: a 30 s window's accuracy swung 0.1-0.8)."""
    order = list(range(len(test.texts)))
    random.Random(f"traffic-{seed}").shuffle(order)
    return ([test.texts[i] for i in order], [test.label_names[test.labels[i]] for i in order])


def held_out_glosses(exclude: set[str], n: int, seed: int) -> Any:
    """``n`` WordNet glosses outside ``exclude`` (the training and test glosses), seeded and
    class-proportional: what ``s3t plan``'s DepthTable scores a run's stages on."""
    from s3t.data.subset import limit_indices
    from s3t.data.wordnet import load_wordnet

    data = load_wordnet()
    rest = data.subset([i for i, sid in enumerate(data.ids) if sid not in exclude])
    return rest.subset(limit_indices(rest, n, seed))


def depth_table_of(run: Path, cpus: set[int], held_out: Any) -> Any:
    """The run's stages scored on the held-out glosses (``s3t plan``'s DepthTable; the runs
    carry no validation split, whose scoring would add to every stage's cost), computed
    pinned to ``cpus``, one torch thread, before any stream starts."""
    import torch

    from s3t.engine import S3T

    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))
    try:
        est = S3T.load(run, verify=False, repair=False)
        try:
            index = {name: i for i, name in enumerate(est.label_names)}
            return est.depth_table(rows=[
                (sid, index[held_out.label_names[label]], text) for sid, label, text in
                zip(held_out.ids, held_out.labels, held_out.texts, strict=True)])
        finally:
            est.close()
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def plan_choice(run: Path, table: Any, size: dict[str, Any], rate_per_min: float, skew: float,
                users: int | None, what: str, job_overhead: float = 0.0) -> dict[str, Any]:
    """What ``s3t plan --run`` recommends for this stream (the run's stage timings; its
    stages scored by depth in ``table``; the stream's window, deletions stopping ``quiet_s``
    before its end; a retrain job's start-up of ``job_overhead`` seconds), and the accuracy
    it predicts for each plan it scores (m as run, L dividing the run's); printed with
    ``what``, the stream's name."""
    from s3t.cli.plan import run_timings
    from s3t.plan import advice

    samples, epochs, throughput, overhead, _ = run_timings(run)
    work = advice.Workload(samples=samples, rate_per_day=rate_per_min * 1440.0,
                           throughput=throughput, epochs=epochs, stage_overhead=overhead,
                           skew=skew, users=users, horizon_s=size["duration_s"],
                           job_overhead=job_overhead)
    report = advice.recommend(work, [size["shards"]], size["slices"], table=table,
                              arrivals_until=size["duration_s"] - size.get("quiet_s", 10.0))
    best = report["recommended"]
    out = {"recommended": [best["slices"], best["budget"]], "why": report["why"],
           "job_overhead_s": job_overhead,
           "predicted": {f"{r['slices']},{r['budget']}": r["accuracy"]
                         for r in report["candidates"] if r["accuracy"] is not None},
           "undisturbed": report["accuracy_basis"]["undisturbed"]}
    print(f"{what}: s3t plan recommends L={best['slices']}, B={best['budget']}; predicted "
          + ", ".join(f"(L,B)=({k}) {v:.3f}" for k, v in out["predicted"].items()), flush=True)
    return out


def deletion_stream(ids: list[str], size: dict[str, Any], rng: random.Random) -> list[tuple]:
    """(offset in seconds, sample id): Poisson arrivals, distinct uniform samples."""
    stream, t = [], 0.0
    pool = list(ids)
    rng.shuffle(pool)
    while pool:
        t += rng.expovariate(size["rate_per_min"] / 60.0)
        if t >= size["duration_s"] - size.get("quiet_s", 10.0):  # the retrains' time to finish
            break
        stream.append((round(t, 3), pool.pop()))
    return stream


async def run_stream(server: Server, token: str, stream: list[tuple], texts: list[str],
                     labels: list[str], size: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + size["duration_s"]
    out: dict[str, Any] = {"deletions": [], "samples": [], "traffic": [],
                           "predicts": {"ok": 0, "unavailable": 0, "errors": 0},
                           "predict_errors": {}}
    async with http_client(server.base_url, token, 8, EVAL_TIMEOUT_S) as http:

        async def deletions() -> None:
            for offset, item in stream:  # a sample id, or a request body (e.g. groups)
                await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
                began = time.perf_counter()
                row: dict[str, Any] = {"t": round(time.monotonic() - start, 3)}
                row.update({"body": item} if isinstance(item, dict) else {"sample_id": item})
                body = item if isinstance(item, dict) else {"sample_ids": [item]}
                try:
                    response = await http.post("/v1/deletions", json=body)
                    row.update(status=response.status_code,
                               ms=(time.perf_counter() - began) * 1000)
                    if response.status_code == 200:
                        body = response.json()
                        row.update(request_id=body["request_id"],
                                   erased=len(body["erased_stages"]),
                                   live_shards=body["live_shards"])
                except ClientError as err:
                    row.update(status=0, error=str(err) or type(err).__name__,
                               ms=(time.perf_counter() - began) * 1000)
                out["deletions"].append(row)

        async def predictions() -> None:
            for i in range(MAX_PREDICTS):
                if time.monotonic() >= deadline:
                    return
                t = round(time.monotonic() - start, 3)
                k = i % len(texts)  # the test subset in a fixed cycle, the same for both
                correct = 0
                try:
                    response = await http.post("/v1/predict", json={"inputs": [texts[k]]})
                    kind = {200: "ok", 503: "unavailable"}.get(response.status_code, "errors")
                    why = f"HTTP {response.status_code}"
                    if kind == "ok":
                        correct = int(response.json()["labels"][0] == labels[k])
                except ClientError as err:
                    kind, why = "errors", str(err) or type(err).__name__
                out["predicts"][kind] += 1
                out["traffic"].append({"t": t, "correct": correct, "served": kind == "ok"})
                if kind == "errors":  # what failed, for the next reader
                    out["predict_errors"][why] = out["predict_errors"].get(why, 0) + 1
                await asyncio.sleep(size["predict_gap_s"])

        async def measure() -> None:  # the served state, polled (cheap: no model call)
            last: list[dict[str, Any]] = []  # the latest status read
            while time.monotonic() < deadline:
                t = round(time.monotonic() - start, 3)
                timed_out = False
                try:
                    status = (await http.get("/v1/status")).json()
                except ClientError:  # no answer within EVAL_TIMEOUT_S
                    timed_out = True
                    if not last:  # nothing known yet: no sample
                        continue
                    status = last[-1]
                last[:] = [status]
                job = (status.get("retrain") or {}).get("job") or {}
                full = [r is not None and r["depth"] == status["slices"]
                        for r in status["routes"].values()]
                out["samples"].append({
                    "t": t, "timed_out": timed_out,
                    "capacity": status["capacity"], "live_shards": status["live_shards"],
                    "shards_full_fraction": sum(full) / max(1, len(full)),
                    "deletion_requests": status["deletion_requests"],
                    "training": status["training"], "job_state": job.get("state")})
                await asyncio.sleep(max(0.0, t + size["eval_every_s"]
                                        - (time.monotonic() - start)))

        await asyncio.gather(deletions(), predictions(), measure())
        for attempt in range(3):  # a keep-alive connection the server closed while idle
            try:
                out["jobs"] = (await http.get("/v1/jobs")).json()["jobs"]
                break
            except ClientError:
                if attempt == 2:
                    raise
    return out


def time_average(samples: list[dict[str, Any]], key: str, until: float) -> float:
    """Step-wise time average of ``key`` (each sample holds until the next)."""
    total = 0.0
    for a, b in zip(samples, [*samples[1:], {"t": until}], strict=True):
        total += float(a[key]) * (b["t"] - a["t"])
    span = until - samples[0]["t"]
    return total / span if span > 0 else float("nan")


WINDOW_S = 30.0  # the plot's moving window over the prediction traffic


def rolling_accuracy(traffic: list[dict[str, Any]], window: float) -> tuple[list, list]:
    """Accuracy of the predictions sent in the last ``window`` seconds, at each prediction."""
    times, values, lo, total = [], [], 0, 0
    for hi, row in enumerate(traffic):
        total += row["correct"]
        while traffic[lo]["t"] < row["t"] - window:
            total -= traffic[lo]["correct"]
            lo += 1
        times.append(row["t"])
        values.append(total / (hi - lo + 1))
    return times, values


def summarize(result: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    until = size["duration_s"]
    for s in samples:
        s["any_shard"] = 1.0 if s["live_shards"] > 0 else 0.0
        s["full"] = 1.0 if s["capacity"] >= 1.0 else 0.0
    deletions = result["deletions"]
    ok = [d["ms"] for d in deletions if d["status"] == 200]
    jobs = result["jobs"]
    traffic = result["traffic"]
    return {
        # each prediction holds until the next: the served accuracy, time-averaged
        "time_avg_accuracy": time_average(traffic, "correct", until) if traffic else 0.0,
        "predictions_scored": len(traffic),
        "time_with_a_serving_shard": time_average(samples, "any_shard", until),
        "time_at_full_capacity": time_average(samples, "full", until),
        "time_avg_capacity": time_average(samples, "capacity", until),
        "min_live_shards": min(s["live_shards"] for s in samples),
        "measurements": len(samples),
        "measurements_timed_out": sum(s.get("timed_out", False) for s in samples),
        "deletions_acknowledged": len(ok),
        "deletion_errors": sum(d["status"] != 200 for d in deletions),
        "deletion_ms": harness.latency_summary(ok) if ok else {},
        "retrain_jobs": {state: sum(j["state"] == state for j in jobs)
                         for state in ("succeeded", "failed", "cancelled", "running")},
        "stages_retrained": sum(j["stages_done"] for j in jobs),
        "stages_discarded": sum(j["stages_discarded"] for j in jobs),
        "predicts": result["predicts"],
        "predict_errors": result["predict_errors"],
    }


def report(system: str, summary: dict[str, Any]) -> None:
    print(f"{system}: time-averaged accuracy {summary['time_avg_accuracy']:.3f}, serving "
          f"{summary['time_with_a_serving_shard']:.0%} of the time, full capacity "
          f"{summary['time_at_full_capacity']:.0%}, retrains {summary['retrain_jobs']}, stages "
          f"{summary['stages_retrained']} trained / {summary['stages_discarded']} discarded, "
          f"deletion p50 {summary['deletion_ms'].get('p50', float('nan')):.1f} ms, lost "
          f"{len(summary['lost_deletions'])}, audit {'ok' if summary['audit']['ok'] else 'FAILED'}",
          flush=True)


def targets(results: dict[str, dict[str, Any]],
            every: list[dict[str, dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The stream's targets on the first seed's ``results``; with several seeds (``every``),
    the accuracy target on their mean."""
    s3t, sisa = results["s3t"]["summary"], results["sisa"]["summary"]
    every = every or [results]
    mean = {system: sum(r[system]["summary"]["time_avg_accuracy"] for r in every) / len(every)
            for system in ("s3t", "sisa")}
    checks = [
        {"target": "S3T's time-averaged served accuracy at least SISA's"
                   + (f" (mean of {len(every)} seeds)" if len(every) > 1 else ""),
         "measured": f"{mean['s3t']:.3f} vs {mean['sisa']:.3f}",
         "met": mean["s3t"] >= mean["sisa"]},
        {"target": "S3T never without a serving shard",
         "measured": f"min live shards {s3t['min_live_shards']} (SISA {sisa['min_live_shards']})",
         "met": s3t["min_live_shards"] > 0},
    ]
    for name, s in (("S3T", s3t), ("SISA", sisa)):
        errors = s["deletion_errors"] + s["predicts"]["errors"]
        checks.append({"target": f"{name}: zero errors, zero lost deletions, audit passes",
                       "measured": f"{errors} errors, {len(s['lost_deletions'])} lost, audit "
                                   f"{'ok' if s['audit']['ok'] else 'failed'}",
                       "met": errors == 0 and not s["lost_deletions"] and s["audit"]["ok"]})
    return checks


def plot(results: dict[str, dict[str, Any]], quick: bool) -> None:
    plt = harness.pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for system, style in zip(SYSTEMS, ("-", "--"), strict=True):
        samples = results[system]["samples"]
        t = [s["t"] for s in samples]
        times, rolling = rolling_accuracy(results[system]["traffic"], WINDOW_S)
        top.plot(times, rolling, style, label=system.upper())
        bottom.step(t, [s["capacity"] for s in samples], style, where="post",
                    label=f"{system.upper()} capacity")
        bottom.step(t, [s["live_shards"] / max(1, results[system]["shards"]) for s in samples],
                    style, where="post", alpha=0.5, label=f"{system.upper()} live shards / m")
    for offset, _ in results["s3t"]["stream"]:
        top.axvline(offset, color="grey", alpha=0.15, lw=0.8)
        bottom.axvline(offset, color="grey", alpha=0.15, lw=0.8)
    top.set_ylabel(f"served accuracy ({WINDOW_S:.0f} s window)")
    bottom.set_ylabel("fraction")
    bottom.set_xlabel("seconds since the server started (grey: deletion requests)")
    top.legend(loc="lower left")
    bottom.legend(loc="lower left", fontsize=8)
    top.set_title("One Poisson deletion stream, eager background retraining")
    fig.tight_layout()
    harness.save_plot(fig, NAME, quick)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    prov["server_command"] = server_command(size)
    prov["cores"] = [sorted(c) for c in cores()]
    harness.print_header(prov)
    runs = []
    for seed in seeds:
        runs.append(run_seed(seed, size))
        first = runs[0]
        checks = targets(first["results"], [r["results"] for r in runs])
        harness.write_result(NAME, args.quick, prov, {
            "seed": seeds[0], "stream": first["stream"], "results": first["results"],
            "plan_choice": first["plan_choice"],
            "targets": checks, "seeds": [seed_summary(s, r) for s, r in zip(seeds, runs, strict=False)],
            "complete": len(runs) == len(seeds)})
    for c in checks:
        print(f"{'MET' if c['met'] else 'NOT MET'}: {c['target']}: {c['measured']}")
    plot(runs[0]["results"], args.quick)
    return 0


def run_seed(seed: int, size: dict[str, Any]) -> dict[str, Any]:
    """One stream (data, deletions and traffic order all follow ``seed``), both systems
    trained and served side by side; per system what it measured."""
    train, test = harness.wordnet_split(size["train"], size["test"], seed)
    texts, labels = traffic_order(test, seed)
    stream = deletion_stream(list(train.ids), size, random.Random(seed))
    common = {k: size[k] for k in ("shards", "slices", "epochs", "max_seq_len")}
    trained = train_pinned({"s3t": {"budget": size["budget"]}, "sisa": {"method": "sisa"}},
                           dict(common, seed=seed), lambda system: train)
    held_out = held_out_glosses(set(train.ids) | set(test.ids), size["eval"], seed)
    table = depth_table_of(trained["s3t"]["run"], set().union(*cores()), held_out)  # idle cores
    choice = plan_choice(trained["s3t"]["run"], table, size, size["rate_per_min"], 0.0, None,
                         f"seed {seed}")
    print(f"seed {seed}: {len(stream)} deletions over {size['duration_s']:.0f} s", flush=True)
    pairs = [(system, trained[system]["run"], cpus)
             for system, cpus in zip(SYSTEMS, cores(), strict=True)]
    served = serve_together(pairs, stream, texts, labels, size)
    results: dict[str, dict[str, Any]] = {}
    for system, run, cpus in pairs:
        res = served[system]
        summary = summarize(res, size)
        summary.update(train_seconds=trained[system]["train_seconds"],
                       undisturbed_accuracy=res["undisturbed_accuracy"],
                       server_exit=res["server_exit"],
                       lost_deletions=lost_deletions(run, res["deletions"]), audit=audit(run))
        report(system, summary)
        results[system] = {"summary": summary, "samples": res["samples"],
                           "traffic": res["traffic"],
                           "deletions": res["deletions"], "jobs": res["jobs"], "stream": stream,
                           "shards": size["shards"], "cores": sorted(cpus)}
    return {"stream": stream, "results": results, "plan_choice": choice}


SEED_KEYS = ("time_avg_accuracy", "undisturbed_accuracy", "time_avg_capacity",
             "time_at_full_capacity", "stages_retrained", "stages_discarded", "min_live_shards")


def seed_summary(seed: int, run: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one seed's stream, per system, and the plan's choice."""
    return {"seed": seed, "plan_choice": run["plan_choice"],
            **{system: {k: r["summary"][k] for k in SEED_KEYS}
               for system, r in run["results"].items()}}


if __name__ == "__main__":
    raise SystemExit(main())
