"""Serving compute: an encoder's last layer at the first position only, against the whole layer.

Why: the pooler reads only the first position of the last layer, so serving computes that
layer's query, attention output and feed-forward for that position alone
(``EncoderFamily.apply_layers_for_head``; docs/design.md). This measures what that buys in
prediction throughput, side by side in one process: the same run, the same texts, the two
paths interleaved in every repetition (the whole-layer path is the family's plain
``apply_layers``), at batch 1 and batch 32, and checks that both give the same labels and
probabilities within 1e-6.

    python -m bench first_position [--quick] [--seeds 0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import harness
from bench.perf import serving_setup, throughput

NAME = "first_position"
QUICK = {"shards": 5, "slices": 3, "train": 150, "seconds": 1.0, "reps": 2, "batches": [1, 32]}
FULL = dict(QUICK, train=300, seconds=4.0, reps=5)
SMOKE = dict(QUICK, shards=2, slices=2, train=40, seconds=0.05, reps=1, batches=[1, 8])


def main(argv: list[str] | None = None) -> int:
    args = harness.parser(__doc__.splitlines()[0]).parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seed = harness.seeds_for(args, [0], [0])[0]
    prov = harness.provenance(NAME, args.quick, [seed], size)
    harness.print_header(prov)

    est, test, _, _ = serving_setup(size["shards"], size["train"], seed, size["slices"])
    family = est.backbone.family
    first_path = family.apply_layers_for_head

    def whole(texts: list[str]) -> Any:
        family.apply_layers_for_head = family.apply_layers  # type: ignore[method-assign]
        try:
            return est.predict(texts, batch_size=len(texts))
        finally:
            family.apply_layers_for_head = first_path  # type: ignore[method-assign]

    def first(texts: list[str]) -> Any:
        return est.predict(texts, batch_size=len(texts))

    texts = list(test.texts)
    a, b = first(texts).probabilities, whole(texts).probabilities
    agreement = {"max_abs_probability_difference": float(np.abs(a - b).max()),
                 "same_labels": bool((a.argmax(1) == b.argmax(1)).all())}
    print(f"agreement on {len(texts)} texts: {agreement}", flush=True)

    result: dict[str, Any] = {"agreement": agreement}
    for batch in size["batches"]:
        runs: dict[str, list[float]] = {"first_position": [], "whole_layer": []}
        for _ in range(size["reps"]):  # interleaved, so load drifts hit both paths alike
            runs["whole_layer"].append(throughput(whole, texts, batch, size["seconds"]))
            runs["first_position"].append(throughput(first, texts, batch, size["seconds"]))
        speedup = [f / w for f, w in zip(runs["first_position"], runs["whole_layer"], strict=True)]
        result[f"batch_{batch}"] = {"samples_per_s": {k: harness.summarize(v) for k, v in runs.items()},
                                    "speedup": harness.summarize(speedup)}
        print(f"batch {batch}: first position {np.mean(runs['first_position']):.1f}/s, whole "
              f"layer {np.mean(runs['whole_layer']):.1f}/s, speed-up {np.mean(speedup):.2f}x "
              f"({min(speedup):.2f}-{max(speedup):.2f})", flush=True)
    est.close()
    harness.write_result(NAME, args.quick, prov, result)
    return 0 if agreement["same_labels"] and agreement["max_abs_probability_difference"] < 1e-6 \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
