"""Continuous unlearning: one Poisson deletion stream through `s3t serve --retrain eager`,
served by S3T and by SISA, with predictions and served accuracy measured throughout.

Both systems serve the same WordNet-noun training set with the same number of shards and
slices (S3T: B orderings per shard; SISA: one), under the same retrain policy and delay,
with one trainer process each (the server's background retrainer, niced), run one after the
other, never at the same time. The deletion stream is drawn once (Poisson arrivals at
``rate_per_min``, a uniformly random not-yet-deleted training sample each) and replayed
against both, each request at the same offset from its server's start. Throughout, a
client sends single-text predictions (counting failures), and every ``eval_every_s`` the
benchmark sends the fixed test subset through ``/v1/predict`` (the accuracy of what is
served; a 503 because no shard serves counts as accuracy 0) and reads ``/v1/status``.

Reported per system: time-averaged served accuracy, the fraction of time at least one shard
served and at full capacity, retrain jobs, deletion latency p50/p99, errors, acknowledged
deletions lost, and the audit after the run.

    python -m bench stream            # the recorded run (about 25 min on 2 cores)
    python -m bench stream --quick    # a small size (a few minutes)
    python -m bench stream --smoke    # runs end to end in seconds (measures nothing)
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import HOST, ClientError, Server, audit, http_client, lost_deletions, s3t_cmd

NAME = "stream"
QUICK = {"train": 400, "test": 100, "shards": 5, "slices": 3, "budget": 3, "epochs": 1,
         "max_seq_len": 32, "duration_s": 150.0, "rate_per_min": 6.0, "retrain_delay_s": 2.0,
         "eval_every_s": 5.0, "predict_gap_s": 0.2}
FULL = dict(QUICK, train=1200, test=300, duration_s=420.0, rate_per_min=4.0)
#: Checks that the stream runs end to end (a few deletions, a retrain may not finish).
SMOKE = dict(QUICK, train=40, test=16, shards=2, slices=2, budget=2, max_seq_len=16,
             duration_s=8.0, quiet_s=5.0, rate_per_min=90.0, retrain_delay_s=1.0,
             eval_every_s=4.0, predict_gap_s=1.0)
SYSTEMS = ("s3t", "sisa")
REQUEST_TIMEOUT_S = 60.0
MAX_PREDICTS = 100_000  # the count bound of the prediction loop (time is the other)


def train_run(system: str, size: dict[str, Any], seed: int, train: Any) -> tuple[Path, float]:
    from s3t.config import S3TConfig
    from s3t.engine import S3T

    grid: dict[str, Any] = {"budget": size["budget"]} if system == "s3t" else {
        "method": "sisa", "strategy": "sisa", "budget": 1}
    config = S3TConfig(model=harness.backbone(),
                       shards=size["shards"], slices=size["slices"], epochs=size["epochs"],
                       max_seq_len=size["max_seq_len"], seed=seed, **grid)
    run = harness.tmp_run_dir(f"stream-{system}")
    with harness.stopwatch() as t:
        S3T(config, run_dir=run).fit(train, progress=False).close()
    print(f"{system}: trained m={size['shards']} L={size['slices']} on {len(train)} samples in "
          f"{t['s']:.1f} s", flush=True)
    return run, t["s"]


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
    out: dict[str, Any] = {"deletions": [], "samples": [], "predicts": {"ok": 0, "unavailable": 0,
                                                                       "errors": 0}}
    async with http_client(server.base_url, token, 8) as http:

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
                    row.update(status=0, error=type(err).__name__,
                               ms=(time.perf_counter() - began) * 1000)
                out["deletions"].append(row)

        async def predictions() -> None:
            for i in range(MAX_PREDICTS):
                if time.monotonic() >= deadline:
                    return
                try:
                    response = await http.post("/v1/predict",
                                               json={"inputs": [texts[i % len(texts)]]})
                    kind = {200: "ok", 503: "unavailable"}.get(response.status_code, "errors")
                except ClientError:
                    kind = "errors"
                out["predicts"][kind] += 1
                await asyncio.sleep(size["predict_gap_s"])

        async def measure() -> None:
            while time.monotonic() < deadline:
                t = round(time.monotonic() - start, 3)
                status = (await http.get("/v1/status")).json()
                accuracy: float | None
                correct, served = 0, True
                for lo in range(0, len(texts), 128):
                    response = await http.post("/v1/predict", json={"inputs": texts[lo:lo + 128]})
                    if response.status_code != 200:
                        served = False
                        break
                    correct += sum(p == y for p, y in zip(response.json()["labels"],
                                                          labels[lo:lo + 128], strict=True))
                accuracy = correct / len(texts) if served else 0.0
                job = (status.get("retrain") or {}).get("job") or {}
                full = [r is not None and r["depth"] == status["slices"]
                        for r in status["routes"].values()]
                out["samples"].append({
                    "t": t, "accuracy": accuracy, "served": served,
                    "capacity": status["capacity"], "live_shards": status["live_shards"],
                    "shards_full_fraction": sum(full) / max(1, len(full)),
                    "deletion_requests": status["deletion_requests"],
                    "training": status["training"], "job_state": job.get("state")})
                await asyncio.sleep(max(0.0, t + size["eval_every_s"]
                                        - (time.monotonic() - start)))

        await asyncio.gather(deletions(), predictions(), measure())
        out["jobs"] = (await http.get("/v1/jobs")).json()["jobs"]
    return out


def time_average(samples: list[dict[str, Any]], key: str, until: float) -> float:
    """Step-wise time average of ``key`` (each sample holds until the next)."""
    total = 0.0
    for a, b in zip(samples, [*samples[1:], {"t": until}], strict=True):
        total += float(a[key]) * (b["t"] - a["t"])
    span = until - samples[0]["t"]
    return total / span if span > 0 else float("nan")


def summarize(result: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    samples = result["samples"]
    until = size["duration_s"]
    for s in samples:
        s["any_shard"] = 1.0 if s["live_shards"] > 0 else 0.0
        s["full"] = 1.0 if s["capacity"] >= 1.0 else 0.0
    deletions = result["deletions"]
    ok = [d["ms"] for d in deletions if d["status"] == 200]
    jobs = result["jobs"]
    return {
        "time_avg_accuracy": time_average(samples, "accuracy", until),
        "time_with_a_serving_shard": time_average(samples, "any_shard", until),
        "time_at_full_capacity": time_average(samples, "full", until),
        "time_avg_capacity": time_average(samples, "capacity", until),
        "min_live_shards": min(s["live_shards"] for s in samples),
        "measurements": len(samples),
        "deletions_acknowledged": len(ok),
        "deletion_errors": sum(d["status"] != 200 for d in deletions),
        "deletion_ms": harness.latency_summary(ok) if ok else {},
        "retrain_jobs": {state: sum(j["state"] == state for j in jobs)
                         for state in ("succeeded", "failed", "cancelled", "running")},
        "stages_retrained": sum(j["stages_done"] for j in jobs),
        "stages_discarded": sum(j["stages_discarded"] for j in jobs),
        "predicts": result["predicts"],
    }


def run_system(system: str, size: dict[str, Any], seed: int, train: Any, texts: list[str],
               labels: list[str], stream: list[tuple]) -> dict[str, Any]:
    run, train_s = train_run(system, size, seed, train)
    token = secrets.token_urlsafe(24)
    token_file = run.parent / "token.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    server = Server(run, token_file, 32, 5.0, run.parent / "server.log",
                    extra_args=["--retrain", "eager", "--retrain-delay", size["retrain_delay_s"]])
    server.start()
    print(f"{system}: serving on {server.base_url} (started in {server.startup_s:.1f} s); "
          f"{len(stream)} deletions over {size['duration_s']:.0f} s", flush=True)
    try:
        result = asyncio.run(run_stream(server, token, stream, texts, labels, size))
    finally:
        returncode = server.stop()
    summary = summarize(result, size)
    summary.update(train_seconds=train_s, server_exit=returncode,
                   lost_deletions=lost_deletions(run, result["deletions"]), audit=audit(run))
    print(f"{system}: time-averaged accuracy {summary['time_avg_accuracy']:.3f}, serving "
          f"{summary['time_with_a_serving_shard']:.0%} of the time, full capacity "
          f"{summary['time_at_full_capacity']:.0%}, retrains {summary['retrain_jobs']}, "
          f"deletion p50 {summary['deletion_ms'].get('p50', float('nan')):.1f} ms, lost "
          f"{len(summary['lost_deletions'])}, audit {'ok' if summary['audit']['ok'] else 'FAILED'}",
          flush=True)
    return {"summary": summary, "samples": result["samples"], "deletions": result["deletions"],
            "jobs": result["jobs"]}


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    s3t, sisa = results["s3t"]["summary"], results["sisa"]["summary"]
    checks = [
        {"target": "S3T's time-averaged served accuracy above SISA's",
         "measured": f"{s3t['time_avg_accuracy']:.3f} vs {sisa['time_avg_accuracy']:.3f}",
         "met": s3t["time_avg_accuracy"] > sisa["time_avg_accuracy"]},
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
        top.step(t, [s["accuracy"] for s in samples], style, where="post", label=system.upper())
        bottom.step(t, [s["capacity"] for s in samples], style, where="post",
                    label=f"{system.upper()} capacity")
        bottom.step(t, [s["live_shards"] / max(1, results[system]["shards"]) for s in samples],
                    style, where="post", alpha=0.5, label=f"{system.upper()} live shards / m")
    for offset, _ in results["s3t"]["stream"]:
        top.axvline(offset, color="grey", alpha=0.15, lw=0.8)
        bottom.axvline(offset, color="grey", alpha=0.15, lw=0.8)
    top.set_ylabel("served test accuracy")
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
    seed = seeds[0]
    prov = harness.provenance(NAME, args.quick, seeds, size)
    prov["server_command"] = " ".join(s3t_cmd(
        "serve", "RUN", "--host", HOST, "--port", "PORT", "--token-file", "TOKEN_FILE",
        "--retrain", "eager", "--retrain-delay", size["retrain_delay_s"]))
    harness.print_header(prov)
    train, test = harness.wordnet_split(size["train"], size["test"], seed)
    texts = list(test.texts)
    labels = [test.label_names[y] for y in test.labels]
    stream = deletion_stream(list(train.ids), size, random.Random(seed))
    results: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        results[system] = run_system(system, size, seed, train, texts, labels, stream)
        results[system].update(stream=stream, shards=size["shards"])
    checks = targets(results)
    for c in checks:
        print(f"{'MET' if c['met'] else 'NOT MET'}: {c['target']}: {c['measured']}")
    harness.write_result(NAME, args.quick, prov, {"seed": seed, "stream": stream,
                                                 "results": results, "targets": checks})
    plot(results, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
