"""Performance: frozen-trunk feature cache (training), shared-trunk serving, forget latency,
peak memory, and how they scale. Every comparison is a ratio measured side by side in one
run, repeated, with its spread.

    python -m bench perf [--quick]
"""

from __future__ import annotations

import json
import resource
import subprocess
import time

import numpy as np

from bench import harness
from bench.harness import (
    REPO_DIR,
    bench_cmd,
    child_env,
    latency_summary,
    parser,
    print_header,
    provenance,
    pyplot,
    save_plot,
    seeds_for,
    size_for,
    summarize,
    tmp_run_dir,
    wordnet_split,
    write_result,
)

NAME = "perf"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_train(n_train: int, cache: bool, seed: int, shards: int, slices: int) -> dict:
    """One training run in this (child) process: wall time and peak memory."""
    from s3t import S3T, S3TConfig

    train, _ = wordnet_split(n_train, 50, seed)
    config = S3TConfig(model=harness.backbone(),
                       shards=shards, slices=slices, budget=slices, epochs=1, max_seq_len=48,
                       seed=seed, feature_cache=cache)
    est = S3T(config, run_dir=tmp_run_dir("perf-train")).fit(train, progress=False)
    return {"train_seconds": est.last_train["train_seconds"], "peak_rss_mib": peak_rss_mib(),
            "stages": est.last_train["stages_trained"]}


#: At the smoke size, a child or a serving measurement with the same arguments runs once
#: (the smoke checks the code path, not the numbers): fewer processes, each importing torch.
_SMOKE_MEMO: dict[tuple, object] = {}


def _memo(key: tuple, compute):  # noqa: ANN001, ANN202 (any result)
    if not harness.smoke_active():
        return compute()
    if key not in _SMOKE_MEMO:
        _SMOKE_MEMO[key] = compute()
    return _SMOKE_MEMO[key]


def run_child(*args: str) -> dict:
    return _memo(("child", *args), lambda: _run_child(*args))


def _run_child(*args: str) -> dict:
    """A fresh process (peak memory is per process). At the smoke size, the child's code runs
    in this process (a process would import torch again; memory is not measured there)."""
    if harness.smoke_active():
        return json.loads(json.dumps(child(*map(str, args))))
    out = subprocess.run(bench_cmd("perf", "--child", *args), check=True, cwd=REPO_DIR, env=child_env(),
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_training(n_train: int, reps: int, seed: int) -> dict:
    """Cached vs uncached training, alternating order, each in a fresh process."""
    rows = []
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        pair = {}
        for cache in order:
            pair[cache] = run_child("train", str(n_train), str(int(cache)), str(seed), "1", "3")
            print(f"  training rep {rep}: cache={cache} {pair[cache]['train_seconds']:.1f} s, "
                  f"peak {pair[cache]['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append({"cached": pair[True], "uncached": pair[False],
                     "speedup": pair[False]["train_seconds"] / pair[True]["train_seconds"]})
    return {"n_train": n_train, "config": "MiniLM, m=1, L=3 (3 of 6 layers adapted), B=3, 1 epoch",
            "reps": rows, "speedup": summarize([r["speedup"] for r in rows])}


def naive_predict(est, texts: list[str]) -> np.ndarray:
    """The naive ensemble: every shard runs the whole network with unmerged adapters."""
    import torch

    backbone, family = est.backbone, est.backbone.family
    out = 0
    with torch.no_grad():
        batch = backbone.encode(texts)
        mask = batch["attention_mask"]
        for route in est.served().values():
            backbone.load_route(route.chain, est.method)
            hidden = family.embed(backbone.model, batch)
            hidden = family.run_layers(backbone.model, hidden, mask, 0, backbone.n_layers)
            out = out + torch.softmax(family.head(backbone.model, hidden, mask), -1).numpy()
    return out


def throughput(fn, texts: list[str], batch: int, seconds: float) -> float:
    """Samples per second of ``fn`` on consecutive batches for about ``seconds``."""
    fn(texts[:batch])  # warm-up
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + j) % len(texts)] for j in range(batch)]
        fn(chunk)
        done += batch
        i += batch
    return done / (time.perf_counter() - start)


def serving_setup(shards: int, n_train: int, seed: int, slices: int = 3):
    from s3t import S3T, S3TConfig
    from s3t.serve.ensemble import Ensemble

    train, test = wordnet_split(n_train, 200, seed)
    config = S3TConfig(model=harness.backbone(),
                       shards=shards, slices=slices, budget=slices, epochs=1, max_seq_len=48,
                       seed=seed)
    est = S3T(config, run_dir=tmp_run_dir("perf-serve")).fit(train, progress=False)
    est.predict(test.texts[:2])
    single = Ensemble(est.backbone, est.method)
    shard, route = next(iter(est.served().items()))
    single.update({shard: (route.stage, list(route.chain))})
    n = len(est.label_names)
    return est, test, single, n


