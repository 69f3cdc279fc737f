"""Benchmark 12: stage training on Ray against the local executor, and a scaling model.

Why: training is the cost of S3T (stages x epochs x samples) and a shard's stages form a
tree independent of every other shard's, so stages can run in parallel on a cluster while
forgetting stays a ledger operation. What it costs and what it buys:

* the same run (MiniLM, WordNet nouns, m=4, L=3, B=3 cyclic) trained by the local executor
  (torch's default threads, and one thread) and by Ray with W single-threaded workers, as one
  task per stage (what s3t uses) and as shard-affine actors (shard s on actor s mod W, each
  keeping only its shards' trunk features); wall time and stages per minute;
* every stage's tensors compared bitwise between the one-thread local run and each Ray run;
* Ray's overhead per stage (task launch, transfer, the driver's commit) on near-empty stages
  (a few samples per cell), where training costs next to nothing;
* a scaling model: list scheduling of the measured single-thread stage times on W workers
  (a child starts when its parent's task finished), plus the measured per-stage overhead,
  each worker's first-touch feature computation per cell and backbone load, and the driver
  committing one stage at a time. It is checked against the measured runs and plotted for
  W = 1..64 with the measured points, for m = 4, 16, 64 shards of the measured size; its
  bound is total work / critical path (a shard's longest chain).

    python -m bench distributed [--quick] [--workers 1 2] [--model-only]
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import statistics
import time
from typing import Any

from bench import harness

NAME = "distributed"
QUICK = {"train": 360, "near_empty_per_cell": 2, "epochs": 1, "shards": 4, "slices": 3, "budget": 3}
#: At the smoke size the near-empty runs are the measured runs too (train = one sample per
#: cell): one Ray instance fewer.
SMOKE = {"train": 4, "near_empty_per_cell": 1, "epochs": 1, "shards": 2, "slices": 2, "budget": 2}
FULL = {"train": 2400, "near_empty_per_cell": 3, "epochs": 1, "shards": 4, "slices": 3, "budget": 3}
MODEL_WORKERS = list(range(1, 65))


def config(size: dict[str, Any], seed: int, **kw: Any) -> Any:
    from s3t.config import S3TConfig

    return S3TConfig(model=harness.backbone(),
                     shards=size["shards"], slices=size["slices"], budget=size["budget"],
                     epochs=size["epochs"], seed=seed, max_seq_len=48, **kw)


def fit(cfg: Any, data: Any, tag: str) -> tuple[Any, float]:
    from s3t.engine import S3T

    started = time.perf_counter()
    est = S3T(cfg, run_dir=harness.tmp_run_dir(tag)).fit(data, progress=False)
    return est, time.perf_counter() - started


def local_run(cfg: Any, data: Any, threads: int | None, tag: str) -> tuple[Any, dict[str, Any]]:
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:  # the run card's torch_threads is what training uses (its numeric environment)
        est, wall = fit(dataclasses.replace(cfg, torch_threads=threads or before), data, tag)
    finally:
        torch.set_num_threads(before)
    train = est.last_train
    return est, {"executor": "local", "torch_threads": threads or before, "fit_seconds": wall,
                 "train_seconds": train["train_seconds"], "stages": train["stages_trained"],
                 "stage_seconds": train["stage_seconds"],
                 "stages_per_minute": 60 * train["stages_trained"] / train["train_seconds"]}


def actor_submit(workers: int, shards: int) -> Any:
    """Shard-affine actors: shard s always trains on actor s mod W (its features stay there)."""
    import ray

    from s3t.train.ray_executor import MAX_RETRIES, WORKER_ENV
    from s3t.train.ray_worker import run_stage

    @ray.remote(num_cpus=1, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    class ShardWorker:
        def train(self, spec: Any, job: Any, *ancestors: Any) -> Any:
            return run_stage(spec, job, *ancestors)

    actors = [ShardWorker.options(runtime_env={"env_vars": WORKER_ENV}).remote()
              for _ in range(min(workers, shards))]
    return lambda shared, job, ancestors, threads: actors[job.shard % len(actors)].train.remote(
        shared, job, *ancestors)


def ray_run(cfg: Any, data: Any, workers: int, mode: str, tag: str) -> tuple[Any, dict[str, Any]]:
    """A fresh local Ray instance with ``workers`` CPUs; fit through the Ray executor."""
    import ray

    import s3t.train.ray_executor as executor

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    init_seconds = time.perf_counter() - started
    default = executor.submit_task
    try:
        if mode == "actors":
            executor.submit_task = actor_submit(workers, cfg.shards)
        est, wall = fit(dataclasses.replace(cfg, executor="ray"), data, tag)
    finally:
        executor.submit_task = default
        ray.shutdown()
    train = est.last_train
    rows = train["stages"]
    return est, {"executor": "ray", "mode": mode, "workers": workers, "ray_init_seconds": init_seconds,
                 "fit_seconds": wall, "train_seconds": train["train_seconds"],
                 "stages": train["stages_trained"], "rows": rows,
                 "stages_per_minute": 60 * train["stages_trained"] / train["train_seconds"],
                 "worker_processes": len({r["pid"] for r in rows}),
                 "first_task_start_seconds": min(r["started"] for r in rows),
                 "features_seconds_total": sum(r["features_seconds"] for r in rows)}


def differing_tensors(a: Any, b: Any) -> int:
    """Tensors (adapter and head, every live stage) that are not bitwise equal; -1 if the
    two runs do not hold the same stages."""
    import torch

    left, right = a.live_weights(), b.live_weights()
    if sorted(left) != sorted(right):
        return -1
    return sum(not torch.equal(getattr(left[k], part)[n], getattr(right[k], part)[n])
               for k in left for part in ("adapter", "head") for n in getattr(left[k], part))


def overheads(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ray's cost per stage, from the driver's and the workers' timestamps:

    * dispatch: a worker's gap between finishing one stage and starting the next when the
      next was already ready (task launch, argument transfer and unpickling);
    * return: finished to settled, less the commit (result transfer, the driver noticing);
    * commit: the driver's verified write and version-checked commit (serial).
    """
    by_key = {r["key"]: r for r in rows}

    def ready(r: dict[str, Any]) -> float:
        parent = by_key.get(r["parent"]) if r["parent"] else None
        return max(r["submitted"], parent["finished"] if parent else 0.0)

    dispatch = []
    for pid in {r["pid"] for r in rows}:
        mine = sorted((r for r in rows if r["pid"] == pid), key=lambda r: r["started"])
        dispatch += [b["started"] - a["finished"] for a, b in zip(mine, mine[1:], strict=False)
                     if ready(b) <= a["finished"]]
    back = [r["settled"] - r["finished"] - r.get("commit_seconds", 0.0) for r in rows]
    commit = [r.get("commit_seconds", 0.0) for r in rows]
    return {"dispatch_s": harness.summarize(dispatch), "return_s": harness.summarize(back),
            "commit_s": harness.summarize(commit),
            "dispatch_median": statistics.median(dispatch) if dispatch else 0.0,
            "return_median": statistics.median(back), "commit_median": statistics.median(commit),
            "bytes_per_stage": statistics.median(r["bytes"] for r in rows)}


