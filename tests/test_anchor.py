"""Anchor data (``S3TConfig.anchor``): the training data's ``deletable=false`` samples are no
shard's cell but the run's anchor set, which every shard trains on in its first slice, so every
stage of every ordering of every shard sees it. Exact because an anchor can never be forgotten:
after forgetting deletable samples and retraining, the served weights are bitwise a scratch
run on the retained data with the anchor set; ``s3t verify`` rebuilds the same bits, and so
does ``s3t serve``'s background retrain (the service refuses a deletion naming an anchor)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest
from test_exactness import assert_same_weights, served
from test_exactness import scratch_chain as exactness_scratch_chain
from test_retrainer import job_ended, wait_for
from test_service import AUTH, serving
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import ConfigError, S3TConfig
from s3t.data.partition import partition
from s3t.data.samples import Dataset
from s3t.engine import S3T
from s3t.run import Run
from s3t.run.deletion import ANCHOR_CELL, UndeletableSampleError
from s3t.train import local
from s3t.train.stage_trainer import train_stage
from s3t.verify import verify_run

N_ANCHORS = 12


def anchored_data(n: int = 60, groups: bool = False) -> Dataset:
    """Toy data whose every fifth sample (12 of 60, all three labels) is deletable=false."""
    data = toy_dataset(n, groups=groups)
    data.deletable = [i % 5 != 2 for i in range(n)]
    return data


def anchors_of(data: Dataset) -> list[str]:
    return sorted(sid for sid, keep in zip(data.ids, data.deletable or [], strict=True) if not keep)


def config(model: str, method: str = "s3t", **kw) -> S3TConfig:
    base = dict(model=model, shards=2, slices=3, budget=2, epochs=1, batch_size=8,
                learning_rate=1e-2, seed=3, anchor=True)
    base.update(kw)
    return S3TConfig.baseline(method, **base) if method != "s3t" else S3TConfig(**base)


def shard_cells(cfg: S3TConfig, data: Dataset) -> dict[str, tuple[int, int]]:
    """The cells of the deletable samples: an independent partition of them alone."""
    rest = [i for i, keep in enumerate(data.deletable or []) if keep]
    part = data.subset(rest)
    return partition(part.ids, part.groups, cfg.shards, cfg.slices, seed=cfg.seed)


def scratch_chain(cfg: S3TConfig, data: Dataset, deleted: set[str], shard: int, prefix) -> list:
    """Train ``prefix`` of ``shard`` from scratch on the retained data: the anchor set (one
    feature block, sorted by id) plus the prefix's cells (an independent path)."""
    return exactness_scratch_chain(cfg, data, deleted, shard, prefix,
                                   cells=shard_cells(cfg, data), anchors=anchors_of(data))


def assert_served_equal_scratch(est: S3T, cfg: S3TConfig, data: Dataset, deleted: set[str]) -> None:
    for shard, (prefix, chain) in served(est).items():
        for got, want in zip(chain, scratch_chain(cfg, data, deleted, shard, prefix), strict=True):
            assert_same_weights(got, want)


@pytest.fixture(scope="module")
def anchored(tiny_bert, tmp_path_factory):
    """An anchored S3T run (m=2, L=3, B=2), closed; its data and config."""
    data, cfg = anchored_data(), config(tiny_bert)
    path = tmp_path_factory.mktemp("anchored") / "run"
    S3T(cfg, run_dir=path).fit(data, progress=False).close()
    return path, data, cfg


