"""The benchmarks' target checks are pure functions of their rows: a target must fail when
the measurement misses it, not only pass when it is met."""

from __future__ import annotations

from bench.ensemble import summarize
from bench.scale import m5_targets


def row(key: str, recipe: str, size: int, seed: int, acc: float) -> dict:
    return {"key": key, "recipe": recipe, "size": size, "seed": seed, "test_accuracy": acc}


def test_m5_targets_compare_common_seeds_with_each_size_s_allowance() -> None:
    runs = [row("s3t_m5", "v3-all", 1000, s, 0.62) for s in (0, 1, 2)]
    runs += [row("sisa_m5", "v2", 1000, s, 0.64) for s in (0, 1, 2)]
    runs += [row("s3t_m5", "v3-all", 4000, 0, 0.770), row("s3t_m5", "v3-all", 4000, 1, 0.90),
             row("sisa_m5", "v2", 4000, 0, 0.785)]       # seed 1 has no SISA row: not compared
    runs += [row("s3t_m5", "v2", 16000, 0, 0.90), row("sisa_m5", "v2", 16000, 0, 0.80)]
    got = {t["target"].split(":")[0]: t for t in m5_targets(runs)}
    assert set(got) == {"at 1000", "at 4000"}, "16000 has no v3-all S3T row: no target"
    assert got["at 1000"]["met"] and "-2.0 points, 3 seeds" in got["at 1000"]["measured"]
    assert not got["at 4000"]["met"] and "-1.5 points, 1 seed)" in got["at 4000"]["measured"]


def test_ensemble_summary_counts_seeds_that_serve_nothing_apart() -> None:
    def run(system: str, seed: int, accs: list[float | None]) -> dict:
        modes = ("mean", "depth", "validation")
        checkpoints = [{"requests": n, "capacity": 0.0 if a is None else 0.5,
                        "modes": {} if a is None else {m: {"test_accuracy": a} for m in modes}}
                       for n, a in zip((0, 5, 13, 25), accs, strict=True)]
        return {"system": system, "seed": seed, "checkpoints": checkpoints}

    summary = summarize([run("s3t", 0, [0.8, 0.7, 0.6, 0.5]),
                         run("sisa", 0, [0.8, 0.6, None, None]),
                         run("sisa", 1, [0.7, 0.5, 0.4, None])])
    assert summary["s3t 0.5"]["mean"]["mean"] == 0.5
    quarter = summary["sisa 0.25"]
    assert (quarter["serving"], quarter["seeds"]) == (1, 2)
    assert quarter["mean"]["mean"] == 0.4 and quarter["capacity"]["n"] == 2
    assert summary["sisa 0.5"]["serving"] == 0 and summary["sisa 0.5"]["mean"]["n"] == 0