def feature_seconds(est: Any) -> dict[tuple[int, int], float]:
    """Seconds to compute each cell's trunk features with one thread (what a worker pays the
    first time it trains a stage on that cell)."""
    import torch

    from s3t.train.features import FeatureCache

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = FeatureCache(est.backbone, chunk_size=est.config.batch_size)
        out = {}
        for shard in range(est.config.shards):
            for s in range(est.config.slices):
                rows = est.ledger.cell_samples(shard, s)
                started = time.perf_counter()
                cache.ensure((shard, s), 0, [r[0] for r in rows], [r[2] for r in rows])
                out[(shard, s)] = time.perf_counter() - started
        return out
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- the scaling model


@dataclasses.dataclass
class Stage:
    key: str
    shard: int
    prefix: tuple[int, ...]
    parent: str | None
    seconds: float


def simulate(stages: list[Stage], workers: int, feature_s: dict[tuple[int, int], float],
             overhead: float, commit: float, setup: float, start: float) -> float:
    """Makespan of list scheduling ``stages`` (plan order, parents first) on ``workers``:
    a stage is ready when its parent's task finished; it runs on the first free worker for
    overhead + its cells' features that worker lacks + its training seconds; the driver
    commits one stage at a time. ``setup``: a worker's backbone load on its first stage;
    ``start``: when the first worker can start (process start-up)."""
    finish: dict[str, float] = {}
    free = [(start, w) for w in range(workers)]
    heapq.heapify(free)
    cached: list[set[tuple[int, int]]] = [set() for _ in range(workers)]
    used = [False] * workers
    waiting = list(stages)
    driver = 0.0
    while waiting:
        at, w = heapq.heappop(free)
        ready = [(max(at, finish[s.parent]) if s.parent else at, i, s)
                 for i, s in enumerate(waiting) if s.parent is None or s.parent in finish]
        begin, i, s = min(ready, key=lambda x: (x[0], x[1]))
        waiting.pop(i)
        cells = {(s.shard, c) for c in s.prefix}
        work = overhead + s.seconds + sum(feature_s[c] for c in cells - cached[w])
        work += 0.0 if used[w] else setup
        cached[w] |= cells
        used[w] = True
        finish[s.key] = begin + work
        driver = max(driver, finish[s.key]) + commit
        heapq.heappush(free, (finish[s.key], w))
    return max(driver, max(finish.values()))


