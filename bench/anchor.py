"""Benchmark 28: anchor data: every shard trains on the never-deletable data (issue 28, item 3).

Why: at m=5 a shard holds a fifth of the training data, and at 1,000 glosses S3T trails SISA
most. Where part of the data is ``deletable=false`` (licensed, public, consented-forever),
``S3TConfig.anchor`` lets every shard train on all of it in its first slice, which cannot
weaken the isolation of the deletable data (an anchor sample is never forgotten). This
trains, per seed and on the same splits as the scale benchmark (section 15: a fixed test
split, a seeded training subset and validation split), with a seeded ``--fraction`` of the
training glosses marked ``deletable=false``: S3T m=5 (L=3, B=3, recipe ``v3-all``, the
package's default allocation 'all') and SISA m=5 (L=3 slice checkpoints), each without
anchor (the never-deletable glosses partitioned like the rest) and with it. Reported: test
and validation accuracy, training time, stages trained and the anchor set's size.

Results are written after every run; ``--resume`` skips the runs already in the result file
(and merges what other ``--resume`` processes wrote), so seeds can run side by side.

    python -m bench anchor [--quick] [--seeds 0 1 2] [--sizes 1000] [--fraction 0.2]
        [--settings s3t_m5 s3t_m5_anchor sisa_m5 sisa_m5_anchor] [--resume]
"""

from __future__ import annotations

import random
from typing import Any

from bench import harness
from bench.scale import RECIPES, splits

NAME = "anchor"
RECIPE = "v3-all"
#: (key, method, anchor); the same shards and slices for all (m=5 but at the smoke size).
SETTINGS = (("s3t_m5", "s3t", False), ("s3t_m5_anchor", "s3t", True),
            ("sisa_m5", "sisa", False), ("sisa_m5_anchor", "sisa", True))
FULL = {"sizes": [1000], "test": 2000, "val": 256, "shards": 5, "slices": 3, "budget": 3,
        "fraction": 0.2}
QUICK = {"sizes": [300], "test": 300, "val": 64, "shards": 5, "slices": 3, "budget": 3,
         "fraction": 0.2, "epochs": 1}
SMOKE = {"sizes": [60], "test": 20, "val": 16, "shards": 2, "slices": 2, "budget": 2,
         "fraction": 0.2, "epochs": 1}


def mark_anchors(train: Any, fraction: float, seed: int) -> list[str]:
    """Mark a seeded ``fraction`` of ``train`` ``deletable=false`` (in place); their ids."""
    chosen = set(random.Random(seed).sample(list(train.ids), round(fraction * len(train))))
    train.deletable = [sid not in chosen for sid in train.ids]
    return sorted(chosen)


def label_of(size: dict[str, Any], method: str, anchor: bool) -> str:
    m, n_slices = size["shards"], size["slices"]
    name = f"S3T m={m} L={n_slices} B={size['budget']}" if method == "s3t" else \
        f"SISA m={m} L={n_slices}"
    return name + (", anchor" if anchor else "")


def config_for(size: dict[str, Any], seed: int, method: str, anchor: bool) -> Any:
    """The setting's config: the scale benchmark's m=5 recipe, with or without anchor."""
    from s3t.config import S3TConfig

    kw = {"model": harness.backbone(), "shards": size["shards"], "slices": size["slices"],
          "seed": seed, "anchor": anchor, **RECIPES[RECIPE]}
    if "epochs" in size:
        kw["epochs"] = size["epochs"]
    if method == "sisa":
        return S3TConfig.baseline("sisa", **kw)
    return S3TConfig(budget=size["budget"], **kw)


