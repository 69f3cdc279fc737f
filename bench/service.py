"""Benchmark 11: the HTTP service (`s3t serve`) under concurrent load.

Why: `s3t serve` batches concurrent predictions so that the frozen trunk runs once per batch,
and answers deletions while it serves. Against the real server, started as a subprocess
(`python -m s3t.cli serve RUN --port P --token-file F --max-batch N`) on a free 127.0.0.1
port, an asyncio load generator in this process (``LoopbackClient``: keep-alive HTTP/1.1 over
asyncio streams, much cheaper per request than a general client) measures

* predict throughput (requests/s) and latency p50/p99 with 1, 8 and 32 concurrent clients,
  one text per request, each level for a fixed duration after a short discarded warm-up,
  with dynamic batching (``--max-batch 32``) and without (``--max-batch 1``): the server is
  restarted between the two settings and the setting order alternates between repetitions;
  the issue's ratio is throughput(32 clients, batching) / throughput(1 client), per
  repetition, against the faster of the two single-client settings (so the ratio cannot
  come from the batcher's wait slowing one client down);
* deletion latency over HTTP (client-side, request to certificate) while 8 clients predict:
  a separate task sends single-sample deletions of random retained ids one at a time (with
  a random 0-20 ms pause between them). Random deletions leave no shard live after about
  m L H_{mB} requests (~50 here), after which every prediction is a 503 by design, so the
  deletions run in rounds: each round serves a fresh copy of the trained run and ends once a
  certificate reports at most one live shard (a single-sample deletion touches one shard,
  so predictions always have a live shard to serve);
* every response's status (5xx must be 0), acknowledged deletions missing from the ledger
  afterwards (read with sqlite3; must be 0) and `s3t audit RUN` on every run served after
  its server stopped.

The load generator shares the machine with the server (and both with anything else running
on it): on few cores the client's own CPU use lowers what the server can reach.

    python -m bench service [--quick] [--seeds 0] [--server-args "--workers 1"]

The server runs with its defaults (one model call per core at once, one torch thread:
``s3t serve --workers/--torch-threads``) unless ``--server-args`` says otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import random
import secrets
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import (
    HOST,
    REQUEST_TIMEOUT_S,
    ClientError,
    Server,
    audit,
    http_client,
    lost_deletions,
    s3t_cmd,
)

NAME = "service"
QUICK = {"train": 300, "test": 100, "shards": 5, "slices": 3, "epochs": 1, "max_seq_len": 32,
         "clients": [1, 8, 32], "duration_s": 3.0, "warmup_s": 1.0, "reps": 2, "max_batch": 32,
         "max_wait_ms": 5.0, "deletions": 20, "delete_clients": 8, "delete_gap_ms": [0, 20]}
SMOKE = dict(QUICK, train=40, test=16, shards=2, slices=2, max_seq_len=16, clients=[1, 2],
             duration_s=0.5, warmup_s=0.2, reps=1, deletions=3, delete_clients=2)
FULL = dict(QUICK, train=1500, test=300, duration_s=15.0, warmup_s=3.0, reps=3, deletions=100)
MAX_REQUESTS_PER_PHASE = 200_000  # the count bound of every load phase (time is the other)
MAX_ROUND_S = 900.0           # one deletion round, predict load included


async def predict_client(http: Any, texts: list[str], first: int, step: int, deadline: float,
                         stop: asyncio.Event, out: list[tuple[float, int, str | None]]) -> None:
    """One client: a single-text predict request after another, until the deadline, the stop
    event or the phase's request cap; records (latency ms, status, error kind)."""
    i = first
    while (time.perf_counter() < deadline and not stop.is_set()
           and len(out) < MAX_REQUESTS_PER_PHASE):
        text = texts[i % len(texts)]
        i += step
        start = time.perf_counter()
        kind = None
        try:
            response = await http.post("/v1/predict", json={"inputs": [text]})
            status = response.status_code
            if status == 200:
                if len(response.json()["labels"]) != 1:
                    kind = "wrong_number_of_labels"
            else:
                kind = response.json().get("error", "?")
        except ClientError as err:
            status, kind = 0, str(err)
        out.append(((time.perf_counter() - start) * 1000, status, kind))


