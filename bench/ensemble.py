"""Benchmark 27: weighing shards in the ensemble: mean, depth and validation (issue 28, item 2).

Why: after deletions each shard's route counts the same in the mean, whether it serves a
stage trained on three slices or on one. ``S3TConfig.ensemble`` weighs a shard by the depth
of the stage it serves (``depth``) or by the log-odds over chance of its served stages'
accuracy on the validation split (``validation``); both are computed only from what may be
used, so exactness is unchanged. This trains one S3T run (MiniLM, WordNet nouns, m=5, L=3,
B=3, the package's defaults) and one SISA run (m=5, L=3 slice checkpoints) per seed on the
splits of the scale benchmark (section 15) and, without retraining, serves each with each
weighting before any deletion and after 10%, 25% and 50% of S3T's expected deletion capacity
(``m L H_{mB}`` uniform random single-sample requests, cumulative; the same requests for
both systems) has been used: test and validation accuracy, served depths and the weights. A
SISA shard whose first slice lost a sample is out of service; a system with no shard left
serves nothing (counted apart, not as an accuracy).

Results are written after every run; ``--resume`` skips the (system, seed) runs already in
the result file and merges what other ``--resume`` processes wrote, so seeds can run as
separate processes side by side.

    python -m bench ensemble [--quick] [--seeds 0 1] [--systems s3t sisa] [--train-size 1000]
        [--resume]
"""

from __future__ import annotations

import math
import random
from typing import Any

from bench import harness

NAME = "ensemble"
MODES = ("mean", "depth", "validation")
SYSTEMS = ("s3t", "sisa")
FRACTIONS = (0.0, 0.1, 0.25, 0.5)
QUICK = {"train": 1000, "test": 1000, "val": 256, "shards": 5, "slices": 3, "budget": 3}
FULL = {"train": 4000, "test": 2000, "val": 256, "shards": 5, "slices": 3, "budget": 3}
SMOKE = {"train": 60, "test": 20, "val": 16, "shards": 2, "slices": 2, "budget": 2}


def requests_for(fraction: float, m: int, n_slices: int, budget: int) -> int:
    """Requests that use ``fraction`` of S3T's expected deletion capacity, rounded up."""
    from s3t.plan.theory import deletion_rate_s3t

    return math.ceil(fraction * deletion_rate_s3t(m, n_slices, min(budget, n_slices)))


def shard_probabilities(est: Any, texts: list[str]) -> dict[int, Any]:
    """Each serving shard's class probabilities (the mean of its served stages'), computed
    once per checkpoint: the weightings differ only in how they combine these."""
    import numpy as np

    serving = est._serving()
    routes, n_labels = serving.routes(), len(est.label_names)
    return {shard: np.concatenate([
        serving.ensemble.predict_proba(texts[i:i + 64], vote=False, n_labels=n_labels,
                                       routes={shard: route})
        for i in range(0, len(texts), 64)]) for shard, route in routes.items()}


def combined(probs: dict[int, Any], weights: dict[int, float]) -> Any:
    """The served aggregate (serve/ensemble.py): the plain mean when the weights are equal."""
    values = list(weights.values())
    if all(w == values[0] for w in values):
        return sum(probs[m] for m in weights) / len(weights)
    total = math.fsum(values)
    return sum((w / total) * probs[m] for m, w in weights.items())


def serve_all_ways(est: Any, val: Any, test: Any) -> dict[str, dict[str, Any]]:
    """Test and validation accuracy of what the run serves now, under each weighting: the
    shards' probabilities once, combined with each weighting's served weights, and checked
    against the engine's own predictions on a slice of the test split."""
    import numpy as np

    data = {"test": test, "val": val}
    probs = {name: shard_probabilities(est, list(d.texts)) for name, d in data.items()}
    out = {}
    for mode in MODES:
        est.set_serving(ensemble=mode)
        weights = {m: r.weight for m, r in sorted(est.served().items())}
        served = est.predict(list(test.texts[:32])).probabilities
        gap = float(np.abs(served - combined(probs["test"], weights)[:32]).max())
        assert gap < 1e-5, f"{mode}: the combination differs from what is served by {gap}"
        out[mode] = {f"{name}_accuracy": float(np.mean(
            combined(probs[name], weights).argmax(1) == np.asarray(est._map_labels(d))))
            for name, d in data.items()}
        out[mode]["weights"] = {str(m): w for m, w in weights.items()}
    est.set_serving(ensemble="mean")
    return out


def system_config(system: str, size: dict[str, Any], seed: int) -> Any:
    """The package's defaults at m shards and L slices: S3T with B orderings, or SISA."""
    from s3t.config import S3TConfig

    kw = {"model": harness.backbone(), "shards": size["shards"], "slices": size["slices"],
          "seed": seed, "epochs": size.get("epochs", 3)}
    if system == "sisa":
        return S3TConfig.baseline("sisa", **kw)
    return S3TConfig(budget=size["budget"], **kw)