def local_model(stages: list[Stage], feature_s: dict[tuple[int, int], float], commit: float) -> float:
    """The local executor: every stage in turn, each cell's features once, one commit each."""
    return sum(s.seconds + commit for s in stages) + sum(feature_s.values())


def critical_path(stages: list[Stage]) -> float:
    by_key = {s.key: s for s in stages}

    def chain(s: Stage) -> float:
        return s.seconds + (chain(by_key[s.parent]) if s.parent else 0.0)

    return max(chain(s) for s in stages)


def replicated(stages: list[Stage], shards: int, features: dict[tuple[int, int], float],
               base_shards: int) -> tuple[list[Stage], dict[tuple[int, int], float]]:
    """``shards`` shards of the measured size (the data grows with m): shard s repeats the
    measured shard s mod m's stages and cells."""
    out, feats = [], {}
    for shard in range(shards):
        for s in stages:
            if s.shard == shard % base_shards:
                parent = None if s.parent is None else f"{shard}:{s.parent}"
                out.append(Stage(f"{shard}:{s.key}", shard, s.prefix, parent, s.seconds))
        feats.update({(shard, c): sec for (b, c), sec in features.items()
                      if b == shard % base_shards})
    out.sort(key=lambda s: (len(s.prefix), s.shard, s.prefix))
    return out, feats


def parse_key(key: str) -> tuple[int, tuple[int, ...], str | None]:
    """Shard, prefix and parent key of a stage key such as ``0-2v0_0v1``."""
    shard, rest = key.split("-", 1)
    parts = rest.split("_")
    parent = f"{shard}-" + "_".join(parts[:-1]) if len(parts) > 1 else None
    return int(shard), tuple(int(part.split("v")[0]) for part in parts), parent