async def predict_load(http: Any, texts: list[str], clients: int, seconds: float,
                       stop: asyncio.Event | None = None) -> dict[str, Any]:
    """``clients`` concurrent clients for ``seconds`` (or until ``stop``): counts, latency."""
    stop = stop or asyncio.Event()
    records: list[tuple[float, int, str | None]] = []
    start = time.perf_counter()
    deadline = start + seconds
    tasks = [predict_client(http, texts, k, clients, deadline, stop, records)
             for k in range(clients)]
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + REQUEST_TIMEOUT_S + 30)
    elapsed = time.perf_counter() - start
    return summarize_records(records, clients, elapsed)


def summarize_records(records: list[tuple[float, int, str | None]], clients: int,
                      elapsed: float) -> dict[str, Any]:
    ok = [ms for ms, status, kind in records if status == 200 and kind is None]
    statuses = collections.Counter(str(status) for _, status, _ in records)
    kinds = collections.Counter(f"{status} {kind}" for _, status, kind in records if kind)
    return {"clients": clients, "elapsed_s": elapsed, "requests": len(records), "ok": len(ok),
            "throughput_rps": len(ok) / elapsed if elapsed > 0 else 0.0,
            "latency_ms": harness.latency_summary(ok), "status_counts": dict(statuses),
            "errors": dict(kinds), "n_5xx": sum(500 <= s < 600 for _, s, _ in records),
            "failed": len(records) - len(ok)}


# --------------------------------------------------------------------------- measurements


def train_run(size: dict[str, Any], seed: int) -> tuple[Path, list[str], list[str]]:
    """The run every server serves (trained once, in this process); its ids; test texts."""
    from s3t.config import S3TConfig
    from s3t.engine import S3T

    train, test = harness.wordnet_split(size["train"], size["test"], seed)
    run = harness.tmp_run_dir("service")
    config = S3TConfig(model=harness.backbone(),
                       shards=size["shards"], slices=size["slices"], epochs=size["epochs"],
                       max_seq_len=size["max_seq_len"], seed=seed,
                       # one route per shard, as section 11 was measured: the batching ratio is
                       # the point here; serving every ordering costs ~2.2x (section 18)
                       serve_orderings="best")
    with harness.stopwatch() as t:
        est = S3T(config, run_dir=run).fit(train, progress=False)
    est.close()
    print(f"trained m={size['shards']} L={size['slices']} on {len(train)} samples in "
          f"{t['s']:.1f} s", flush=True)
    return run, list(train.ids), list(test.texts)


def throughput_reps(run: Path, token: str, token_file: Path, texts: list[str],
                    size: dict[str, Any], log_dir: Path) -> list[dict[str, Any]]:
    """Per repetition: each batching setting on a freshly started server, each client count."""
    settings = {"batching": size["max_batch"], "no_batching": 1}
    reps = []
    for rep in range(size["reps"]):
        order = list(settings) if rep % 2 == 0 else list(reversed(settings))
        row: dict[str, Any] = {"rep": rep, "order": order, "settings": {}}
        for name in order:
            server = Server(run, token_file, settings[name], size["max_wait_ms"],
                            log_dir / f"rep{rep}-{name}.log", size["server_args"]).start()
            try:
                phases = asyncio.run(client_levels(server, token, texts, size))
                after = server.metrics()
            finally:
                rc = server.stop()
            row["settings"][name] = {
                "max_batch": settings[name], "startup_s": server.startup_s, "exit_code": rc,
                "clean_shutdown": server.clean_shutdown,
                "command": server.args, "phases": phases, "server_5xx": after["server_5xx"]}
            print(f"rep {rep} {name} (--max-batch {settings[name]}; server ready in "
                  f"{server.startup_s:.1f} s): " + "; ".join(
                      f"{p['clients']} clients {p['throughput_rps']:.1f} req/s p50 "
                      f"{p['latency_ms'].get('p50', float('nan')):.1f} ms p99 "
                      f"{p['latency_ms'].get('p99', float('nan')):.1f} ms batch "
                      f"{p['mean_batch_inputs'] or 0:.1f}"
                      + (f" ({p['failed']} failed)" if p["failed"] else "") for p in phases),
                  flush=True)
        reps.append(row)
    return reps