def bench_serving(shards: int, n_train: int, seconds: float, seed: int, reps: int,
                  slices: int = 3) -> tuple[dict, object]:
    return _memo(("serving", shards, n_train, slices),
                 lambda: _bench_serving(shards, n_train, seconds, seed, reps, slices))


def _bench_serving(shards: int, n_train: int, seconds: float, seed: int, reps: int,
                   slices: int = 3) -> tuple[dict, object]:
    est, test, single, n = serving_setup(shards, n_train, seed, slices)
    texts = test.texts
    paths = {
        "shared_trunk": lambda t: est.predict(t, batch_size=len(t)),
        "single_merged_model": lambda t: single.predict_proba(t, vote=False, n_labels=n),
        "naive_ensemble": lambda t: naive_predict(est, t),
    }
    result = {"shards": shards, "slices": slices, "budget": slices,
              "seconds_per_measurement": seconds}
    for batch in (1, 32):
        runs = {name: [] for name in paths}
        for _ in range(reps):  # interleaved so load drifts hit every path alike
            for name, fn in paths.items():
                runs[name].append(throughput(fn, texts, batch, seconds))
        ratios = {
            "shared_over_single": [s / m for s, m in zip(runs["shared_trunk"],
                                                          runs["single_merged_model"], strict=True)],
            "naive_over_single": [s / m for s, m in zip(runs["naive_ensemble"],
                                                         runs["single_merged_model"], strict=True)],
            "shared_over_naive": [s / m for s, m in zip(runs["shared_trunk"], runs["naive_ensemble"],
                                                         strict=True)],
        }
        result[f"batch_{batch}"] = {
            "samples_per_s": {k: summarize(v) for k, v in runs.items()},
            "ratios": {k: summarize(v) for k, v in ratios.items()},
        }
        print(f"  serving m={shards} batch {batch}: " + ", ".join(
            f"{k} {np.mean(v):.1f}/s" for k, v in runs.items()) + "; shared/single "
            f"{np.mean(ratios['shared_over_single']):.2f}", flush=True)
    return result, est