def copy(path, tmp_path):
    shutil.copytree(path, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("method", ["s3t", "sisa"])
def test_every_stage_of_every_shard_trains_on_the_anchor_set(tiny_bert, tmp_path, monkeypatch,
                                                             method):
    data, cfg = anchored_data(), config(tiny_bert, method)
    trained: dict[tuple[int, tuple[int, ...]], list[str]] = {}

    def recording(*args, **kw):
        trained[(kw["shard"], tuple(kw["prefix"]))] = list(kw["sample_ids"])
        return train_stage(*args, **kw)

    monkeypatch.setattr(local, "train_stage", recording)
    est = S3T(cfg, run_dir=tmp_path / "run").fit(data, progress=False)
    anchors, cells = anchors_of(data), shard_cells(cfg, data)
    assert est.ledger.anchor_samples() == [(sid, data.labels[data.ids.index(sid)],
                                            data.texts[data.ids.index(sid)]) for sid in anchors]
    assert est.ledger.find_samples(anchors) == {sid: (*ANCHOR_CELL, None) for sid in anchors}
    assert all(not set(anchors) & {r[0] for r in est.ledger.cell_samples(m, s)}
               for m in range(cfg.shards) for s in range(cfg.slices)), "anchors are no cell's"
    assert len(trained) == est.tree.count() * cfg.shards
    for (shard, prefix), ids in trained.items():
        cell_ids = sorted(i for i, c in cells.items() if c[0] == shard and c[1] in prefix)
        assert sorted(ids) == sorted(anchors + cell_ids), (shard, prefix)
    for record in est.ledger.stages("live"):
        assert record.n_samples == N_ANCHORS + sum(
            c[0] == record.shard and c[1] in record.prefix for c in cells.values())
    status = est.status()
    assert status["anchor_samples"] == N_ANCHORS and status["samples"] == len(data)
    card = json.loads((tmp_path / "run" / "s3t.json").read_text())
    assert card["config"]["anchor"] is True
    assert est.audit().ok


def test_forget_and_retrain_equal_scratch_training_with_the_anchor_set(anchored, tmp_path):
    path, data, cfg = anchored
    est = S3T.load(copy(path, tmp_path))
    cells = shard_cells(cfg, data)
    victims = [min(i for i, c in cells.items() if c == cell) for cell in [(0, 0), (1, 2)]]
    certificate = est.forget(victims)
    assert certificate["erased_stages"]
    assert_served_equal_scratch(est, cfg, data, set(victims))
    est.retrain(progress=False)
    assert est.status()["capacity"] == 1.0
    assert_served_equal_scratch(est, cfg, data, set(victims))
    assert est.audit().ok
    est.close()
    report = verify_run(tmp_path / "run", "all", progress=False)
    assert report.ok, [c.describe() for c in report.stages if not c.identical]


def test_verify_rebuilds_an_anchored_run_bitwise(anchored, tmp_path):
    path, _, _ = anchored
    report = verify_run(path, "all", progress=False)
    assert report.ok and len(report.stages) == 2 * 6, [c.describe() for c in report.stages]


def ledger_state(ledger) -> tuple:
    """What a deletion changes: slice versions, routes, stage mark, counts, live stages."""
    return (ledger.slice_versions(), ledger.routes(), ledger.stage_mark(), ledger.counts(),
            sorted(r.key for r in ledger.stages("live")))


def test_an_anchor_cannot_be_forgotten_and_nothing_changes(tiny_bert, tmp_path):
    data = anchored_data(groups=True)  # s0002 (an anchor) is in group user0 with s0000..s0003
    est = S3T(config(tiny_bert), run_dir=tmp_path / "run").fit(data, progress=False)
    ledger = est.ledger
    before = ledger_state(ledger)
    for request in ({"sample_ids": ["s0002"]}, {"sample_ids": ["s0000", "s0002"]},
                    {"groups": ["user0"]}):
        with pytest.raises(UndeletableSampleError, match="anchor samples cannot be forgotten: "
                           "s0002.*in every shard.*train a new run.*nothing was deleted"):
            est.forget(**request)
    assert ledger_state(ledger) == before
    assert ledger.deletion_count() == 0 and not list((tmp_path / "run" / "certificates").glob("*"))
    assert est.audit().ok


@pytest.mark.parametrize(("flags", "fix"), [
    ([True] * 30, "marks none: add a deletable column"),
    ([False] * 30, "all 30 training samples are marked deletable=false"),
    (None, "marks none: add a deletable column"),
])
def test_anchor_without_a_proper_anchor_set_is_refused_naming_the_fix(tiny_bert, tmp_path, flags,
                                                                     fix):
    data = toy_dataset(30)
    data.deletable = flags
    with pytest.raises(ConfigError, match=fix) as err:
        S3T(config(tiny_bert), run_dir=tmp_path / "run").fit(data, progress=False)
    assert err.value.field == "anchor" and "drop --anchor" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_too_few_samples_besides_the_anchor_set_are_refused(tiny_bert, tmp_path):
    data = toy_dataset(10)
    data.deletable = [i < 5 for i in range(10)]  # 5 deletable samples for 6 cells
    with pytest.raises(ValueError, match="5 samples besides the anchor set cannot fill 2 shards"):
        S3T(config(tiny_bert), run_dir=tmp_path / "run").fit(data, progress=False)


def test_the_command_line_trains_with_anchor_and_names_the_flag(tiny_bert, tmp_path):
    rows = ["id,text,label,deletable"] + [
        f"{sid},{text},{data_label},{'false' if i % 5 == 2 else 'true'}"
        for i, (sid, text, data_label) in enumerate(zip(*_columns(anchored_data()), strict=True))]
    (tmp_path / "rows.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "plain.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    common = ["--model", tiny_bert, "--shards", "2", "--slices", "3", "--budget", "2",
              "--epochs", "1", "--batch-size", "8", "--anchor", "--json"]
    refused = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "plain.csv"),
                                       "--out", str(tmp_path / "plain"), *common])
    assert refused.exit_code != 0 and "--anchor" in refused.output
    assert "marks none" in refused.output and not (tmp_path / "plain").exists()
    ok = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "rows.csv"),
                                  "--out", str(tmp_path / "run"), *common])
    assert ok.exit_code == 0, ok.output
    with Run.open(tmp_path / "run") as run:
        assert run.config.anchor and run.ledger.anchor_count() == N_ANCHORS
    status = CliRunner().invoke(app, ["status", str(tmp_path / "run")])
    assert f"anchor samples {N_ANCHORS}: in every shard's first slice" in status.output


