"""Benchmark 5: what training costs, S3T (with and without prefix sharing), SISA and full.

Why: S3T buys deletion capacity with training compute: ``B`` orderings per shard, each
costing about ``(L+1)/2`` passes over the shard per epoch. Orderings that share a prefix
share its stages, which this implementation trains once (the authors' scripts train every
ordering from scratch). We measure wall time and sample-passes (samples fed to a training
step, summed over stages and epochs) for

* S3T with prefix sharing: measured (cyclic B=L, where orderings share no prefix, and the
  full budget B=L!, where they share the most);
* S3T without sharing: sample-passes from ``PrefixTree.training_cost(sharing=False)``;
  wall time DERIVED (not measured) as the sum of each measured stage's seconds times the
  number of orderings that would have trained it, plus the measured non-stage overhead;
* SISA and full LoRA fine-tuning: measured.

Sample-passes ignore that an S3T stage of depth ``p`` runs ``p`` adapted layer groups while
SISA and full run all ``L``: the "layer-passes" column (sample-passes times groups run)
accounts for that.

    python -m bench training_cost [--quick] [--seeds 0 1]
"""

from __future__ import annotations

import math
from typing import Any

from bench import harness

NAME = "training_cost"
QUICK = {"train": 96, "epochs": 1}
FULL = {"train": 600, "epochs": 2}
SMOKE = {"train": 24, "epochs": 1}


def settings(m: int, n_slices: int, epochs: int, seed: int) -> list[tuple[str, str, Any]]:
    """(key, label, config) of every measured method."""
    from s3t.config import S3TConfig

    kw = {"model": harness.backbone(), "shards": m, "slices": n_slices, "epochs": epochs, "seed": seed}
    full_budget = math.factorial(n_slices)
    return [
        (f"s3t_cyclic_b{n_slices}", f"S3T cyclic B={n_slices}", S3TConfig(budget=n_slices, **kw)),
        (f"s3t_full_b{full_budget}", f"S3T all orderings B={full_budget}",
         S3TConfig(budget=full_budget, strategy="full", **kw)),
        ("sisa", "SISA", S3TConfig.baseline("sisa", **kw)),
        ("full", "full LoRA", S3TConfig.baseline("full", **kw)),
    ]


def uses(prefix: tuple[int, ...], orderings: list[tuple[int, ...]]) -> int:
    """How many orderings begin with ``prefix``: without sharing, each trains it anew."""
    return sum(o[:len(prefix)] == prefix for o in orderings)


def measure(config: Any, train: Any) -> dict[str, Any]:
    """Fit once; read what was trained (stage sizes and seconds) from the ledger."""
    from s3t.engine import S3T

    est = S3T(config, run_dir=harness.tmp_run_dir(config.method)).fit(train, progress=False)
    summary = est.last_train
    seconds = summary["stage_seconds"]
    stages = [r for r in est.ledger.stages(None) if r.key in seconds]
    epochs = config.epochs
    groups = est.method.active_groups
    shard_sizes = [sum(len(est.ledger.cell_samples(m, s)) for s in range(config.slices))
                   for m in range(config.shards)]
    stage_total = sum(seconds.values())
    overhead = summary["train_seconds"] - stage_total
    row = {
        "train_seconds": summary["train_seconds"], "stage_seconds": stage_total,
        "overhead_seconds": overhead, "stages": len(stages),
        "sample_passes": sum(r.n_samples for r in stages) * epochs,
        "layer_passes": sum(r.n_samples * groups(len(r.prefix)) for r in stages)
        * epochs * config.layers_per_slice,
        "planned_sample_passes": sum(est.tree.training_cost(n, epochs, sharing=True)
                                     for n in shard_sizes),
    }
    if config.method == "s3t":
        orderings = est.tree.orderings
        derived_stage = sum(seconds[r.key] * uses(r.prefix, orderings) for r in stages)
        row["no_sharing"] = {
            "stages": est.tree.count_without_sharing() * config.shards,
            "sample_passes": sum(est.tree.training_cost(n, epochs, sharing=False) for n in shard_sizes),
            "layer_passes": sum(r.n_samples * len(r.prefix) * uses(r.prefix, orderings) for r in stages)
            * epochs * config.layers_per_slice,
            "derived_stage_seconds": derived_stage,
            "derived_train_seconds": derived_stage + overhead,
        }
    return row