def model(result: dict[str, Any]) -> dict[str, Any]:
    """Fit nothing: every parameter is measured (stage times: the one-thread local run;
    dispatch and return: the near-empty Ray run; commit, worker start and backbone load: the
    full Ray task runs; features: one thread per cell); predictions are checked against the
    measured runs."""
    runs, shards = result["runs"], result["size"]["shards"]
    stages = [Stage(k, *parse_key(k), sec) for k, sec in runs["local_1_thread"]["stage_seconds"].items()]
    stages.sort(key=lambda s: (len(s.prefix), s.shard, s.prefix))
    feats = {tuple(map(int, k.split(","))): v for k, v in result["feature_seconds_per_cell"].items()}
    near = result["near_empty"]["overheads"]
    overhead = near["dispatch_median"] + near["return_median"]
    ray_runs = [r for r in runs.values() if r["executor"] == "ray"]
    tasks = [r for r in ray_runs if r["mode"] == "tasks"] or ray_runs
    commit = statistics.median(row["commit_seconds"] for r in tasks for row in r["rows"]
                               if "commit_seconds" in row)
    setup = statistics.median(max(row["setup_seconds"] for row in r["rows"]) for r in tasks)
    start = statistics.median(r["first_task_start_seconds"] - max(row["setup_seconds"]
                              for row in r["rows"]) for r in tasks)
    checks = [{"run": "local, 1 thread", "measured_s": runs["local_1_thread"]["train_seconds"],
               "predicted_s": local_model(stages, feats, commit)}]
    for r in ray_runs:
        checks.append({"run": f"ray {r['mode']}, W={r['workers']}", "measured_s": r["train_seconds"],
                       "predicted_s": simulate(stages, r["workers"], feats, overhead, commit,
                                               setup, start)})
    for c in checks:
        c["error"] = c["predicted_s"] / c["measured_s"] - 1
    curves = {}
    for m in (shards, 4 * shards, 16 * shards):
        st, fe = replicated(stages, m, feats, shards)
        base = local_model(st, fe, commit)
        curves[str(m)] = {
            "workers": MODEL_WORKERS,
            "speedup": [base / simulate(st, w, fe, overhead, commit, setup, start)
                        for w in MODEL_WORKERS],
            "bound": sum(s.seconds for s in st) / critical_path(st),
            "stages": len(st), "total_work_s": sum(s.seconds for s in st),
            "critical_path_s": critical_path(st), "commits_s": len(st) * commit}
    return {"parameters": {"overhead_per_stage_s": overhead, "commit_per_stage_s": commit,
                           "commit_near_empty_s": near["commit_median"],
                           "worker_setup_s": setup, "worker_start_s": start,
                           "features_total_s": sum(feats.values()), "stages": len(stages),
                           "total_work_s": sum(s.seconds for s in stages),
                           "critical_path_s": critical_path(stages)},
            "checks": checks, "curves": curves}


