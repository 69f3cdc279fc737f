"""Benchmark: ViT image classification on Fashion-MNIST: S3T against SISA and full LoRA, and
serving through deletions.

Why: the paper's second setting (vision transformers). The backbone is a small ViT that
bench/vit_pretrain.py pre-trains on a public part of Fashion-MNIST's training split (built
on first use, reused after). Every run here fine-tunes on a seeded class-proportional subset
of the *rest* of the training split (the public ids are excluded, and the benchmark checks
that a deletion request for a public id is refused), tests on the test split, then receives
the same uniform random single-sample deletion requests as bench/deletions.py.

    python -m bench vit [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import random
from typing import Any

from bench import deletions, harness, vit_pretrain

NAME = "vit"
QUICK = {"train": 300, "test": 300, "epochs": 1, "cap": 15}
FULL = {"train": 5000, "test": 2000, "epochs": 3, "cap": 40}
SMOKE = {"train": 40, "test": 20, "epochs": 1, "cap": 3}
TITLE = "Fashion-MNIST, small pre-trained ViT: serving through deletions without retraining"


def settings(model: str, m: int, n_slices: int, epochs: int, seed: int) -> list[tuple[str, str, Any]]:
    """S3T at B=1 and B=L, SISA at the same m and L, full LoRA on the same adapted layers."""
    from s3t.config import S3TConfig

    kw = {"model": model, "shards": m, "slices": n_slices, "epochs": epochs, "seed": seed,
          "learning_rate": 2e-3, "batch_size": 32}
    return [
        ("s3t_b1", f"S3T B=1 (m={m}, L={n_slices})", S3TConfig(budget=1, **kw)),
        (f"s3t_b{n_slices}", f"S3T B={n_slices} (m={m}, L={n_slices})",
         S3TConfig(budget=n_slices, **kw)),
        ("sisa", f"SISA (m={m}, L={n_slices})", S3TConfig.baseline("sisa", **kw)),
        ("full", f"full LoRA ({n_slices} layers)", S3TConfig.baseline("full", **kw)),
    ]


def public_forget_refused(config: Any, train: Any, public_id: str) -> bool:
    """A deletion request naming a public (pre-training) id is refused and changes nothing."""
    from s3t.engine import S3T

    small = train.subset(list(range(min(len(train), 40))))
    est = S3T(config, run_dir=harness.tmp_run_dir("public")).fit(small, progress=False)
    before = est.status()
    try:
        est.forget([public_id])
    except (KeyError, ValueError) as err:
        refused = public_id in str(err)
    else:
        refused = False
    return refused and est.status() == before


def main(argv: list[str] | None = None) -> int:
    from s3t.data.images import load_fashion_mnist

    p = harness.add_grid(harness.parser(__doc__.splitlines()[0]))
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    model_dir = vit_pretrain.ensure(args.quick)
    public = vit_pretrain.read_public_ids(model_dir)
    size["backbone"] = {k: v for k, v in vit_pretrain.load_recipe(model_dir).items()
                        if k != "epoch_losses"}
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)

    results: dict[str, dict[str, Any]] = {}
    refused = None
    for seed in seeds:
        train = load_fashion_mnist(limit=size["train"], seed=seed, exclude=public)
        test = load_fashion_mnist(split="test", limit=size["test"], seed=seed)
        if public & set(train.ids):
            raise AssertionError("a public (pre-training) id is in the fine-tuning data")
        victims = random.Random(seed).sample(train.ids, min(size["cap"], len(train)))
        configs = settings(str(model_dir), size["shards"], size["slices"], size["epochs"], seed)
        if refused is None:
            refused = public_forget_refused(configs[0][2], train, min(public))
            print(f"deletion request for public id {min(public)} refused: {refused}")
        deletions.run_settings(results, configs, train, deletions.scorer(test), victims, seed)
    summary = deletions.summarize(results, size["shards"], size["slices"], size["cap"])
    deletions.print_summary(summary)
    harness.write_result(NAME, args.quick, prov, {"results": results, "summary": summary,
                                                 "public_id_forget_refused": refused})
    deletions.plot(results, NAME, args.quick, TITLE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
