"""Benchmark: instruction tuning SmolLM2-135M-Instruct: S3T against SISA and full LoRA
(held-out perplexity), and serving through deletions.

Why: the paper's third setting (instruction-tuned Llama models). The data is the built-in
WordNet instruction set ("What does the word X mean?" -> its gloss), split into a training
part and a held-out part; perplexity counts response tokens only. Every method fine-tunes
the same top layers with LoRA on every attention and MLP projection, then receives the same
uniform random single-sample deletion requests as bench/deletions.py; perplexity of the
ensemble of live shards (mean of their next-token probabilities) is measured at a few
request counts (each evaluation runs the 135M model over the held-out set).

Sized for 2 cores: a few hundred short samples, 4 of the 30 layers adapted, one
epoch; see BENCHMARKS.md for what that cut.

    python -m bench llm [--quick] [--seeds 0]
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from bench import deletions, harness

NAME = "llm"
QUICK = {"train": 48, "test": 16, "epochs": 1, "cap": 4, "shards": 2, "slices": 2,
         "layers_per_slice": 1, "max_seq_len": 64, "measure_at": [0, 1, 2, 4]}
FULL = {"train": 600, "test": 64, "epochs": 1, "cap": 20, "shards": 2, "slices": 2,
        "layers_per_slice": 2, "max_seq_len": 64, "measure_at": [0, 1, 2, 3, 5, 8, 12, 20]}
SMOKE = dict(QUICK, train=8, test=4, cap=2, measure_at=[0, 1, 2])
TITLE = "WordNet instructions, SmolLM2-135M-Instruct: serving through deletions"


def settings(model: str, size: dict[str, Any], seed: int) -> list[tuple[str, str, Any]]:
    """S3T at B=L, SISA at the same m and L, full LoRA on the same adapted layers."""
    from s3t.config import S3TConfig

    m, n_slices = size["shards"], size["slices"]
    kw = {"model": model, "shards": m, "slices": n_slices, "epochs": size["epochs"], "seed": seed,
          "layers_per_slice": size["layers_per_slice"], "max_seq_len": size["max_seq_len"],
          "learning_rate": 1e-3, "batch_size": 8}
    adapted = n_slices * size["layers_per_slice"]
    return [
        (f"s3t_b{n_slices}", f"S3T B={n_slices} (m={m}, L={n_slices})",
         S3TConfig(budget=n_slices, **kw)),
        ("sisa", f"SISA (m={m}, L={n_slices})", S3TConfig.baseline("sisa", **kw)),
        ("full", f"full LoRA ({adapted} layers)", S3TConfig.baseline("full", **kw)),
    ]


def perplexity(heldout: Any, log: list[dict[str, Any]]) -> deletions.Evaluate:
    """Ensemble perplexity on ``heldout``; the whole evaluation (per route too) goes to ``log``."""
    def evaluate(est: Any) -> float:
        result = est.evaluate_lm(heldout)
        log.append(result)
        return result["perplexity"]
    return evaluate


def base_perplexity(model_dir: str, heldout: Any, max_len: int) -> float:
    """Perplexity of the pretrained model itself (no fine-tuning) on the same tokens."""
    import math

    import torch
    import torch.nn.functional as F

    from s3t.models.decoder import DecoderFamily

    family = DecoderFamily()
    model, tokenizer = family.load(model_dir, num_labels=1)
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(heldout), 8):
            batch = family.encode(tokenizer, heldout.texts[start:start + 8], max_len)
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            keep = targets != -100
            nll += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    from s3t.data.loaders import load_wordnet_instructions, train_test_split

    p = harness.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    size = harness.size_for(args, QUICK, FULL, SMOKE)
    seeds = harness.seeds_for(args, [0], [0, 1, 2])
    prov = harness.provenance(NAME, args.quick, seeds, size)
    harness.print_header(prov)
    model = harness.backbone("llm")

    results: dict[str, dict[str, Any]] = {}
    base: dict[int, float] = {}
    for seed in seeds:
        data = load_wordnet_instructions(limit=size["train"] + size["test"], seed=seed)
        train, heldout = train_test_split(data, size["test"], seed=seed)
        victims = random.Random(seed).sample(train.ids, min(size["cap"], len(train)))
        base[seed] = base_perplexity(model, heldout, size["max_seq_len"])
        print(f"seed {seed}  pretrained model (no fine-tuning): held-out perplexity "
              f"{base[seed]:.3f}", flush=True)
        for key, label, config in settings(model, size, seed):
            log: list[dict[str, Any]] = []
            run = deletions.run_sequence(config, train, perplexity(heldout, log), victims,
                                         metric="perplexity", measure_at=size["measure_at"])
            run["seed"] = seed
            run["evaluation_at_0"] = log[0]
            results.setdefault(key, {"label": label, "runs": []})["runs"].append(run)
            routes = ", ".join(f"{r['perplexity']:.2f}" for r in log[0]["per_route"].values())
            print(f"seed {seed}  {label:<22} held-out perplexity {log[0]['perplexity']:.3f} "
                  f"(routes: {routes}; trained in {run['train_seconds']:.0f} s) -> retrain needed "
                  f"after {run['requests_until_retrain']} requests", flush=True)
    summary = deletions.summarize(results, size["shards"], size["slices"], size["cap"],
                                  metric="perplexity", checkpoints=size["measure_at"])
    deletions.print_summary(summary, metric="perplexity")
    harness.write_result(NAME, args.quick, prov, {"results": results, "summary": summary,
                                                 "base_perplexity": base})
    deletions.plot(results, NAME, args.quick, TITLE, metric="perplexity",
                   ylabel="held-out perplexity (live shards' ensemble)",
                   reference=(float(np.mean(list(base.values()))), "pretrained, no fine-tuning"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