def plot(result: dict[str, Any], quick: bool) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for m, curve in result["model"]["curves"].items():
        line, = ax.plot(curve["workers"], curve["speedup"],
                        label=f"predicted, m={m} shards of the measured size")
        ax.axhline(curve["bound"], color=line.get_color(), linestyle=":", linewidth=1)
    base = result["runs"]["local_1_thread"]["train_seconds"]
    for run in result["runs"].values():
        if run["executor"] == "ray":
            ax.scatter([run["workers"]], [base / run["train_seconds"]], zorder=3,
                       marker="o" if run["mode"] == "tasks" else "s",
                       label=f"measured, ray {run['mode']} (m={result['size']['shards']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("workers W (one CPU, one torch thread each)")
    ax.set_ylabel("speed-up over the local executor (1 thread)")
    ax.set_title("Ray executor: predicted and measured speed-up (dotted: work / critical path)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    harness.save_plot(fig, NAME, quick)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[2],
                   help="Ray worker counts to measure (each a fresh local Ray instance)")
    p.add_argument("--model-only", action="store_true",
                   help="recompute the scaling model and plot from the stored result")
    args = p.parse_args(argv)
    if args.model_only:
        return remodel(args.quick)
    size = dict(harness.size_for(args, QUICK, FULL, SMOKE), workers=args.workers)
    seed = harness.seeds_for(args, [0], [0])[0]
    prov = harness.provenance(NAME, args.quick, [seed], size)
    harness.print_header(prov)
    from s3t.data.loaders import load_wordnet

    data = load_wordnet(limit=size["train"], seed=seed)
    cfg = config(size, seed)
    runs: dict[str, dict[str, Any]] = {}
    ests: dict[str, Any] = {}
    # Near-empty stages first (they also warm the page cache and imports for what follows):
    # the same plan on a few samples per cell, where training costs next to nothing.
    tiny = load_wordnet(limit=size["near_empty_per_cell"] * size["shards"] * size["slices"], seed=seed)
    reuse = harness.smoke_active() and len(tiny) == len(data)  # the same runs (SMOKE)
    near_est, near = local_run(cfg, tiny, 1, "near-local")
    w = max(args.workers)
    near_ray_est, near_ray = ray_run(cfg, tiny, w, "tasks", "near-ray")
    over = overheads(near_ray["rows"])
    print(f"near-empty: dispatch {over['dispatch_median'] * 1e3:.1f} ms, return "
          f"{over['return_median'] * 1e3:.1f} ms, commit {over['commit_median'] * 1e3:.1f} ms",
          flush=True)

    ests["local"], runs["local"] = local_run(cfg, data, None, "local")
    print(f"local (torch default threads): {runs['local']['train_seconds']:.1f} s", flush=True)
    ests["local_1"], runs["local_1_thread"] = ((near_est, dict(near)) if reuse
                                               else local_run(cfg, data, 1, "local1"))
    print(f"local (1 thread): {runs['local_1_thread']['train_seconds']:.1f} s", flush=True)
    for workers in args.workers:
        for mode in ("tasks", "actors"):
            key = f"ray_{mode}_w{workers}"
            ests[key], runs[key] = ((near_ray_est, dict(near_ray)) if reuse and mode == "tasks"
                                    and workers == w else ray_run(cfg, data, workers, mode, key))
            runs[key]["differing_tensors_vs_local_1_thread"] = differing_tensors(ests["local_1"], ests[key])
            print(f"{key}: {runs[key]['train_seconds']:.1f} s, differing tensors "
                  f"{runs[key]['differing_tensors_vs_local_1_thread']}", flush=True)
    runs["local"]["differing_tensors_vs_local_1_thread"] = differing_tensors(ests["local_1"], ests["local"])
    near_result = {"local_1_thread": {k: v for k, v in near.items() if k != "stage_seconds"},
                   "ray": {k: v for k, v in near_ray.items() if k != "rows"},
                   "overheads": over, "full_run_overheads": {
                       k: overheads(r["rows"]) for k, r in runs.items() if r["executor"] == "ray"},
                   "per_stage_wall_s": {"local": near["train_seconds"] / near["stages"],
                                        "ray": near_ray["train_seconds"] / near_ray["stages"]}}

    feats = feature_seconds(ests["local_1"])
    result = {"size": size, "runs": runs, "near_empty": near_result,
              "feature_seconds_per_cell": {f"{a},{b}": v for (a, b), v in feats.items()}}
    result["model"] = model(result)
    report_model(result)
    plot(result, args.quick)
    harness.write_result(NAME, args.quick, prov, result)
    return 0


def report_model(result: dict[str, Any]) -> None:
    for check in result["model"]["checks"]:
        print(f"model {check['run']}: measured {check['measured_s']:.1f} s, predicted "
              f"{check['predicted_s']:.1f} s ({100 * check['error']:+.0f}%)", flush=True)


def remodel(quick: bool) -> int:
    """Recompute the model and the plot from a stored result (no measurement)."""
    import json

    path = harness.result_path(NAME, quick)
    result = json.loads(path.read_text())
    result["model"] = model(result)
    report_model(result)
    plot(result, quick)
    path.write_text(json.dumps(result, indent=2, default=harness._json_default) + "\n")
    print(f"# rewrote the model in {harness.shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
