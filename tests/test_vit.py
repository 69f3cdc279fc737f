"""ViT image classifiers behind the same engine: image loaders, the family, exactness, isolation,
audit and the CLI, on a tiny random ViT (28x28 grey, 16 patches + CLS) and Fashion-MNIST."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_exactness import (
    assert_served_equal_scratch,
    config,
    pick_victims,
    stage_by_stage_changes,
    stage_lora,
)
from tiny import make_tiny_vit
from transformers import ViTImageProcessor
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import S3TConfig
from s3t.data import images
from s3t.data.images import (
    FASHION_MNIST_LABELS,
    decode_image,
    load_fashion_mnist,
    load_image_folder,
    png_data_uri,
    read_idx,
)
from s3t.data.loaders import load_source
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone

REAL = images.DEFAULT_FASHION_MNIST


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    return make_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="module")
def fmnist() -> object:
    return load_fashion_mnist(limit=72, seed=0)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_fashion_dir(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> Path:
    """A miniature Fashion-MNIST: class k is a bright horizontal band at row 2k + 4, plus noise."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        pixels = rng.integers(0, 60, size=(n, 28, 28))
        for i, y in enumerate(labels):
            pixels[i, 2 * y + 4: 2 * y + 7] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", pixels, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


# --------------------------------------------------------------------------- loaders


def test_real_fashion_mnist_idx_files():
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        pixels = read_idx(REAL / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(REAL / f"{prefix}-labels-idx1-ubyte.gz")
        assert pixels.shape == (n, 28, 28) and pixels.dtype == np.uint8
        assert labels.shape == (n,)
        assert set(Counter(labels.tolist())) == set(range(10))
        assert set(Counter(labels.tolist()).values()) == {n // 10}  # balanced classes


def test_load_fashion_mnist_subset_is_seeded_and_lossless():
    a = load_fashion_mnist(split="test", limit=50, seed=3)
    b = load_fashion_mnist(split="test", limit=50, seed=3)
    assert a.ids == b.ids and a.texts == b.texts and a.labels == b.labels
    assert a.ids != load_fashion_mnist(split="test", limit=50, seed=4).ids
    assert len(a) == 50 and a.ids == sorted(a.ids)
    assert a.label_names == list(FASHION_MNIST_LABELS) and a.label_names[9] == "Ankle boot"
    assert Counter(a.labels) == Counter({k: 5 for k in range(10)})
    pixels = read_idx(REAL / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(REAL / "t10k-labels-idx1-ubyte.gz")
    for sid, text, label in zip(a.ids, a.texts, a.labels, strict=True):
        index = int(sid.removeprefix("fmnist-test:"))
        assert text.startswith("data:image/png;base64,")
        assert np.array_equal(np.asarray(decode_image(text)), pixels[index])
        assert label == labels[index]


def test_load_fashion_mnist_exclude_keeps_a_public_part_out(tmp_path):
    root = write_fashion_dir(tmp_path / "fm", n_train=40)
    public = {f"fmnist-train:{i}" for i in range(0, 40, 3)}
    private = load_fashion_mnist(root, exclude=public)
    assert len(private) == 40 - len(public) and not public & set(private.ids)
    subset = load_fashion_mnist(root, limit=10, seed=1, exclude=public)
    assert len(subset) == 10 and set(subset.ids) <= set(private.ids)
    assert subset.ids == sorted(subset.ids)
    assert Counter(subset.labels) == Counter({k: 1 for k in range(10)})


@pytest.mark.parametrize("gz", [True, False])
def test_idx_parsing_on_written_files(tmp_path, gz):
    root = write_fashion_dir(tmp_path / "fm", gz=gz)
    data = load_fashion_mnist(root, split="train")
    assert len(data) == 40 and data.ids[:2] == ["fmnist-train:0", "fmnist-train:1"]
    assert data.labels == [i % 10 for i in range(40)]
    first = np.asarray(decode_image(data.texts[0]))
    assert first.shape == (28, 28) and (first[4:7] == 250).all()
    test = load_fashion_mnist(root, split="test")
    assert len(test) == 20 and test.ids[0] == "fmnist-test:0"


def test_idx_errors_are_plain(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 4, 4)), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-5])
    with pytest.raises(ValueError, match="announces shape"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(split="validation")


def test_load_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for rel, mode, fmt in (("dog/b.jpg", "RGB", "JPEG"), ("cat/a.png", "L", "PNG"),
                           ("dog/sub/c.png", "RGB", "PNG")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (5, 7), color=128 if mode == "L" else (10, 20, 30)).save(root / rel, fmt)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    data = load_image_folder(root)
    assert data.ids == ["cat/a.png", "dog/b.jpg", "dog/sub/c.png"]
    assert data.label_names == ["cat", "dog"] and data.labels == [0, 1, 1]
    assert data.texts[1].startswith("data:image/jpeg;base64,")
    # the file's bytes travel unchanged
    assert base64.b64decode(data.texts[0].partition(",")[2]) == (root / "cat/a.png").read_bytes()
    assert decode_image(data.texts[2]).size == (5, 7)
    assert load_source(str(root)).ids == data.ids
    remapped = load_source(str(root), label_names=["ant", "cat", "dog"])
    assert remapped.labels == [1, 2, 2]
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG nonsense")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(root)
    (tmp_path / "none" / "x").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "none")