def bench_forget(est, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = [r[0] for r in est.ledger.conn.execute(
        "SELECT sample_id FROM samples WHERE deleted_version IS NULL")]
    victims = rng.choice(ids, size=min(n, len(ids)), replace=False)
    times = []
    for sid in victims:
        start = time.perf_counter()
        est.forget([str(sid)])
        times.append((time.perf_counter() - start) * 1000)
    return latency_summary(times)


def child(kind: str, *rest: str) -> dict:
    """What one child process measures (``--child KIND ARGS``)."""
    if kind == "train":
        n, cache, seed, shards, slices = rest
        return child_train(int(n), bool(int(cache)), int(seed), int(shards), int(slices))
    shards, n, seed = rest
    est, test, single, labels = serving_setup(int(shards), int(n), int(seed))
    est.predict(test.texts[:32])
    return {"peak_rss_mib": peak_rss_mib()}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--child", nargs="+", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0

    seeds = seeds_for(args, [0], [0])
    seed = seeds[0]
    smoke = {"train_n": 24, "train_reps": 1, "serve_n": 40, "serve_seconds": 0.05, "serve_reps": 1,
             "forget_n": 5, "scaling_shards": [2], "scaling_n": [24], "scaling_slices": [3],
             "serve_shards": 2}  # the scaling rows repeat measurements made already (_memo)
    size = ({"train_n": 240, "train_reps": 1, "serve_n": 150, "serve_seconds": 1.0, "serve_reps": 1,
             "forget_n": 200, "scaling_shards": [1, 5]} if args.quick else
            {"train_n": 600, "train_reps": 2, "serve_n": 300, "serve_seconds": 3.0, "serve_reps": 3,
             "forget_n": 1000, "scaling_shards": [1, 3, 5, 8]})
    size = size_for(args, size, size, smoke)
    prov = provenance(NAME, args.quick, seeds, size)
    print_header(prov)

    print("training: cached vs uncached", flush=True)
    training = bench_training(size["train_n"], size["train_reps"], seed)
    print("serving: shared trunk vs single merged model vs naive ensemble", flush=True)
    serve_m = size.get("serve_shards", 5)
    serving, est = bench_serving(serve_m, size["serve_n"], size["serve_seconds"], seed,
                                 size["serve_reps"])
    print("forget latency with the run in memory", flush=True)
    forget = bench_forget(est, size["forget_n"], seed)
    print(f"  forget p50 {forget['p50']:.2f} ms, p99 {forget['p99']:.2f} ms", flush=True)
    memory = {"training_peak_rss_mib": training["reps"][0]["cached"]["peak_rss_mib"],
              "training_uncached_peak_rss_mib": training["reps"][0]["uncached"]["peak_rss_mib"],
              "serving_peak_rss_mib": run_child("serve", str(serve_m), str(size["serve_n"]),
                                                str(seed))["peak_rss_mib"]}
    print(f"  peak memory: {memory}", flush=True)
    print("scaling with m (serving, batch 32)", flush=True)
    scaling = []
    for m in size["scaling_shards"]:
        res, _ = bench_serving(m, size["serve_n"], size["serve_seconds"], seed, 1)
        scaling.append({"shards": m, **{k: v["mean"] for k, v in
                                         res["batch_32"]["samples_per_s"].items()}})
    print("serving m=5 with one adapted layer (L=1), where the 0.5x bound allows it", flush=True)
    one_layer, _ = bench_serving(serve_m, size["serve_n"], size["serve_seconds"], seed,
                                 size["serve_reps"], slices=1)
    print("scaling with dataset size (cached training)", flush=True)
    by_n = []
    for n in size.get("scaling_n", [120, 240] if args.quick else [300, 600]):
        r = run_child("train", str(n), "1", str(seed), "1", "3")
        by_n.append({"n_train": n, "train_seconds": r["train_seconds"],
                     "peak_rss_mib": r["peak_rss_mib"]})
        print(f"  n={n}: {r['train_seconds']:.1f} s, {r['peak_rss_mib']:.0f} MiB", flush=True)
    print("scaling with L (cached training, m=1, B=L, one layer per slice)", flush=True)
    by_slices = []
    for n_slices in size.get("scaling_slices", [2, 3] if args.quick else [1, 2, 3, 4, 6]):
        r = run_child("train", str(size["train_n"]), "1", str(seed), "1", str(n_slices))
        by_slices.append({"slices": n_slices, "stages": r["stages"],
                          "train_seconds": r["train_seconds"], "peak_rss_mib": r["peak_rss_mib"]})
        print(f"  L={n_slices}: {r['stages']} stages, {r['train_seconds']:.1f} s, "
              f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    payload = {"training": training, "serving": serving, "forget_ms": forget, "memory": memory,
               "scaling_shards": scaling, "scaling_n": by_n, "scaling_slices": by_slices,
               "serving_one_adapted_layer": one_layer,
               "targets": targets(training, serving, forget)}
    write_result(NAME, args.quick, prov, payload)
    plot(scaling, args.quick)
    return 0


def targets(training: dict, serving: dict, forget: dict) -> list[dict]:
    """The issue's targets, each with what was measured."""
    speed = training["speedup"]
    out = [{"target": "cached training >= 2x faster than uncached",
            "measured": f"{speed['mean']:.2f}x (min {speed['min']:.2f}, max {speed['max']:.2f}, "
                        f"n={speed['n']})", "met": speed["mean"] >= 2.0}]
    for batch in (1, 32):
        r = serving[f"batch_{batch}"]["ratios"]["shared_over_single"]
        out.append({"target": f"shared-trunk m=5 ensemble >= 0.5x single model (batch {batch})",
                    "measured": f"{r['mean']:.2f}x (min {r['min']:.2f}, max {r['max']:.2f}, n={r['n']})",
                    "met": r["mean"] >= 0.5})
    out.append({"target": "forget p99 under 10 ms, run loaded in memory (perf run)",
                "measured": f"p50 {forget['p50']:.2f} ms, p99 {forget['p99']:.2f} ms (n={forget['n']})",
                "met": forget["p99"] < 10.0})
    return out


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def plot(scaling: list[dict], quick: bool) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ms = [r["shards"] for r in scaling]
    for key, label in (("shared_trunk", "shared trunk (s3t predict)"),
                       ("single_merged_model", "single merged model"),
                       ("naive_ensemble", "naive ensemble (m full passes)")):
        ax.plot(ms, [r[key] for r in scaling], "o-", label=label)
    ax.set_xlabel("shards m")
    ax.set_ylabel("samples / s (batch 32)")
    ax.set_title("Serving throughput against the number of shards")
    ax.grid(alpha=0.3)
    ax.legend()
    save_plot(fig, NAME, quick)


if __name__ == "__main__":
    raise SystemExit(main())