def run_one(config: Any, train: Any, val: Any, test: Any) -> dict[str, Any]:
    """Fit one setting; score it on the test and validation splits."""
    from s3t.engine import S3T

    est = S3T(config, run_dir=harness.tmp_run_dir(NAME)).fit(train, val, progress=False)
    row = {"test_accuracy": est.score(test), "val_accuracy": est.score(val),
           "train_seconds": est.last_train["train_seconds"],
           "stages_trained": est.last_train["stages_trained"],
           "anchor_samples": est.status().get("anchor_samples", 0)}
    est.close()
    return row


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and setting: accuracy over seeds, and the gain of anchor over the same
    method without it on the seeds both ran (the same data)."""
    out = []
    for n in sorted({r["size"] for r in runs}):
        here = [r for r in runs if r["size"] == n]
        for key, method, anchor in SETTINGS:
            rows = [r for r in here if r["key"] == key]
            if not rows:
                continue
            row = {"size": n, "key": key, "label": rows[0]["label"], "method": method,
                   "anchor": anchor,
                   **{k: harness.summarize([r[k] for r in rows])
                      for k in ("test_accuracy", "val_accuracy", "train_seconds")},
                   "stages_trained": rows[0]["stages_trained"],
                   "anchor_samples": rows[0]["anchor_samples"], "gain": None}
            base = {r["seed"]: r["test_accuracy"] for r in here if r["key"] == f"{method}_m5"}
            if anchor and any(r["seed"] in base for r in rows):
                row["gain"] = harness.summarize([r["test_accuracy"] - base[r["seed"]]
                                                 for r in rows if r["seed"] in base])
            out.append(row)
    return out


def merged(resume: bool, quick: bool, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``runs`` with, under ``--resume``, the runs another process wrote meanwhile."""
    if resume:
        mine = {(r["size"], r["seed"], r["key"]) for r in runs}
        runs = runs + [r for r in (harness.load_result(NAME, quick) or {}).get("runs", [])
                       if (r["size"], r["seed"], r["key"]) not in mine]
    return sorted(runs, key=lambda r: (r["size"], r["seed"], r["key"]))


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="training glosses")
    p.add_argument("--fraction", type=float, default=None,
                   help="share of the training glosses marked deletable=false")
    p.add_argument("--settings", nargs="+", choices=[s[0] for s in SETTINGS], default=None)
    p.add_argument("--resume", action="store_true",
                   help="skip the runs already in the result file")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    if args.sizes:
        size["sizes"] = args.sizes
    if args.fraction is not None:
        if not 0 < args.fraction < 1:
            raise SystemExit(f"--fraction must be in (0, 1), got {args.fraction}")
        size["fraction"] = args.fraction
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    runs = merged(args.resume, args.quick, [])
    for n in size["sizes"]:
        for seed in seeds:
            train = None
            for key, method, anchor in SETTINGS:
                runs = merged(args.resume, args.quick, runs)
                if args.settings and key not in args.settings or any(
                        (r["size"], r["seed"], r["key"]) == (n, seed, key) for r in runs):
                    continue
                if train is None:  # the same splits and anchor set for every setting
                    train, val, test = splits(n, size["test"], size["val"], seed)
                    anchors = mark_anchors(train, size["fraction"], seed)
                config = config_for(size, seed, method, anchor)
                row = run_one(config, train, val, test)
                label = label_of(size, method, anchor)
                row.update(size=n, seed=seed, key=key, label=label,
                           never_deletable=len(anchors), config=config.to_dict())
                runs.append(row)
                print(f"n={n} seed {seed}  {label:<26} test {row['test_accuracy']:.3f}  val "
                      f"{row['val_accuracy']:.3f}  train {row['train_seconds']:.0f} s", flush=True)
                runs = merged(args.resume, args.quick, runs)
                harness.write_result(NAME, args.quick, prov,
                                     {"runs": runs, "summary": summarize(runs)})
    summary = summarize(runs)
    harness.write_result(NAME, args.quick, prov, {"runs": runs, "summary": summary})
    for r in summary:
        gain = "" if r["gain"] is None else f"  gain {100 * r['gain']['mean']:+.1f} points"
        print(f"n={r['size']} {r['label']:<26} test {r['test_accuracy']['mean']:.3f} ± "
              f"{r['test_accuracy']['std']:.3f} (n={r['test_accuracy']['n']}){gain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