def run_seed(size: dict[str, Any], seed: int, reuse: str | None = None,
             system: str = "s3t") -> dict[str, Any]:
    """Train once (or open ``reuse``: a run this benchmark trained at the same size and seed,
    before any deletion), then forget in steps up to each capacity fraction, serving all
    ways."""
    from bench.scale import splits
    from s3t.engine import S3T

    train, val, test = splits(size["train"], size["test"], size["val"], seed)
    m, n_slices, budget = size["shards"], size["slices"], size["budget"]
    config = system_config(system, size, seed)
    train_seconds = None
    if reuse is not None:
        est = S3T.load(reuse).set_serving(ensemble="mean")
        if est.config != config or est.status()["deleted"]:
            raise SystemExit(f"{reuse} is not this seed's run before deletions")
    else:
        est = S3T(config, run_dir=harness.tmp_run_dir("ensemble")).fit(train, val,
                                                                        progress=False)
        train_seconds = est.last_train["train_seconds"]
    if size.get("score_size"):
        n = size["score_size"]
        test, val = test.subset(range(min(n, len(test)))), val.subset(range(min(n, len(val))))
    counts = [requests_for(f, m, n_slices, budget) for f in FRACTIONS]
    victims = random.Random(seed).sample(list(train.ids), max(counts))
    checkpoints, done = [], 0
    for fraction, n in zip(FRACTIONS, counts, strict=True):
        for victim in victims[done:n]:
            est.forget([victim])
        done = n
        status = est.status()
        row: dict[str, Any] = {"fraction": fraction, "requests": n,
                               "live_shards": status["live_shards"],
                               "capacity": status["capacity"],
                               "depths": [r["depth"] if r else 0
                                          for _, r in sorted(status["routes"].items())]}
        row["modes"] = serve_all_ways(est, val, test) if status["live_shards"] else {}
        checkpoints.append(row)
        shown = " ".join(f"{k} {v['test_accuracy']:.3f}" for k, v in row["modes"].items())
        print(f"{system} seed {seed} {fraction:.0%} of capacity ({n} requests): depths {row['depths']} "
              f"{shown or 'no shard serves'}", flush=True)
    result = {"system": system, "seed": seed, "train_seconds": train_seconds, "reused_run": reuse,
              "audit_ok": est.audit().ok, "checkpoints": checkpoints}
    est.close()
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per system and fraction: mean test accuracy per mode over the seeds where some shard
    serves, how many seeds that is, and the capacity over every seed."""
    out: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        mine = sorted((r for r in runs if r.get("system", "s3t") == system),
                      key=lambda r: r["seed"])
        for i, fraction in enumerate(FRACTIONS if mine else ()):
            every = [r["checkpoints"][i] for r in mine]
            rows = [c for c in every if c["modes"]]
            out[f"{system} {fraction:g}"] = {
                "system": system, "fraction": fraction, "requests": every[0]["requests"],
                "seeds": len(every), "serving": len(rows),
                "capacity": harness.summarize([c["capacity"] for c in every]),
                **{mode: harness.summarize([c["modes"][mode]["test_accuracy"] for c in rows])
                   for mode in MODES}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--score-size", type=int, default=None,
                   help="score the first N texts of the test and validation splits only")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--resume", action="store_true",
                   help="skip the (system, seed) runs already in the result file")
    p.add_argument("--reuse-run", default=None,
                   help="serve this run (trained by this benchmark for the one seed given, "
                        "same size, no deletion yet; it is changed) instead of training")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    if args.train_size is not None:
        size["train"] = args.train_size
    if args.epochs is not None:
        size["epochs"] = args.epochs
    elif harness.smoke_active():
        size["epochs"] = 1
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    if args.reuse_run and (len(seeds) != 1 or len(args.systems) != 1):
        raise SystemExit("--reuse-run serves one run: give one --seeds and one --systems")
    if args.score_size is not None:
        size["score_size"] = args.score_size
    runs = on_disk(args.quick) if args.resume else []
    for seed in seeds:
        for system in args.systems:
            runs = merged(args, runs)  # with what other processes finished meanwhile
            if (system, seed) in {(r.get("system", "s3t"), r["seed"]) for r in runs}:
                print(f"{system} seed {seed}: in the result file, skipped", flush=True)
                continue
            runs.append(run_seed(size, seed, args.reuse_run, system))
            runs = merged(args, runs)
            write(args.quick, prov, runs)
    summary = write(args.quick, prov, merged(args, runs))
    for row in summary.values():
        print(f"{row['system']} {row['fraction']:.0%} ({row['requests']} requests, "
              f"{row['serving']}/{row['seeds']} seeds serving): " + "  ".join(
                  f"{mode} {row[mode]['mean']:.3f}" if row[mode]["n"] else f"{mode} -"
                  for mode in MODES))
    return 0


def on_disk(quick: bool) -> list[dict[str, Any]]:
    previous = harness.load_result(NAME, quick)
    return list(previous["runs"]) if previous else []


def merged(args: Any, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with, under ``--resume``, the runs other processes wrote meanwhile, in order."""
    if args.resume:
        mine = {(r.get("system", "s3t"), r["seed"]) for r in runs}
        runs = runs + [r for r in on_disk(args.quick)
                       if (r.get("system", "s3t"), r["seed"]) not in mine]
    return sorted(runs, key=lambda r: (SYSTEMS.index(r.get("system", "s3t")), r["seed"]))


def write(quick: bool, prov: dict[str, Any], runs: list[dict[str, Any]]
          ) -> dict[str, dict[str, Any]]:
    """Write ``runs`` and their summary; returns the summary."""
    summary = summarize(runs)
    harness.write_result(NAME, quick, prov, {"runs": runs, "summary": summary})
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