def aggregate(runs: list[dict[str, Any]], epochs: int) -> dict[str, dict[str, Any]]:
    """Per method (and S3T without sharing): means over seeds, per epoch and total."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(r["key"] for r in runs):
        mine = [r for r in runs if r["key"] == key]
        out[key] = summary_row(mine[0]["label"], "measured", mine, epochs)
        if "no_sharing" in mine[0]:
            flat = [dict(r["no_sharing"], train_seconds=r["no_sharing"]["derived_train_seconds"])
                    for r in mine]
            out[f"{key}_no_sharing"] = summary_row(
                f"{mine[0]['label']}, no sharing", "derived (wall) / planned (passes)", flat, epochs)
    return out


def summary_row(label: str, kind: str, rows: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    passes = rows[0]["sample_passes"]
    return {"label": label, "kind": kind, "stages": rows[0]["stages"],
            "sample_passes": passes, "sample_passes_per_epoch": passes / epochs,
            "layer_passes": rows[0]["layer_passes"],
            "train_seconds": harness.summarize([r["train_seconds"] for r in rows])}


def planned_savings(max_slices: int = 6) -> list[dict[str, Any]]:
    """What prefix sharing saves by plan alone (no training): one shard of 1 sample-unit."""
    from s3t.plan import PrefixTree, make_orderings

    rows = []
    for n in range(3, max_slices + 1):
        for strategy, budget in (("cyclic", n), ("cyclic", 2 * n), ("full", math.factorial(n))):
            if strategy == "cyclic" and budget >= math.factorial(n):
                continue  # the full budget, listed once
            tree = PrefixTree(make_orderings(strategy, n, budget))
            shared, unshared = tree.training_cost(n, sharing=True), tree.training_cost(n, sharing=False)
            rows.append({"L": n, "strategy": strategy, "budget": budget, "stages": tree.count(),
                         "stages_no_sharing": tree.count_without_sharing(),
                         "passes_ratio": shared / unshared})
    return rows


def plot(summary: dict[str, dict[str, Any]], quick: bool) -> None:
    """Wall time and sample-passes per method; derived bars hatched."""
    plt = harness.pyplot()
    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = list(summary)
    labels = [summary[k]["label"].replace(", ", ",\n") for k in keys]
    derived = ["derived" in summary[k]["kind"] for k in keys]
    for ax, values, ylabel in (
        (ax_t, [summary[k]["train_seconds"]["mean"] for k in keys], "training wall time (s)"),
        (ax_p, [summary[k]["sample_passes"] for k in keys], "sample-passes (all epochs)"),
    ):
        bars = ax.bar(range(len(keys)), values, color="#8fb3d9", edgecolor="k")
        for bar, is_derived in zip(bars, derived, strict=True):
            if is_derived:
                bar.set_hatch("//")
                bar.set_facecolor("white")
        ax.set_xticks(range(len(keys)), labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_t.set_title("hatched: derived from measured stage seconds")
    ax_p.set_title("hatched: PrefixTree.training_cost(sharing=False)")
    harness.save_plot(fig, NAME, quick)


def main(argv: list[str] | None = None) -> int:
    p = harness.add_grid(harness.parser(__doc__.splitlines()[0]))
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0, 1])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    runs = []
    for seed in seeds:
        train, _ = harness.wordnet_split(size["train"], 50, seed)
        for key, label, config in settings(size["shards"], size["slices"], size["epochs"], seed):
            row = measure(config, train)
            row.update(key=key, label=label, seed=seed)
            runs.append(row)
            print(f"seed {seed}  {label:<28} {row['train_seconds']:7.1f} s  {row['stages']:>3} stages  "
                  f"{row['sample_passes']:>7} sample-passes (planned {row['planned_sample_passes']:.0f})",
                  flush=True)
    summary = aggregate(runs, size["epochs"])
    for row in summary.values():
        t = row["train_seconds"]
        print(f"{row['label']:<40} {t['mean']:7.1f} s  {row['sample_passes_per_epoch']:>8.0f} passes/epoch  "
              f"{row['layer_passes']:>8.0f} layer-passes  [{row['kind']}]")
    planned = planned_savings()
    harness.write_result(NAME, args.quick, prov, {"runs": runs, "summary": summary,
                                                 "planned_savings": planned})
    plot(summary, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