def _columns(data: Dataset) -> tuple[list[str], list[str], list[str]]:
    return data.ids, data.texts, [data.label_names[y] for y in data.labels or []]


def test_a_card_written_before_the_field_reads_as_no_anchor(anchored, tmp_path):
    path = copy(anchored[0], tmp_path)
    card = json.loads((path / "s3t.json").read_text())
    del card["config"]["anchor"]
    (path / "s3t.json").write_text(json.dumps(card))
    with Run.open(path, repair=False) as run:
        assert run.config.anchor is False


def test_placement_by_prior_places_the_rest_and_leaves_the_anchor_set_to_every_shard():
    from s3t.plan.placement import place_samples
    from s3t.run.layout import lay_out

    data = anchored_data(groups=True)
    data.priors = [float(i % 7) for i in range(len(data))]
    cfg = S3TConfig(shards=2, slices=3, placement="prior", anchor=True, seed=5)
    layout = lay_out(cfg, data)
    rest = data.subset([i for i, keep in enumerate(data.deletable or []) if keep])
    cells, prior = place_samples(rest.ids, rest.groups, rest.priors, rest.deletable, 2, 3, seed=5)
    assert layout.cells == {**cells, **{sid: ANCHOR_CELL for sid in anchors_of(data)}}
    assert layout.prior == prior and layout.card == {"placement": {"rule": "prior",
                                                                   "slice_prior": prior}}
    plain = lay_out(S3TConfig(shards=2, slices=3, placement="prior", seed=5), data)
    assert set(plain.cells.values()) == {(m, s) for m in range(2) for s in range(3)}


def test_a_spilled_anchor_block_gives_the_same_stages(anchored, tiny_bert, tmp_path):
    """Every feature block on disk (the anchor set's too, ``anchor-v0``): the same bits as the
    run that kept them in memory, and audit finds nothing stray while the trainer is open."""
    path, data, cfg = anchored
    est = S3T(dataclasses.replace(cfg, feature_cache_memory_gb=0.0),
              run_dir=tmp_path / "spilled").fit(data, progress=False)
    assert [p.name for p in (tmp_path / "spilled" / "feature-cache").glob("*/anchor-v0")]
    assert est.audit().ok
    reference = S3T.load(path)
    assert sorted(est.live_weights()) == sorted(reference.live_weights())
    for key, weights in est.live_weights().items():
        assert_same_weights(weights, reference.live_weights()[key])
    reference.close()
    est.close()


def test_served_anchored_run_refuses_an_anchor_and_retrains_in_the_background_exactly(anchored,
                                                                                       tmp_path):
    """`s3t serve --retrain eager` on an anchored run: a deletion naming an anchor is a 422
    with nothing changed and no job; a deletable sample's deletion is retrained by the
    background job into stages bitwise those of scratch training with the anchor set."""
    path, data, cfg = anchored
    run = copy(path, tmp_path)
    anchor, victim = anchors_of(data)[0], min(shard_cells(cfg, data))
    with Run.open(run, repair=False) as opened:
        before = ledger_state(opened.ledger)
    with serving(run, retrain="eager", eval_interval_s=0.1) as client:
        for ids in ([anchor], [victim, anchor]):
            refused = client.post("/v1/deletions", json={"sample_ids": ids}, headers=AUTH)
            assert refused.status_code == 422, refused.text
            assert "anchor samples cannot be forgotten" in refused.json()["message"]
        time.sleep(0.5)  # eager: a job would start at once if anything had changed
        status = client.get("/v1/status").json()
        assert status["capacity"] == 1.0 and status["retrain"]["job"] is None
        with Run.open(run, repair=False) as opened:
            assert ledger_state(opened.ledger) == before
            assert opened.ledger.deletion_count() == 0
        certificate = client.post("/v1/deletions", json={"sample_ids": [victim]}, headers=AUTH)
        assert certificate.status_code == 200 and certificate.json()["erased_stages"]
        status = wait_for(client, lambda s: job_ended(s) and s["capacity"] == 1.0,
                          "the background retrain")
        assert status["retrain"]["job"]["state"] == "succeeded"
    est = S3T.load(run)
    try:
        assert est.ledger.anchor_count() == N_ANCHORS
        assert_served_equal_scratch(est, cfg, data, {victim})
        assert est.audit().ok
    finally:
        est.close()
