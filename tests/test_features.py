"""The frozen-trunk feature cache: same weights as the uncached path up to float rounding."""

from __future__ import annotations

import torch
from test_exactness import config
from tiny import toy_dataset

from s3t.engine import S3T


def test_cached_and_uncached_training_agree(tiny_bert, tmp_path):
    data = toy_dataset(48)
    cached = S3T(config(tiny_bert, lora_dropout=0.0), run_dir=tmp_path / "a").fit(
        data, progress=False)
    uncached = S3T(config(tiny_bert, lora_dropout=0.0, feature_cache=False),
                   run_dir=tmp_path / "b").fit(data, progress=False)
    assert cached.live_weights().keys() == uncached.live_weights().keys()
    worst = 0.0
    for key, weights in cached.live_weights().items():
        other = uncached.live_weights()[key]
        for part in ("adapter", "head"):
            for name, tensor in getattr(weights, part).items():
                diff = (tensor - getattr(other, part)[name]).abs().max().item()
                worst = max(worst, diff / (tensor.abs().max().item() + 1e-12))
    assert worst < 1e-3, f"cached and uncached weights differ by {worst:.2e} (relative)"
    texts = ["red cat", "blue moon"]
    torch.testing.assert_close(torch.tensor(cached.predict(texts).probabilities),
                               torch.tensor(uncached.predict(texts).probabilities),
                               rtol=1e-3, atol=1e-4)


def test_cache_recomputes_a_cell_after_its_version_changes(tiny_bert, tmp_path):
    est = S3T(config(tiny_bert), run_dir=tmp_path / "r").fit(toy_dataset(36), progress=False)
    features = est.features
    features.ensure("cell", 0, ["a", "b"], ["red cat", "blue sun"])
    first = features.batch(["a"], 1)[0].clone()
    features.ensure("cell", 1, ["a"], ["green tree"])  # new version: "b" is gone, "a" changed
    assert "b" not in features and "a" in features
    assert not torch.equal(first, features.batch(["a"], 1)[0])
