"""Feature-cache storage: in memory, spilled to memory-mapped files, float16; and the cached
training speed-up on a deep backbone.

Why: the cache holds every layer-group boundary of every sample, so it outgrows RAM on
large data; blocks beyond ``feature_cache_memory_gb`` go to memory-mapped files in the run
(erased by deletions like stage files) and ``feature_cache_dtype="float16"`` halves it.
Spilling must not change a single weight; float16 changes them by rounding, so its effect
on accuracy is measured here. Every run is a fresh process (peak memory), variants
alternate within each seed.

The second part measures cached against uncached training where the frozen trunk is most
of the model (SmolLM2-135M, 3 of its 30 layers adapted), next to bench/perf.py's MiniLM
configuration (3 of 6 adapted), where the arithmetic caps the gain near 1.5x.

    python -m bench cache [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness

NAME = "cache"
QUICK = {"train": 150, "test": 100, "epochs": 1, "llm_train": 12, "llm_reps": 1}
FULL = {"train": 600, "test": 300, "epochs": 2, "llm_train": 32, "llm_reps": 2}
SMOKE = {"train": 40, "test": 20, "epochs": 1, "llm_train": 4, "llm_reps": 1}
VARIANTS = {  # name -> S3TConfig fields
    "memory_fp32": {},
    "spilled_fp32": {"feature_cache_memory_gb": 0.0},
    "memory_fp16": {"feature_cache_dtype": "float16"},
    "spilled_fp16": {"feature_cache_dtype": "float16", "feature_cache_memory_gb": 0.0},
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_bytes(path: Path | None) -> int:
    """Bytes under ``path`` (None: nothing was spilled)."""
    if path is None or not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def child_wordnet(variant: str, n_train: int, n_test: int, epochs: int, seed: int) -> dict:
    """Train MiniLM on WordNet with one storage variant; time, memory, cache size, accuracy."""
    from s3t import S3T, S3TConfig

    train, test = harness.wordnet_split(n_train, n_test, seed)
    config = S3TConfig(model=harness.backbone(),
                       shards=2, slices=3, budget=3, epochs=epochs, seed=seed, **VARIANTS[variant])
    est = S3T(config, run_dir=harness.tmp_run_dir("cache")).fit(train, progress=False)
    spilled = disk_bytes(est.features.directory)
    probs = est.predict(test.texts).probabilities
    labels = np.array([est.label_names.index(test.label_names[y]) for y in test.labels])
    return {"train_seconds": est.last_train["train_seconds"], "peak_rss_mib": peak_rss_mib(),
            "cache_bytes_in_memory": est.features.bytes_in_memory, "cache_bytes_on_disk": spilled,
            "accuracy": float((probs.argmax(1) == labels).mean()), "probabilities": probs.tolist()}


def child_llm(cache: bool, n_train: int, seed: int) -> dict:
    """SmolLM2, 3 of 30 layers adapted: cached or uncached training time."""
    from s3t import S3T, S3TConfig
    from s3t.data.loaders import load_wordnet_instructions

    data = load_wordnet_instructions(limit=n_train, seed=seed)
    config = S3TConfig(model=harness.backbone("llm"), shards=1, slices=3, budget=3, epochs=2,
                       batch_size=8, max_seq_len=64, seed=seed, feature_cache=cache)
    est = S3T(config, run_dir=harness.tmp_run_dir("cache-llm")).fit(data, progress=False)
    return {"train_seconds": est.last_train["train_seconds"], "peak_rss_mib": peak_rss_mib(),
            "stages": est.last_train["stages_trained"]}


def run_child(*args: Any) -> dict:
    """A fresh process per measurement (peak memory is per process). At the smoke size, the
    child's code runs in this process (a process would import torch again)."""
    if harness.smoke_active():
        return json.loads(json.dumps(child(*map(str, args))))
    out = subprocess.run(harness.bench_cmd("cache", "--child", *args), check=True,
                         cwd=harness.REPO_DIR, env=harness.child_env(),
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])




