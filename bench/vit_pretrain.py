"""Pre-train a small ViT on a public part of Fashion-MNIST (the backbone of bench/vit.py).

Why: no pretrained ViT ships offline, and S3T fine-tunes a pretrained backbone. We declare a
seeded part of Fashion-MNIST's training split *public*: it is baked into the backbone, never
enters an S3T run, and so can never be the subject of a deletion request (like the web text
behind a pretrained language model). bench/vit.py fine-tunes on the rest of the training
split, excluding the public ids (``load_fashion_mnist(exclude=...)``), and tests on the test
split, which pre-training never sees.

The model directory is a plain Hugging Face ``ViTForImageClassification`` (safetensors) plus
``public_ids.txt`` (one id per line) and ``pretraining.json`` (what was trained and how).
It is written outside the repository (default ``~/.cache/s3t/vit-fmnist-public``; override
with S3T_VIT_DIR or --out) and reused while its recipe is unchanged.

    python -m bench vit_pretrain [--quick] [--force]
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench import harness

NAME = "vit_pretrain"
#: The recipe: any change here gives a new model (the directory records it).
QUICK = {"public": 3000, "epochs": 3, "hidden": 64, "layers": 6, "heads": 4, "patch": 4,
         "batch": 128, "lr": 2e-3, "test": 2000, "split_seed": 0}
FULL = dict(QUICK, public=15000, epochs=15, test=10000)
#: A backbone that only has to load and run (built in the results directory).
SMOKE = dict(QUICK, public=200, epochs=1, hidden=32, layers=3, heads=2, batch=64, test=100)
RECIPE_FILE = "pretraining.json"


def default_dir(quick: bool) -> Path:
    if harness.smoke_active():
        return harness.results_dir() / "vit-backbone-smoke"
    base = os.environ.get("S3T_VIT_DIR") or Path.home() / ".cache" / "s3t" / "vit-fmnist-public"
    return Path(f"{base}-quick") if quick else Path(base)


def public_indices(n_total: int, n_public: int, seed: int) -> list[int]:
    """The public part: a seeded random subset of the training split's indices, sorted."""
    import numpy as np

    return sorted(np.random.default_rng(seed).choice(n_total, size=n_public, replace=False).tolist())


def read_public_ids(model_dir: str | Path) -> set[str]:
    """Ids a backbone was pre-trained on: they must never be in a run built on it."""
    return set((Path(model_dir) / "public_ids.txt").read_text().split())


def _pixels(images: Any) -> Any:
    """uint8 (N, 28, 28) -> the float (N, 1, 28, 28) the ViT family feeds its models:
    scaled to [0, 1], then normalised with mean = std = 0.5 (s3t.models.vit)."""
    import torch

    return (torch.from_numpy(images.astype("float32") / 255.0)[:, None] - 0.5) / 0.5


def build(size: dict[str, Any], out: Path) -> dict[str, Any]:
    """Pre-train, evaluate on the test split, save to ``out``; return the numbers."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from s3t.data.images import DEFAULT_FASHION_MNIST, FASHION_MNIST_LABELS, _idx_file, read_idx

    torch.manual_seed(size["split_seed"])
    train_x = read_idx(_idx_file(DEFAULT_FASHION_MNIST, "train-images-idx3-ubyte"))
    train_y = read_idx(_idx_file(DEFAULT_FASHION_MNIST, "train-labels-idx1-ubyte"))
    test_x = read_idx(_idx_file(DEFAULT_FASHION_MNIST, "t10k-images-idx3-ubyte"))[: size["test"]]
    test_y = read_idx(_idx_file(DEFAULT_FASHION_MNIST, "t10k-labels-idx1-ubyte"))[: size["test"]]
    public = public_indices(len(train_y), size["public"], size["split_seed"])
    x, y = _pixels(train_x[public]), torch.as_tensor(train_y[public].astype("int64"))

    config = ViTConfig(
        image_size=28, patch_size=size["patch"], num_channels=1, hidden_size=size["hidden"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
        intermediate_size=4 * size["hidden"], num_labels=len(FASHION_MNIST_LABELS),
        id2label=dict(enumerate(FASHION_MNIST_LABELS)),
        label2id={n: i for i, n in enumerate(FASHION_MNIST_LABELS)},
    )
    model = ViTForImageClassification(config)
    steps_per_epoch = -(-len(y) // size["batch"])
    total = steps_per_epoch * size["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=size["lr"], weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=size["lr"], total_steps=total,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(size["split_seed"])
    start, losses = time.perf_counter(), []
    model.train()
    for epoch in range(size["epochs"]):
        order = torch.randperm(len(y), generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * size["batch"]:(step + 1) * size["batch"]]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            running += float(loss.detach())
        losses.append(running / steps_per_epoch)
        print(f"epoch {epoch + 1}/{size['epochs']}: train loss {losses[-1]:.4f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    correct = 0
    with torch.no_grad():
        tx = _pixels(test_x)
        for s in range(0, len(test_y), 500):
            pred = model(pixel_values=tx[s:s + 500]).logits.argmax(-1).numpy()
            correct += int((pred == test_y[s:s + 500]).sum())
    numbers = {"train_seconds": train_seconds, "epoch_losses": losses,
               "test_accuracy": correct / len(test_y), "test_samples": int(len(test_y)),
               "public_samples": len(public), "parameters": sum(p.numel() for p in model.parameters())}

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "public_ids.txt").write_text("".join(f"fmnist-train:{i}\n" for i in public))
    (out / RECIPE_FILE).write_text(json.dumps({"recipe": size, **numbers}, indent=2))
    return numbers


def load_recipe(model_dir: str | Path) -> dict[str, Any] | None:
    """What a model directory was built with (None if it was not built here)."""
    recipe = Path(model_dir) / RECIPE_FILE
    return json.loads(recipe.read_text()) if recipe.is_file() else None


def ensure(quick: bool, out: Path | None = None, force: bool = False) -> Path:
    """The pre-trained model directory for this size, building it if missing or stale."""
    size = SMOKE if harness.smoke_active() else QUICK if quick else FULL
    out = out or default_dir(quick)
    built = load_recipe(out)
    if force or built is None or built.get("recipe") != size:
        prov = harness.provenance(NAME, quick, [size["split_seed"]], size)
        harness.print_header(prov)
        numbers = build(size, out)
        print(f"pre-trained on {numbers['public_samples']} public images in "
              f"{numbers['train_seconds']:.0f} s: test accuracy {numbers['test_accuracy']:.3f} "
              f"({numbers['test_samples']} test images); saved to {out}")
        harness.write_result(NAME, quick, prov, {**numbers, "model_dir": str(out)})
    else:
        print(f"# backbone: {out} (pre-trained earlier with this recipe; --force rebuilds)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="model directory to write")
    p.add_argument("--force", action="store_true", help="rebuild even if the recipe matches")
    args = p.parse_args(argv)
    ensure(args.quick, args.out, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