def test_load_source_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DEFAULT_FASHION_MNIST", write_fashion_dir(tmp_path / "fm"))
    assert load_source("fashion-mnist").ids[0] == "fmnist-train:0"
    test = load_source("fashion-mnist:test", limit=10, seed=1)
    assert len(test) == 10 and all(i.startswith("fmnist-test:") for i in test.ids)
    with pytest.raises(ValueError, match="split"):
        load_source("fashion-mnist:val")


# --------------------------------------------------------------------------- the family


def test_vit_family_matches_the_hugging_face_forward(tiny_vit, fmnist):
    cfg = config(tiny_vit, slices=2)
    backbone = AdaptedBackbone(cfg, num_labels=10)
    assert backbone.family.name == "vit" and backbone.n_layers == 4
    # the configured targets "query", "value" land on ViT's q_proj / v_proj, by layer group
    for group, layer in ((1, 3), (2, 2)):
        assert sorted(backbone.group_parameters(group)) == [
            f"layers.{layer}.attention.{m}.{ab}" for m in ("q_proj", "v_proj")
            for ab in ("lora_A", "lora_B")]
    assert set(backbone.head_parameters()) == {"layernorm.weight", "layernorm.bias",
                                               "classifier.weight", "classifier.bias"}
    batch = backbone.encode(fmnist.texts[:5])
    assert batch["pixel_values"].shape == (5, 1, 28, 28)
    assert batch["attention_mask"].shape == (5, 17) and bool(batch["attention_mask"].all())
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    with torch.no_grad():
        bounds = backbone.boundaries(batch)
        ours = backbone.top(bounds[2], batch["attention_mask"], from_group=2)
        theirs = backbone.model(pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(ours, theirs)
    # a colour image is converted to the model's single channel, other sizes are resized
    rgb = Image.new("RGB", (40, 30), (255, 255, 255))
    pixels = backbone.encode([rgb])["pixel_values"]
    assert pixels.shape == (1, 1, 28, 28) and torch.allclose(pixels, torch.ones_like(pixels))
    with pytest.raises(ValueError, match="data URI"):
        backbone.encode(["a cat"])


def test_image_processor_in_the_model_dir_is_used(tiny_vit, tmp_path, fmnist):
    import shutil

    model = shutil.copytree(tiny_vit, tmp_path / "with-processor")
    ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.2], image_std=[0.1]
                      ).save_pretrained(model)
    backbone = AdaptedBackbone(config(str(model)), num_labels=10)
    assert backbone.processor.image_processor is not None
    pixels = backbone.encode(fmnist.texts[:2])["pixel_values"]
    raw = np.asarray(decode_image(fmnist.texts[0]), dtype=np.float32) / 255
    torch.testing.assert_close(pixels[0, 0], torch.from_numpy((raw - 0.2) / 0.1), rtol=1e-5,
                               atol=1e-4)


