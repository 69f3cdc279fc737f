"""Every benchmark once: its module, the BENCHMARKS.md sections it produces, its purpose,
the result files it writes and the arguments of its smoke size.

A benchmark not listed here is not run by ``python -m bench --smoke all`` nor by
tests/test_bench_smoke.py, which also fails when a bench/ module with a ``main`` is missing
here, or when a section number disagrees with BENCHMARKS.md's headings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: ``python -m bench NAME`` runs ``bench.NAME.main(args)``."""

    name: str
    sections: tuple[int, ...]  # BENCHMARKS.md "## N." headings its results fill (() if none)
    purpose: str               # one line
    results: tuple[str, ...]   # result kinds it writes: bench/results/<kind>[-quick].json
    smoke: tuple[str, ...] | None  # its arguments at the smoke size (seconds; None: missing)

    @property
    def module(self) -> str:
        return f"bench.{self.name}"


#: The smoke sizes check that each benchmark runs end to end, not what it measures: all of
#: them together, in one process (``python -m bench --smoke all``, tests/test_bench_smoke.py),
#: are budgeted at 180 CPU seconds, children included (``cpu_s`` in smoke-summary.json).
SMOKE = ("--smoke", "--seeds", "0")
#: Benchmarks on a shards x slices grid: two slices at the smoke size (fewer stages).
GRID_SMOKE = (*SMOKE, "--slices", "2")

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("accuracy", (1,), "test accuracy of S3T against SISA and full LoRA fine-tuning",
              ("accuracy",), GRID_SMOKE),
    Benchmark("deletions", (2,), "served accuracy and capacity through deletion requests",
              ("deletions",), GRID_SMOKE),
    Benchmark("deletion_cost", (3,), "cost of a deletion until an exact model serves",
              ("deletion_cost",), GRID_SMOKE),
    Benchmark("deletion_rate", (4,), "simulated deletion rate against the closed forms",
              ("deletion_rate",), SMOKE),
    Benchmark("training_cost", (5,), "training cost: prefix sharing, SISA, full",
              ("training_cost",), GRID_SMOKE),
    Benchmark("perf", (6,), "feature cache, shared-trunk serving, forget latency, memory",
              ("perf",), SMOKE),
    Benchmark("cache", (7,), "feature-cache storage: memory, memory-mapped spill, float16",
              ("cache",), SMOKE),
    Benchmark("vit_pretrain", (8,), "pre-train the small ViT backbone of the ViT benchmark",
              ("vit_pretrain",), SMOKE),
    Benchmark("vit", (8,), "ViT image classification on Fashion-MNIST through deletions",
              ("vit",), GRID_SMOKE),
    Benchmark("llm", (9,), "LLM instruction tuning (SmolLM2) through deletions",
              ("llm",), SMOKE),
    Benchmark("faults", (10, 20), "kill -9 of s3t forget/retrain at random moments",
              ("faults", "faults-swap"), SMOKE),
    Benchmark("service", (11, 22, 25), "`s3t serve` under concurrent HTTP load",
              ("service",), SMOKE),
    Benchmark("stream", (12,), "a Poisson deletion stream through the server, S3T against SISA",
              ("stream",), SMOKE),
    Benchmark("bulk_deletion", (24,), "10,000 ids in one deletion request over HTTP, ids "
              "and OpenDSR shapes (issue 25)", ("bulk-deletion",), SMOKE),
    Benchmark("sweep", (26,), "sustainable deletion rate: S3T, SISA and full retraining on "
              "the real server, two at a time on pinned cores (issue 27)", ("sweep",), SMOKE),
    Benchmark("distributed", (13,), "stage training on Ray against the local executor",
              ("distributed",), (*SMOKE, "--workers", "1")),  # one worker process per Ray instance
    Benchmark("mia", (14,), "membership inference: forgotten samples look never seen",
              ("mia",), SMOKE),
    Benchmark("scale", (15, 16, 17, 18),
              "accuracy against training-set size; recipes; deletions; serve_orderings",
              ("scale", "recipe", "scale_deletions", "orderings"),
              (*SMOKE, "--settings", "s3t_m2", "sisa_m2", "full")),
    Benchmark("first_position", (19,), "serving compute: last layer at the first position only",
              ("first_position",), SMOKE),
    Benchmark("threads", (), "torch threads per stage; a retrain's time split (issue 27)",
              ("threads",), SMOKE),
    Benchmark("backups", (21,), "backups taken during deletions, restored with replay: nothing "
              "resurrected (issue 24)", ("backups",), SMOKE),
    Benchmark("retrain_cost", (23,), "a retrain after one deletion against the first training "
              "of its stages, profiled by phase (issue 27)", ("retrain_cost",), SMOKE),
    Benchmark("ensemble", (27,), "weighing shards: mean, depth, validation, through deletions "
              "(issue 28)", ("ensemble",), SMOKE),
    Benchmark("anchor", (28,), "anchor data: every shard trains on the never-deletable data "
              "(issue 28)", ("anchor",), SMOKE),
    Benchmark("gpu", (), "prepared check for a GPU machine: CUDA numeric environment, tiny "
              "run verified", (), ("--smoke",)),
    Benchmark("page_screenshot", (), "the operator page of `s3t serve` in headless Chromium "
              "(README)", ("operator-page.png",), ("--smoke",)),
)

BY_NAME = {b.name: b for b in BENCHMARKS}


def get(name: str) -> Benchmark:
    """The benchmark called ``name``, or a one-line error listing the names."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise SystemExit(f"no benchmark {name!r}: choose one of {', '.join(BY_NAME)} "
                         "(python -m bench --list)") from None