def child(kind: str, *rest: str) -> dict:
    """What one child process measures (``--child KIND ARGS``)."""
    if kind == "wordnet":
        return child_wordnet(rest[0], *map(int, rest[1:]))
    return child_llm(bool(int(rest[0])), int(rest[1]), int(rest[2]))


def storage(size: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        names = list(VARIANTS) if seed % 2 == 0 else list(reversed(VARIANTS))
        for variant in names:
            r = run_child("wordnet", variant, size["train"], size["test"], size["epochs"], seed)
            r["seed"] = seed
            runs[variant].append(r)
            print(f"  seed {seed} {variant:<13} {r['train_seconds']:6.1f} s  peak {r['peak_rss_mib']:5.0f} "
                  f"MiB  cache RAM {r['cache_bytes_in_memory'] / 2**20:6.1f} MiB  disk "
                  f"{r['cache_bytes_on_disk'] / 2**20:6.1f} MiB  accuracy {r['accuracy']:.3f}",
                  flush=True)
    summary = {}
    base = {r["seed"]: np.array(r["probabilities"]) for r in runs["memory_fp32"]}
    for variant, rows in runs.items():
        diffs = [float(np.abs(np.array(r["probabilities"]) - base[r["seed"]]).max()) for r in rows]
        agree = [float((np.array(r["probabilities"]).argmax(1) == base[r["seed"]].argmax(1)).mean())
                 for r in rows]
        summary[variant] = {
            "train_seconds": harness.summarize([r["train_seconds"] for r in rows]),
            "time_ratio_to_memory_fp32": harness.summarize(
                [r["train_seconds"] / b["train_seconds"] for r, b in zip(rows, runs["memory_fp32"],
                                                                         strict=True)]),
            "peak_rss_mib": harness.summarize([r["peak_rss_mib"] for r in rows]),
            "cache_mib_in_memory": harness.summarize([r["cache_bytes_in_memory"] / 2**20 for r in rows]),
            "cache_mib_on_disk": harness.summarize([r["cache_bytes_on_disk"] / 2**20 for r in rows]),
            "accuracy": harness.summarize([r["accuracy"] for r in rows]),
            "max_abs_probability_change": max(diffs),
            "prediction_agreement": harness.summarize(agree),
        }
    for rows in runs.values():
        for r in rows:
            del r["probabilities"]
    return {"config": "MiniLM, WordNet, m=2, L=3, B=3, 3 of 6 layers adapted",
            "runs": runs, "summary": summary}


def deep_backbone(size: dict[str, Any], seed: int) -> dict[str, Any]:
    rows = []
    for rep in range(size["llm_reps"]):
        pair = {}
        for cache in ((True, False) if rep % 2 == 0 else (False, True)):
            pair[cache] = run_child("llm", int(cache), size["llm_train"], seed)
            print(f"  SmolLM2 rep {rep}: cache={cache} {pair[cache]['train_seconds']:.1f} s, "
                  f"peak {pair[cache]['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append({"cached": pair[True], "uncached": pair[False],
                     "speedup": pair[False]["train_seconds"] / pair[True]["train_seconds"]})
    return {"config": f"SmolLM2-135M-Instruct, WordNet instructions ({size['llm_train']} samples), "
                      "m=1, L=3, B=3 (3 of 30 layers adapted), 2 epochs, 64 tokens",
            "reps": rows, "speedup": harness.summarize([r["speedup"] for r in rows])}


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--child", nargs="+", help=harness.argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    print("storage variants (MiniLM, WordNet)", flush=True)
    stored = storage(size, seeds)
    for variant, row in stored["summary"].items():
        print(f"{variant:<13} time x{row['time_ratio_to_memory_fp32']['mean']:.2f}  accuracy "
              f"{row['accuracy']['mean']:.3f}  max |dp| {row['max_abs_probability_change']:.2e}  "
              f"agreement {row['prediction_agreement']['mean']:.3f}")
    print("cached vs uncached training on a deep backbone", flush=True)
    deep = deep_backbone(size, seeds[0])
    print(f"SmolLM2 speed-up {deep['speedup']['mean']:.2f}x", flush=True)
    harness.write_result(NAME, args.quick, prov, {"storage": stored, "deep_backbone": deep})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