def test_stage_changes_only_its_layer_group_and_head(tiny_vit, fmnist):
    cfg = config(tiny_vit, slices=3, budget=1)
    head = {"vit.layernorm.weight", "vit.layernorm.bias", "classifier.weight", "classifier.bias"}
    for backbone, depth, changed, _ in stage_by_stage_changes(cfg, fmnist.subset(range(30)), 10):
        allowed = stage_lora(backbone, depth)
        assert changed <= allowed | head, sorted(changed - allowed - head)
        assert any("lora_B" in k for k in changed) and "vit.layernorm.weight" in changed


# --------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def fitted(tiny_vit, fmnist, tmp_path_factory):
    cfg = config(tiny_vit)
    est = S3T(cfg, run_dir=tmp_path_factory.mktemp("vit") / "run").fit(fmnist, progress=False)
    return est, fmnist, cfg


def test_served_weights_equal_scratch_training_after_forget_and_retrain(fitted):
    est, data, cfg = fitted
    victims = pick_victims(est, data)
    cert = est.forget(victims)
    assert cert["erased_stages"]
    for key in cert["erased_stages"]:
        assert not est.store.path(int(key.split("-")[0]), key).exists()
    report = est.audit()
    assert report.ok, report.violations
    deleted = set(victims)
    assert_served_equal_scratch(est, cfg, data, deleted)
    before = est.predict(data.texts[:4]).probabilities

    est.retrain(progress=False)
    assert_served_equal_scratch(est, cfg, data, deleted, full_depth=True)
    assert est.audit().ok
    after = est.predict(data.texts[:4])
    assert after.probabilities.shape == (4, 10) and not np.array_equal(before, after.probabilities)
    assert all(type(r.layers[-1].attention.q_proj) is torch.nn.Linear
               for r in est.served().values()), "served layers are merged dense layers"


def test_tiny_vit_learns_fashion_mnist(tiny_vit, tmp_path):
    """Guards against silent bugs in the image path: chance is 0.1."""
    cfg = S3TConfig(model=tiny_vit, shards=1, slices=2, budget=2, epochs=4, batch_size=16,
                    learning_rate=1e-2)
    est = S3T(cfg, run_dir=tmp_path / "r").fit(load_fashion_mnist(limit=300, seed=1),
                                               progress=False)
    assert est.score(load_fashion_mnist(split="test", limit=200)) > 0.25


def test_cli_train_predict_forget_audit(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.setattr(images, "DEFAULT_FASHION_MNIST", write_fashion_dir(tmp_path / "fm"))
    run = tmp_path / "run"

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    trained = invoke("train", "--data", "fashion-mnist", "--model", tiny_vit, "--out", run,
                     "--shards", 2, "--slices", 2, "--epochs", 1, "--batch-size", 8,
                     "--eval", "fashion-mnist:test", "--json")
    assert trained["samples"] == 40 and 0.0 <= trained["eval_accuracy"] <= 1.0
    pred = invoke("predict", run, "--data", "fashion-mnist:test", "--json")
    assert pred["n"] == 20 and pred["live_shards"] == 2 and "accuracy" in pred
    assert {p["label"] for p in pred["predictions"]} <= set(FASHION_MNIST_LABELS)
    one = png_data_uri(np.zeros((28, 28), dtype=np.uint8))
    assert invoke("predict", run, "--text", one, "--json")["predictions"][0]["label"]
    cert = invoke("forget", run, "--ids", "fmnist-train:3", "--json")
    assert cert["samples"] == ["fmnist-train:3"] and cert["erased_stages"]
    result = CliRunner().invoke(app, ["audit", str(run)])
    assert result.exit_code == 0, result.output


def test_png_data_uri_round_trip():
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    uri = png_data_uri(pixels)
    assert np.array_equal(np.asarray(decode_image(uri)), pixels)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image("data:image/png;base64," + base64.b64encode(b"junk").decode())
    with pytest.raises(ValueError, match="base64"):
        decode_image("data:image/png,rawbytes")
    assert decode_image(Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2])))).size == (28, 28)
