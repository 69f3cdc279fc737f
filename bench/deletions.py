"""Benchmark 2: accuracy and capacity against the number of deletion requests.

Why: the paper's central claim is that S3T keeps serving (at reduced quality) through many
deletions without retraining, and longer with a larger budget, while a SISA shard hit by a
deletion is out of service until retrained. Here every method is trained on the same data
and receives the same sequence of uniform random single-sample deletion requests; after
each request we record ``status()["capacity"]`` (mean served prefix / L over shards, dead
shards counting 0), the live shards and the test accuracy of what is served (SISA: only
its untouched shards). A run stops when no shard is live (the system must retrain) or at
the cap.

    python -m bench deletions [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from bench import harness

NAME = "deletions"
QUICK = {"train": 150, "test": 100, "epochs": 1, "cap": 30}
#: FULL trains with the default recipe (S3TConfig: 3 epochs, serve_orderings="all").
FULL = {"train": 600, "test": 300, "epochs": 3, "cap": 40}
SMOKE = {"train": 40, "test": 20, "epochs": 1, "cap": 3}
CHECKPOINTS = (0, 1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60)


def settings(m: int, n_slices: int, epochs: int, seed: int) -> list[tuple[str, str, Any]]:
    """S3T at B=1 and B=L, SISA at the same m and L."""
    from s3t.config import S3TConfig

    kw = {"model": harness.backbone(), "shards": m, "slices": n_slices, "epochs": epochs, "seed": seed}
    return [
        ("s3t_b1", f"S3T B=1 (m={m}, L={n_slices})", S3TConfig(budget=1, **kw)),
        (f"s3t_b{n_slices}", f"S3T B={n_slices} (m={m}, L={n_slices})",
         S3TConfig(budget=n_slices, **kw)),
        ("sisa", f"SISA (m={m}, L={n_slices})", S3TConfig.baseline("sisa", **kw)),
    ]


Evaluate = Callable[[Any], float]  # a fitted S3T -> the quality of what it serves


def scorer(data: Any) -> Evaluate:
    """Test accuracy of what is served on ``data``."""
    return lambda est: est.score(data)


def point(est: Any, evaluate: Evaluate | None, requests: int, latency_ms: float | None,
          metric: str = "accuracy") -> dict[str, Any]:
    """State after ``requests`` deletions: capacity, live shards and ``metric`` (None if no
    shard is live, or if ``evaluate`` is None: not measured at this point)."""
    status = est.status()
    live = status["live_shards"]
    with harness.stopwatch() as t:
        value = evaluate(est) if live and evaluate is not None else None
    return {"requests": requests, "capacity": status["capacity"], "live_shards": live,
            metric: value, "forget_ms": latency_ms, "score_seconds": t["s"]}


def run_sequence(config: Any, train: Any, evaluate: Evaluate, victims: list[str],
                 metric: str = "accuracy", measure_at: Sequence[int] | None = None) -> dict[str, Any]:
    """Train, then delete ``victims`` one request at a time until no shard is live.

    ``measure_at``: the request counts at which to evaluate (default: after every request);
    capacity and live shards are recorded after every request regardless.
    """
    import time

    from s3t.engine import S3T

    est = S3T(config, run_dir=harness.tmp_run_dir(config.method)).fit(train, progress=False)
    history = [point(est, evaluate, 0, None, metric)]
    for i, sid in enumerate(victims, start=1):
        start = time.perf_counter()
        est.forget([sid])
        latency = (time.perf_counter() - start) * 1000
        measured = measure_at is None or i in measure_at
        history.append(point(est, evaluate if measured else None, i, latency, metric))
        if history[-1]["live_shards"] == 0:
            break
    dead_at = next((h["requests"] for h in history if h["live_shards"] == 0), None)
    first_death = next((h["requests"] for h in history if h["live_shards"] < config.shards), None)
    return {"history": history, "requests_until_retrain": dead_at,
            "requests_until_first_shard_dies": first_death,
            "train_seconds": est.last_train["train_seconds"], "audit_ok": est.audit().ok}


def run_settings(results: dict[str, dict[str, Any]], configs: list[tuple[str, str, Any]],
                 train: Any, evaluate: Evaluate, victims: list[str], seed: int) -> None:
    """:func:`run_sequence` for each (key, label, config), collected in ``results`` by key."""
    for key, label, config in configs:
        run = run_sequence(config, train, evaluate, victims)
        run["seed"] = seed
        results.setdefault(key, {"label": label, "runs": []})["runs"].append(run)
        print(f"seed {seed}  {label:<22} accuracy {run['history'][0]['accuracy']:.3f} "
              f"(trained in {run['train_seconds']:.0f} s) -> retrain needed after "
              f"{run['requests_until_retrain']} requests (first shard out after "
              f"{run['requests_until_first_shard_dies']})", flush=True)


def at_checkpoints(runs: list[dict[str, Any]], cap: int, metric: str = "accuracy",
                   checkpoints: Sequence[int] = CHECKPOINTS) -> list[dict[str, Any]]:
    """Mean capacity (dead systems count 0) and mean ``metric`` over the seeds still serving."""
    rows = []
    for r in [c for c in checkpoints if c <= cap]:
        caps, values = [], []
        for run in runs:
            state = state_after(run["history"], r)
            caps.append(state["capacity"])
            if state[metric] is not None:
                values.append(state[metric])
        rows.append({"requests": r, "capacity_mean": sum(caps) / len(caps),
                     f"{metric}_mean": sum(values) / len(values) if values else None,
                     "seeds_serving": len(values), "seeds": len(runs)})
    return rows


def state_after(history: list[dict[str, Any]], requests: int) -> dict[str, Any]:
    """The recorded state after ``requests`` requests (a dead system stays dead)."""
    last = history[-1]
    if requests >= last["requests"]:
        return last
    return history[requests]


def theory(m: int, n_slices: int) -> dict[str, float]:
    """Closed-form expected requests until retraining (uniform deletions), for context.

    SISA here serves only full-depth checkpoints, so any hit takes its shard out: ``m H_m``
    (the paper's ``m L H_m`` lets a shard serve the checkpoint before the hit slice)."""
    from s3t.plan.theory import deletion_rate_s3t, deletion_rate_shard_out

    return {"s3t_b1": deletion_rate_s3t(m, n_slices, 1),
            f"s3t_b{n_slices}": deletion_rate_s3t(m, n_slices, n_slices),
            "sisa": deletion_rate_shard_out(m), "full": 1.0}


def summarize(results: dict[str, dict[str, Any]], m: int, n_slices: int, cap: int,
              metric: str = "accuracy", checkpoints: Sequence[int] = CHECKPOINTS) -> dict[str, Any]:
    """Per setting: requests until retraining (mean over seeds) and checkpoint means."""
    expected = theory(m, n_slices)
    out = {}
    for key, res in results.items():
        runs = res["runs"]
        ends = [r["requests_until_retrain"] for r in runs]
        out[key] = {"label": res["label"],
                    f"{metric}_before": harness.summarize([r["history"][0][metric] for r in runs]),
                    "requests_until_retrain": ends,
                    "requests_until_retrain_mean": (sum(ends) / len(ends)
                                                    if None not in ends else None),
                    "requests_until_first_shard_dies": [r["requests_until_first_shard_dies"]
                                                        for r in runs],
                    "expected_requests_until_retrain": expected.get(key),
                    "checkpoints": at_checkpoints(runs, cap, metric, checkpoints),
                    "audit_ok": all(r["audit_ok"] for r in runs)}
    return out


def plot(results: dict[str, dict[str, Any]], name: str, quick: bool, title: str,
         metric: str = "accuracy", ylabel: str = "test accuracy (served shards)",
         reference: tuple[float, str] | None = None) -> None:
    """``metric`` (top, points where measured) and capacity (bottom) per request; a line per seed."""
    plt = harness.pyplot()
    fig, (ax_top, ax_cap) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    colors = {"sisa": "tab:red", "s3t_b1": "tab:orange", "full": "tab:gray"}
    for key, res in results.items():
        color = colors.get(key, "tab:blue")
        for i, run in enumerate(res["runs"]):
            xs = [h["requests"] for h in run["history"]]
            measured = [(h["requests"], h[metric]) for h in run["history"] if h[metric] is not None]
            label = res["label"] if i == 0 else None
            if measured:
                ax_top.plot(*zip(*measured, strict=True), ".-", color=color, alpha=0.75, label=label)
            ax_cap.step(xs, [h["capacity"] for h in run["history"]], where="post", color=color,
                        alpha=0.75, label=label)
            if run["history"][-1]["live_shards"] == 0:
                ax_cap.plot(xs[-1], 0.0, "x", color=color)
    if reference is not None:
        ax_top.axhline(reference[0], color="black", linestyle="--", linewidth=1, label=reference[1])
    ax_top.set_ylabel(ylabel)
    ax_cap.set_ylabel("capacity (served prefix / L)")
    ax_cap.set_xlabel("deletion requests (uniform random samples); x = no shard live")
    ax_top.set_title(title)
    for ax in (ax_top, ax_cap):
        ax.grid(alpha=0.3)
    ax_cap.set_ylim(-0.03, 1.05)
    ax_top.legend(fontsize=8)
    harness.save_plot(fig, name, quick)


def print_summary(summary: dict[str, Any], metric: str = "accuracy") -> None:
    for row in summary.values():
        expected = row["expected_requests_until_retrain"]
        closed = "" if expected is None else f" (closed form mean {expected:.1f})"
        print(f"{row['label']}: requests until retrain {row['requests_until_retrain']}{closed}")
        for c in row["checkpoints"]:
            value = c[f"{metric}_mean"]
            shown = "-" if value is None else f"{value:.3f}"
            print(f"    after {c['requests']:>2}: capacity {c['capacity_mean']:.2f}  {metric} {shown} "
                  f"({c['seeds_serving']}/{c['seeds']} seeds serving)")


def main(argv: list[str] | None = None) -> int:
    p = harness.add_grid(harness.parser(__doc__.splitlines()[0]))
    p.add_argument("--cap", type=int, default=None, help="most requests per run")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    if args.cap is not None:
        size["cap"] = args.cap
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)

    results: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        train, test = harness.wordnet_split(size["train"], size["test"], seed)
        victims = random.Random(seed).sample(train.ids, min(size["cap"], len(train)))
        configs = settings(size["shards"], size["slices"], size["epochs"], seed)
        run_settings(results, configs, train, scorer(test), victims, seed)
    summary = summarize(results, size["shards"], size["slices"], size["cap"])
    print_summary(summary)
    harness.write_result(NAME, args.quick, prov, {"results": results, "summary": summary})
    plot(results, NAME, args.quick, "WordNet nouns, MiniLM: serving through deletions without retraining")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