async def client_levels(server: Server, token: str, texts: list[str],
                        size: dict[str, Any]) -> list[dict[str, Any]]:
    """Each client count in turn: a discarded warm-up, then the measured window. The server's
    batch-size histogram is read around the window (no load runs while it is read)."""
    phases = []
    for clients in size["clients"]:
        async with http_client(server.base_url, token, clients) as http:
            warm = await predict_load(http, texts, clients, size["warmup_s"])
            before = server.metrics()
            phase = await predict_load(http, texts, clients, size["duration_s"])
            after = server.metrics()
        calls = after["batch_calls"] - before["batch_calls"]
        phase["mean_batch_inputs"] = ((after["batch_inputs_sum"] - before["batch_inputs_sum"])
                                      / calls if calls else None)
        phase["load_average_after"] = harness.load_average()
        phase["warmup"] = {k: warm[k] for k in ("requests", "ok", "status_counts", "n_5xx")}
        phases.append(phase)
    return phases


async def deletion_round(base_url: str, token: str, texts: list[str], ids: list[str],
                         quota: int, size: dict[str, Any],
                         rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sequential single-sample deletions while ``delete_clients`` clients predict."""
    stop = asyncio.Event()
    clients = size["delete_clients"]
    deletions: list[dict[str, Any]] = []
    async with http_client(base_url, token, clients) as http, \
            http_client(base_url, token, 1) as deleter:
        load = asyncio.create_task(predict_load(http, texts, clients, MAX_ROUND_S, stop))
        await asyncio.sleep(size["warmup_s"])
        try:
            for sid in ids:
                if len(deletions) >= quota or load.done():
                    break
                await asyncio.sleep(rng.uniform(*size["delete_gap_ms"]) / 1000)
                deletions.append(await delete_one(deleter, sid))
                if deletions[-1].get("live_shards", 2) <= 1:
                    break  # the next one could leave no shard to serve predictions
        finally:
            stop.set()
            predictions = await load
    return deletions, predictions


async def delete_one(http: Any, sid: str) -> dict[str, Any]:
    start = time.perf_counter()
    row: dict[str, Any] = {"sample_id": sid}
    try:
        response = await http.post("/v1/deletions", json={"sample_ids": [sid]})
        row["ms"] = (time.perf_counter() - start) * 1000
        row["status"] = response.status_code
        body = response.json()
        if response.status_code == 200:
            row.update(request_id=body["request_id"], erased=len(body["erased_stages"]),
                       live_shards=body["live_shards"], core_ms=body.get("duration_ms"))
        else:
            row["error"] = body.get("error", "?")
    except ClientError as err:
        row.update(ms=(time.perf_counter() - start) * 1000, status=0, error=str(err))
    return row


def deletion_rounds(pristine: Path, ids: list[str], token: str, token_file: Path,
                    texts: list[str], size: dict[str, Any], rng: random.Random,
                    log_dir: Path) -> list[dict[str, Any]]:
    rounds: list[dict[str, Any]] = []
    done = 0
    while done < size["deletions"] and len(rounds) < size["deletions"]:
        run = pristine.parent / f"deletions{len(rounds)}"
        shutil.copytree(pristine, run)
        server = Server(run, token_file, size["max_batch"], size["max_wait_ms"],
                        log_dir / f"deletions{len(rounds)}.log", size["server_args"]).start()
        try:
            deletions, predictions = asyncio.run(deletion_round(
                server.base_url, token, texts, rng.sample(ids, len(ids)), size["deletions"] - done,
                size, rng))
            server_5xx = server.metrics()["server_5xx"]
        finally:
            rc = server.stop()
        row = {"round": len(rounds), "startup_s": server.startup_s, "exit_code": rc,
               "clean_shutdown": server.clean_shutdown,
               "load_average_after": harness.load_average(),
               "deletions": deletions, "predictions": predictions, "server_5xx": server_5xx,
               "lost": lost_deletions(run, deletions), "audit": audit(run)}
        rounds.append(row)
        done += len(deletions)
        ms = [d["ms"] for d in deletions if d["status"] == 200]
        print(f"deletion round {row['round']}: {len(deletions)} deletions, p50 "
              f"{harness.percentile(ms, 50) if ms else float('nan'):.1f} ms, max "
              f"{max(ms, default=float('nan')):.1f} ms, live shards after "
              f"{deletions[-1].get('live_shards') if deletions else '-'}; predictions "
              f"{predictions['throughput_rps']:.1f} req/s ({predictions['failed']} failed); lost "
              f"{len(row['lost'])}; audit {'passed' if row['audit']['ok'] else 'FAILED'}",
              flush=True)
        shutil.rmtree(run)
        if not deletions:
            break  # the round could not delete anything: do not loop
    return rounds


# --------------------------------------------------------------------------- summary


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "values": values, "min": min(values),
            "median": statistics.median(values), "max": max(values)}


def summarize(reps: list[dict[str, Any]], rounds: list[dict[str, Any]],
              audits: list[dict[str, Any]], size: dict[str, Any]) -> dict[str, Any]:
    top, bottom = max(size["clients"]), min(size["clients"])
    table: dict[str, Any] = {}
    for name in ("batching", "no_batching"):
        table[name] = {}
        for i, clients in enumerate(size["clients"]):
            phases = [r["settings"][name]["phases"][i] for r in reps]
            table[name][str(clients)] = {
                "throughput_rps": spread([p["throughput_rps"] for p in phases]),
                "p50_ms": spread([p["latency_ms"]["p50"] for p in phases if p["ok"]]),
                "p99_ms": spread([p["latency_ms"]["p99"] for p in phases if p["ok"]]),
                "mean_batch_inputs": spread([p["mean_batch_inputs"] for p in phases
                                             if p["mean_batch_inputs"] is not None])}

    def rps(rep: dict[str, Any], name: str, clients: int) -> float:
        return rep["settings"][name]["phases"][size["clients"].index(clients)]["throughput_rps"]

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("inf")

    ratios = {
        "over_best_single_client": spread([ratio(rps(r, "batching", top), max(
            rps(r, "batching", bottom), rps(r, "no_batching", bottom))) for r in reps]),
        "over_single_client_batching": spread([ratio(rps(r, "batching", top),
                                                     rps(r, "batching", bottom)) for r in reps]),
        "over_single_client_no_batching": spread([ratio(rps(r, "batching", top),
                                                        rps(r, "no_batching", bottom))
                                                  for r in reps]),
        "batching_over_no_batching_at_top": spread([ratio(rps(r, "batching", top),
                                                          rps(r, "no_batching", top))
                                                    for r in reps])}

    deletions = [d for r in rounds for d in r["deletions"]]
    acked = [d for d in deletions if d["status"] == 200]
    during = [r["predictions"] for r in rounds]
    phases = [p for r in reps for s in r["settings"].values() for p in s["phases"]]
    statuses: collections.Counter = collections.Counter()
    for p in phases:
        statuses.update(p["status_counts"])
        statuses.update(p["warmup"]["status_counts"])
    for p in during:
        statuses.update(p["status_counts"])
    statuses.update(str(d["status"]) for d in deletions)
    server_5xx = (sum(s["server_5xx"] for r in reps for s in r["settings"].values())
                  + sum(r["server_5xx"] for r in rounds))
    return {
        "throughput": table, "ratio_top_over_one_client": ratios,
        "clients_top": top, "clients_bottom": bottom,
        "deletion_ms": harness.latency_summary([d["ms"] for d in acked]),
        "deletion_ms_erasing": harness.latency_summary([d["ms"] for d in acked if d["erased"]]),
        "deletion_ms_no_erase": harness.latency_summary([d["ms"] for d in acked if not d["erased"]]),
        "deletion_core_ms": harness.latency_summary([d["core_ms"] for d in acked
                                                     if d.get("core_ms") is not None]),
        "deletion_rounds": len(rounds),
        "deletions_sent": len(deletions), "deletions_acknowledged": len(acked),
        "predict_during_deletions": {
            "requests": sum(p["requests"] for p in during), "ok": sum(p["ok"] for p in during),
            "throughput_rps": spread([p["throughput_rps"] for p in during]),
            "latency_ms": harness.latency_summary([]) if not during else {
                "p50": spread([p["latency_ms"].get("p50") for p in during if p["ok"]]),
                "p99": spread([p["latency_ms"].get("p99") for p in during if p["ok"]])}},
        "responses": {"total": sum(statuses.values()), "status_counts": dict(statuses),
                      "n_5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
                      "not_ok": sum(n for s, n in statuses.items() if s != "200"),
                      "server_counted_5xx": server_5xx},
        "lost_deletions": sum(len(r["lost"]) for r in rounds),
        "audits": audits, "audit_ok": bool(audits) and all(a["ok"] for a in audits),
        "server_exit_codes": [s["exit_code"] for r in reps for s in r["settings"].values()]
        + [r["exit_code"] for r in rounds],
        "clean_shutdowns": [s["clean_shutdown"] for r in reps for s in r["settings"].values()]
        + [r["clean_shutdown"] for r in rounds],
    }


def targets(s: dict[str, Any]) -> list[dict[str, Any]]:
    r = s["ratio_top_over_one_client"]["over_best_single_client"]
    top, bottom = s["clients_top"], s["clients_bottom"]
    t1 = s["throughput"]["batching"][str(top)]["throughput_rps"]
    d = s["deletion_ms"]
    resp = s["responses"]
    return [
        {"target": f"HTTP predict throughput, {top} clients with dynamic batching >= 5x "
                   f"{bottom} client",
         "measured": f"median {r['median']:.1f}x (min {r['min']:.1f}, max {r['max']:.1f}, "
                     f"{r['n']} repetitions); {top} clients {t1['median']:.0f} req/s",
         "met": r["median"] >= 5},
        {"target": f"HTTP deletion p99 under 20 ms while {s['predict_during_deletions_clients']} "
                   "clients predict",
         "measured": f"p99 {d['p99']:.1f} ms, p50 {d['p50']:.1f} ms over {d['n']} deletions"
         if d.get("n") else "no deletion acknowledged", "met": bool(d.get("n")) and d["p99"] < 20},
        {"target": "no 5xx responses from the service under load",
         "measured": f"{resp['n_5xx']} of {resp['total']} responses (server counted "
                     f"{resp['server_counted_5xx']:.0f})",
         "met": resp["n_5xx"] == 0 and resp["server_counted_5xx"] == 0},
        {"target": "no acknowledged deletion lost; audit passes after serving",
         "measured": f"{s['lost_deletions']} of {s['deletions_acknowledged']} lost; "
                     f"{sum(a['ok'] for a in s['audits'])}/{len(s['audits'])} audits passed",
         "met": s["lost_deletions"] == 0 and s["audit_ok"]},
    ]


def plot(summary: dict[str, Any], rounds: list[dict[str, Any]], size: dict[str, Any],
         quick: bool) -> None:
    plt = harness.pyplot()
    fig, (ax_t, ax_d) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, label in (("batching", f"--max-batch {size['max_batch']}"),
                        ("no_batching", "--max-batch 1")):
        rows = [summary["throughput"][name][str(c)]["throughput_rps"] for c in size["clients"]]
        med = [r["median"] for r in rows]
        err = [[m - r["min"] for m, r in zip(med, rows, strict=True)],
               [r["max"] - m for m, r in zip(med, rows, strict=True)]]
        ax_t.errorbar(size["clients"], med, yerr=err, marker="o", capsize=3, label=label)
    ax_t.set_xscale("log", base=2)
    ax_t.set_xticks(size["clients"], [str(c) for c in size["clients"]])
    ax_t.set_xlabel("concurrent clients (one text per request)")
    ax_t.set_ylabel("predict requests/s (median, min-max)")
    ax_t.legend(fontsize=8)
    ax_t.grid(alpha=0.3)
    k = 0
    for r in rounds:
        ok = [d for d in r["deletions"] if d["status"] == 200]
        xs = range(k + 1, k + len(ok) + 1)
        ax_d.plot(xs, [d["ms"] for d in ok], ".", ms=4, label=f"round {r['round']}")
        erasing = [(x, d["ms"]) for x, d in zip(xs, ok, strict=True) if d["erased"]]
        if erasing:
            ax_d.plot(*zip(*erasing, strict=True), "kx", ms=5)
        k += len(ok)
    if summary["deletion_ms"].get("n"):
        ax_d.axhline(summary["deletion_ms"]["p99"], color="tab:red", ls="--", label="p99")
    ax_d.axhline(20, color="gray", ls=":", label="target 20 ms")
    ax_d.set_yscale("log")
    ax_d.set_xlabel("deletion request (x = erased stages)")
    ax_d.set_ylabel(f"HTTP deletion latency (ms), {size['delete_clients']} clients predicting")
    ax_d.legend(fontsize=8)
    ax_d.grid(alpha=0.3)
    fig.suptitle("s3t serve under load (WordNet nouns, MiniLM, loopback HTTP)")
    harness.save_plot(fig, NAME, quick)


def report(s: dict[str, Any], checks: list[dict[str, Any]], size: dict[str, Any]) -> None:
    for name in ("batching", "no_batching"):
        for c in size["clients"]:
            row = s["throughput"][name][str(c)]
            t, p50, p99 = row["throughput_rps"], row["p50_ms"], row["p99_ms"]
            print(f"{name:12s} {c:3d} clients: {t['median']:7.1f} req/s (min {t['min']:.1f}, max "
                  f"{t['max']:.1f}); p50 {p50.get('median', float('nan')):.1f} ms, p99 "
                  f"{p99.get('median', float('nan')):.1f} ms, batch "
                  f"{row['mean_batch_inputs'].get('median', float('nan')):.1f} inputs "
                  "(medians over repetitions)")
    for key, r in s["ratio_top_over_one_client"].items():
        print(f"ratio {key}: median {r['median']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f})")
    d, e = s["deletion_ms"], s["deletion_ms_erasing"]
    if d.get("n"):
        print(f"HTTP deletion under load: p50 {d['p50']:.1f} ms, p99 {d['p99']:.1f} ms, max "
              f"{d['max']:.1f} ms (n={d['n']}, {s['deletion_rounds']} rounds; "
              f"{e.get('n', 0)} erased stages)")
    resp = s["responses"]
    print(f"responses: {resp['total']}, status counts {resp['status_counts']}, 5xx "
          f"{resp['n_5xx']} (server counted {resp['server_counted_5xx']:.0f}); lost deletions "
          f"{s['lost_deletions']}; audits {'passed' if s['audit_ok'] else 'FAILED'}")
    for c in checks:
        print(f"{'MET' if c['met'] else 'NOT MET'}: {c['target']}: {c['measured']}")


# --------------------------------------------------------------------------- fair serving

FAIR = {"train": 200, "test": 256, "shards": 2, "slices": 2, "epochs": 1, "max_seq_len": 32,
        "alone": 10, "reps": 3, "large": 256, "max_batch": 32, "max_wait_ms": 5.0}


async def fair_phase(base_url: str, token: str, texts: list[str], size: dict[str, Any]
                     ) -> dict[str, Any]:
    """1-text latency alone, then while a ``large``-text request is in flight (1-text
    requests one after another until it is answered), ``reps`` times."""
    async with http_client(base_url, token, 2) as http:
        async def one(text: str) -> float:
            start = time.perf_counter()
            response = await http.post("/v1/predict", json={"inputs": [text]})
            assert response.status_code == 200, response.body[:200]
            return (time.perf_counter() - start) * 1000

        for text in texts[:3]:  # warm-up
            await one(text)
        alone = [await one(texts[i]) for i in range(size["alone"])]
        beside, large_ms = [], []
        for rep in range(size["reps"]):
            start = time.perf_counter()
            large = asyncio.ensure_future(http.post("/v1/predict",
                                                    json={"inputs": texts[:size["large"]]}))
            await asyncio.sleep(0.05)  # the large request is in the queue first
            i = rep
            while not large.done() and len(beside) < 1000:
                beside.append(await one(texts[i % len(texts)]))
                i += 1
            assert (await large).status_code == 200
            large_ms.append((time.perf_counter() - start) * 1000)
    return {"alone_ms": harness.latency_summary(alone),
            "beside_large_ms": harness.latency_summary(beside), "beside_large": beside,
            "large_request_ms": large_ms}


def fairness(args: Any) -> int:
    """``--fairness``: 1-text prediction latency next to a 256-text request (issue 25)."""
    size = dict(FAIR)
    prov = harness.provenance(NAME + "-fairness", False, [0], size)
    harness.print_header(prov)
    if args.reuse_run:
        run = harness.tmp_run_dir("service-fair")
        shutil.copytree(args.reuse_run, run)
        _, test = harness.wordnet_split(size["train"], size["test"], 0)
        texts = list(test.texts)
    else:
        from s3t.config import S3TConfig
        from s3t.engine import S3T

        train, test = harness.wordnet_split(size["train"], size["test"], 0)
        run = harness.tmp_run_dir("service-fair")
        config = S3TConfig(shards=size["shards"], slices=size["slices"], budget=1,
                           epochs=size["epochs"], max_seq_len=size["max_seq_len"], seed=0)
        S3T(config, run_dir=run).fit(train, progress=False).close()
        texts = list(test.texts)
        if args.keep_run:
            shutil.copytree(run, args.keep_run)
    token = secrets.token_urlsafe(24)
    token_file = run.parent / "token.txt"
    token_file.write_text(token + "\n")
    server = Server(run, token_file, size["max_batch"], size["max_wait_ms"],
                    run.parent / "server.log", args.server_args.split()).start()
    try:
        result = asyncio.run(fair_phase(server.base_url, token, texts, size))
    finally:
        server.stop()
    a, b = result["alone_ms"], result["beside_large_ms"]
    print(f"1-text alone: p50 {a['p50']:.0f} ms (n={a['n']}); next to a {size['large']}-text "
          f"request: p50 {b['p50']:.0f} ms, max {b['max']:.0f} ms (n={b['n']}); the large "
          f"request: {', '.join(f'{ms:.0f}' for ms in result['large_request_ms'])} ms")
    harness.write_result(NAME + "-fairness" + args.tag, False, prov, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--server-args", default="", help="extra `s3t serve` flags for every server, "
                   "e.g. \"--workers 1 --torch-threads 2\" (default: the server's defaults)")
    p.add_argument("--fairness", action="store_true", help="only measure 1-text latency next "
                   "to a 256-text request (fair serving, issue 25)")
    p.add_argument("--reuse-run", type=Path, help="with --fairness: serve a copy of this run "
                   "instead of training one")
    p.add_argument("--keep-run", type=Path, help="with --fairness: keep a copy of the run")
    p.add_argument("--tag", default="", help="with --fairness or --under-retrain: suffix of "
                   "the result file")
    p.add_argument("--under-retrain", action="store_true", help="only measure HTTP deletion "
                   "latency while a background retrain writes stage files, and the fsyncs of "
                   "one deletion (bench/service_io.py)")
    args = p.parse_args(argv)
    if args.fairness:
        return fairness(args)
    if args.under_retrain:
        from bench.service_io import under_retrain

        return under_retrain(args)
    size = dict(harness.size_for(args, QUICK, FULL, SMOKE),
                server_args=args.server_args.split())
    seeds = harness.seeds_for(args, [0], [0])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    prov["server_command"] = " ".join(s3t_cmd("serve", "RUN", "--host", HOST, "--port", "PORT",
                                              "--token-file", "TOKEN_FILE", "--max-batch", "N",
                                              "--max-wait-ms", size["max_wait_ms"],
                                              *size["server_args"]))
    prov["load_generator"] = ("asyncio streams (LoopbackClient: HTTP/1.1 keep-alive, one "
                              "connection per client) in the benchmark process, loopback only")
    harness.print_header(prov)
    print(f"# server: {prov['server_command']}", flush=True)

    seed = seeds[0]
    if len(seeds) > 1:
        print(f"# only the first seed ({seed}) is used: one trained run serves every measurement")
    rng = random.Random(seed)
    run, ids, texts = train_run(size, seed)
    log_dir = run.parent / "logs"
    log_dir.mkdir()
    token = secrets.token_urlsafe(24)
    token_file = run.parent / "token.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    pristine = run.parent / "pristine"
    shutil.copytree(run, pristine)  # before any server opened the run

    reps = throughput_reps(run, token, token_file, texts, size, log_dir)
    audits = [audit(run)]
    rounds = deletion_rounds(pristine, ids, token, token_file, texts, size, rng, log_dir)
    audits += [r["audit"] for r in rounds]
    summary = summarize(reps, rounds, audits, size)
    summary["predict_during_deletions_clients"] = size["delete_clients"]
    checks = targets(summary)
    report(summary, checks, size)
    harness.write_result(NAME, args.quick, prov, {"seed": seed, "throughput_reps": reps,
                                                 "deletion_rounds": rounds, "summary": summary,
                                                 "targets": checks})
    plot(summary, rounds, size, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
