"""After a deletion the feature cache recomputes only the chunks the deletion changed.

A chunk's rows are a deterministic function of its members and their inputs; the cache keeps
the rows of the chunks that hold no deleted sample and reuses one only where the cell's new
chunking asks for exactly those members with exactly those inputs. What it serves after a
retrain must stay bitwise what scratch training gives, and no row of a chunk that held the
deleted sample may be kept.
"""

from __future__ import annotations

import torch
from test_exactness import assert_served_equal_scratch, config
from tiny import toy_dataset

from s3t.engine import S3T
from s3t.train.features import FeatureCache


def _spy(cache: FeatureCache) -> list[tuple[str, ...]]:
    """The members of every chunk the cache runs through the trunk from now on."""
    computed: list[tuple[str, ...]] = []
    real = cache._computed

    def counted(members, sources):
        computed.append(members)
        return real(members, sources)

    cache._computed = counted  # type: ignore[method-assign]
    return computed


def test_untouched_chunks_are_reused_bitwise_and_the_deleted_chunk_is_gone(tiny_bert, tmp_path):
    data = toy_dataset(72)
    cfg = config(tiny_bert, batch_size=4)  # chunks of 4: a cell of 12 is three chunks
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    cell = (0, 0)
    ids = sorted(r[0] for r in est.ledger.cell_samples(*cell))
    assert len(ids) == 12, "the test expects cells of 12 samples"
    victim = ids[9]  # in the third chunk: the first two stay as they were
    cache = est.features
    computed = _spy(cache)

    est.forget([victim])
    assert victim not in cache and cell not in cache.held
    assert cache.kept[cell] == [tuple(ids[0:4]), tuple(ids[4:8])]  # the victim's chunk is dropped

    est.retrain(progress=False)
    assert computed == [tuple(ids[8:9] + ids[10:12])], "only the victim's chunk is recomputed"
    assert cell not in cache.kept

    retained = [i for i in ids if i != victim]
    text = dict(zip(data.ids, data.texts, strict=True))
    fresh = FeatureCache(est.backbone, chunk_size=cfg.batch_size)
    fresh.ensure(cell, 1, retained, [text[i] for i in retained])
    for group in range(1, cfg.slices + 1):
        reused, want = cache.batch(retained, group), fresh.batch(retained, group)
        assert torch.equal(reused[0], want[0]) and torch.equal(reused[1], want[1])
    assert_served_equal_scratch(est, cfg, data, {victim}, full_depth=True)
    assert est.audit().ok


def test_a_chunk_is_reused_only_with_the_same_members_and_inputs(tiny_bert, tmp_path):
    est = S3T(config(tiny_bert), run_dir=tmp_path / "r").fit(toy_dataset(36), progress=False)
    cache = FeatureCache(est.backbone, chunk_size=2)
    ids = ["a", "b", "c", "d", "e", "f"]
    texts = ["red cat", "blue sun", "green tree", "old map", "new car", "tall dog"]
    cache.ensure("cell", 0, ids, texts)
    cache.forget("cell", {"f"})
    assert cache.kept["cell"] == [("a", "b"), ("c", "d")]
    cache.forget("cell", {"c"})  # a second deletion before the cell is computed again
    assert cache.kept["cell"] == [("a", "b")]
    computed = _spy(cache)
    # "a" comes back with another input: its chunk must be computed, not reused
    cache.ensure("cell", 2, ["a", "b", "d", "e"], ["red hat", "blue sun", "old map", "new car"])
    assert computed == [("a", "b"), ("d", "e")]
    fresh = FeatureCache(est.backbone, chunk_size=2)
    fresh.ensure("cell", 2, ["a", "b", "d", "e"], ["red hat", "blue sun", "old map", "new car"])
    assert torch.equal(cache.batch(["a", "b", "d", "e"], 1)[0], fresh.batch(["a", "b", "d", "e"], 1)[0])
    cache.drop("cell")
    assert not cache.kept and not cache.held
