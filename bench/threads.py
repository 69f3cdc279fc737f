"""Torch threads per stage, and where a retrain after one deletion spends its time.

Why: a run fixes its stages' torch thread count when it is created (``torch_threads``, the
numeric environment: float sums round differently with another count). This measures what
the choice costs: the same small MiniLM run trained locally with 1 and with N threads
(seconds per stage, trunk features against LoRA steps). Then one deletion and a retrain of
the 1-thread run, split into trunk-feature time (the hit cells recomputed) and LoRA steps,
against what training those same stages cost the first time (issue 27 item 2's question:
what would reusing retained samples' trunk features save?).

    python -m bench threads [--quick] [--threads 2]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from bench import harness

NAME = "threads"
QUICK = {"train": 240, "test": 10, "shards": 2, "slices": 3, "budget": 3, "epochs": 1}
FULL = {"train": 1200, "test": 10, "shards": 2, "slices": 3, "budget": 3, "epochs": 2}
SMOKE = {"train": 24, "test": 4, "shards": 2, "slices": 2, "budget": 2, "epochs": 1}


class Timed:
    """Wraps a feature cache: seconds spent computing trunk features (``ensure``)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def ensure(self, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.ensure(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fit(cfg: Any, data: Any, tag: str) -> tuple[Any, dict[str, Any]]:
    from s3t.engine import S3T

    est = S3T(cfg, run_dir=harness.tmp_run_dir(tag))
    timed: dict[str, Timed] = {}
    real = type(est).features

    def features(self: Any) -> Any:  # time the cache the trainer uses
        if "cache" not in timed:
            timed["cache"] = Timed(real.fget(self))
        return timed["cache"]

    type(est).features = property(features)  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        est.fit(data, progress=False)
        wall = time.perf_counter() - started
        summary = est.last_train
        out = {"torch_threads": cfg.torch_threads, "fit_seconds": wall,
               "stages": summary["stages_trained"],
               "features_seconds": timed["cache"].seconds,
               "lora_seconds": sum(summary["stage_seconds"].values()),
               "stage_seconds": summary["stage_seconds"]}
        if cfg.torch_threads == 1:  # profile one deletion and its retrain
            victim = est.ledger.cell_samples(0, 0)[0][0]
            cert = est.forget([victim])
            timed["cache"].seconds = 0.0
            started = time.perf_counter()
            again = est.retrain(progress=False)
            first = {k: v for k, v in summary["stage_seconds"].items()
                     if k in set(cert["erased_stages"])}
            out["retrain"] = {
                "erased_stages": len(cert["erased_stages"]),
                "wall_seconds": time.perf_counter() - started,
                "features_seconds": timed["cache"].seconds,
                "lora_seconds": sum(again["stage_seconds"].values()),
                "first_time_lora_seconds_of_those_stages": sum(first.values()),
                "stages_trained": again["stages_trained"]}
        return est, out
    finally:
        type(est).features = real  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    from s3t.config import S3TConfig

    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="the other thread count")
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seed = harness.seeds_for(args, [0], [0])[0]
    prov = harness.provenance(NAME, args.quick, [seed], size)
    harness.print_header(prov)
    data, _ = harness.wordnet_split(size["train"], size["test"], seed)
    base = S3TConfig(model=harness.backbone(),
                     shards=size["shards"], slices=size["slices"], budget=size["budget"],
                     epochs=size["epochs"], seed=seed, max_seq_len=48)
    runs = {}
    for threads in (1, args.threads):
        _, runs[threads] = fit(dataclasses.replace(base, torch_threads=threads), data,
                               f"threads{threads}")
        r = runs[threads]
        print(f"{threads} thread(s): fit {r['fit_seconds']:.1f} s, {r['stages']} stages, "
              f"trunk features {r['features_seconds']:.1f} s, LoRA steps {r['lora_seconds']:.1f} s",
              flush=True)
        if "retrain" in r:
            x = r["retrain"]
            print(f"retrain after one deletion: {x['stages_trained']} stages in "
                  f"{x['wall_seconds']:.1f} s; trunk features {x['features_seconds']:.1f} s, LoRA "
                  f"steps {x['lora_seconds']:.1f} s (the same stages' LoRA steps the first time: "
                  f"{x['first_time_lora_seconds_of_those_stages']:.1f} s)", flush=True)
    harness.write_result(NAME, args.quick, prov, {"runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
