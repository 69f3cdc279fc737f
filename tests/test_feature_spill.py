"""The feature cache beyond memory: spilled (memory-mapped) blocks and float16 storage.

Spilled blocks hold sample inputs in derived form, so they must train exactly what the
in-memory cache trains and be erased, audited and swept like stage files.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from test_exactness import assert_same_weights, config
from tiny import toy_dataset

from s3t.config import S3TConfig
from s3t.engine import S3T
from s3t.run import Ledger, Run
from s3t.run.files import FEATURE_CACHE_DIR, FeatureFiles


def small(model: str, **kw) -> S3TConfig:
    return config(model, **{"budget": 1, "epochs": 1, "lora_dropout": 0.0, **kw})


@pytest.fixture(scope="module")
def pair(tiny_bert, tmp_path_factory):
    """The same run with the cache in memory and with every block spilled to disk."""
    root = tmp_path_factory.mktemp("spill")
    data = toy_dataset(36)
    memory = S3T(small(tiny_bert), run_dir=root / "memory").fit(data, progress=False)
    disk = S3T(small(tiny_bert, feature_cache_memory_gb=0), run_dir=root / "disk").fit(
        data, progress=False)
    return memory, disk, data


def test_spilled_blocks_train_bitwise_the_same_weights(pair):
    memory, disk, _ = pair
    blocks = FeatureFiles(disk.run_dir).cell_blocks()
    assert sorted(cell for _, cell, _ in blocks) == [(m, s) for m in range(2) for s in range(3)]
    assert all(version == 0 for _, _, version in blocks)
    assert disk.features.bytes_in_memory == 0 < memory.features.bytes_in_memory
    assert all(isinstance(a, np.memmap) for held in disk.features.held.values()
               for a in held.states.values())
    assert not (Path(memory.run_dir) / FEATURE_CACHE_DIR).exists()
    assert memory.live_weights().keys() == disk.live_weights().keys()
    for key, weights in memory.live_weights().items():
        assert_same_weights(weights, disk.live_weights()[key])


def test_forget_in_another_process_erases_the_hit_cells_blocks(pair):
    memory, disk, data = pair
    victim = data.ids[0]
    shard, sl, _ = disk.ledger.find_samples([victim])[victim]
    run = Run.open(disk.run_dir)  # what `s3t forget` uses: no model, no torch
    _, certificate = run.forget([victim])
    run.close()
    assert certificate["feature_blocks_erased"] == 1 and certificate["files_erased"]
    left = {cell for _, cell, _ in FeatureFiles(disk.run_dir).cell_blocks()}
    assert (shard, sl) not in left and len(left) == 5
    assert disk.audit().ok
    # The engine's own view of that cell goes when it next trains; retraining recomputes
    # the cell at its new version and gives what the in-memory run gives.
    memory.forget([victim])
    memory.retrain(progress=False)
    disk.retrain(progress=False)
    assert ((shard, sl), 1) in {(c, v) for _, c, v in FeatureFiles(disk.run_dir).cell_blocks()}
    assert memory.run.live_stages().keys() == disk.run.live_stages().keys()
    for key in memory.run.live_stages():
        assert_same_weights(memory.stage_weights(key), disk.stage_weights(key))
    assert disk.audit().ok


def test_audit_reports_a_stale_block_and_opening_the_run_sweeps_it(pair, tmp_path):
    _, disk, _ = pair
    (kept, _, _), (stale, cell, version) = FeatureFiles(disk.run_dir).cell_blocks()[:2]
    target = tmp_path / "copy"
    shutil.copytree(disk.run_dir, target, ignore=shutil.ignore_patterns("*.sqlite*"))
    copy = sqlite3.connect(target / Ledger.FILE)
    disk.ledger.conn.backup(copy)
    copy.close()
    owner = target / FEATURE_CACHE_DIR / kept.parent.name
    kept, stale = owner / kept.name, owner / stale.name
    live = os.open(owner / ".lock", os.O_RDWR)  # play the owner: a live trainer holds its lock
    fcntl.flock(live, fcntl.LOCK_EX)
    assert Run.open(target, verify=False, repair=False).audit().ok
    bumped = sqlite3.connect(target / Ledger.FILE)  # as if a deletion changed `cell`
    with bumped:
        bumped.execute("UPDATE slices SET version = ? WHERE shard = ? AND slice = ?",
                       (version + 1, *cell))
    bumped.close()
    dead = target / FEATURE_CACHE_DIR / "12345-dead"
    shutil.copytree(kept, dead / kept.name)
    report = Run.open(target, verify=False, repair=False).audit()
    assert not report.ok
    assert any(str(stale) in v for v in report.violations)
    assert any(str(dead) in v for v in report.violations)
    run = Run.open(target)  # repair: sweeps the stale block and the gone process's folder
    assert not stale.exists() and not dead.exists() and kept.exists()
    run.close()
    os.close(live)  # the owner is gone now: its folder goes the next time the run is opened
    Run.open(target).close()
    assert not owner.exists()


@pytest.mark.parametrize("delete_before_write", [True, False])
def test_a_deletion_racing_a_spill_leaves_no_stale_block(tiny_bert, tmp_path, monkeypatch,
                                                         delete_before_write):
    """Another process deletes from a cell whose features this trainer has computed from
    its snapshot, just before (or just after) the block reaches the disk."""
    import s3t.train.local as local_executor
    from s3t.train.features import _SpillWriter

    data = toy_dataset(36)
    est = S3T(small(tiny_bert, feature_cache_memory_gb=0), run_dir=tmp_path / "r").fit(
        data, progress=False)
    est.forget([data.ids[0]])
    files = FeatureFiles(est.run_dir)
    real_finish, real_train = _SpillWriter.finish, local_executor.train_stage
    after_forget: list[list] = []
    while_training: list[list] = []

    def delete(writer):  # another process deletes a live sample of the cell being written
        cell = tuple(int(x) for x in writer.final.name.split("-")[1:3])
        other = Run.open(est.run_dir, repair=False)
        rows = other.ledger.find_samples(data.ids).items()
        other.forget([next(sid for sid, row in rows if row[:2] == cell and row[2] is None)])
        after_forget.append(files.stale(other.ledger.slice_versions()))
        other.close()

    def racing_finish(self):
        if not after_forget and delete_before_write:
            delete(self)
        arrays = real_finish(self)
        if not after_forget:
            delete(self)
        return arrays

    def watched_train(*args, **kwargs):
        while_training.append(files.stale(est.ledger.slice_versions()))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(_SpillWriter, "finish", racing_finish)
    monkeypatch.setattr(local_executor, "train_stage", watched_train)
    summary = est.retrain(progress=False)  # must not crash
    assert summary["stages_discarded"]
    assert after_forget and not any(after_forget), "forget returned with a stale block on disk"
    assert not any(while_training), "a stale block stayed on disk while a stage trained"
    assert not files.stale(est.ledger.slice_versions()) and est.audit().ok
    monkeypatch.setattr(_SpillWriter, "finish", real_finish)
    monkeypatch.setattr(local_executor, "train_stage", real_train)
    est.retrain(progress=False)
    assert est.status()["capacity"] == 1.0 and est.audit().ok


def test_close_removes_the_spill_folder(tiny_bert, tmp_path):
    est = S3T(small(tiny_bert, slices=2, feature_cache_memory_gb=0), run_dir=tmp_path / "r").fit(
        toy_dataset(24), progress=False)
    owner = est.features.directory
    assert owner.is_dir() and any(owner.iterdir())
    est.close()
    assert not owner.exists()


def test_float16_storage_halves_the_cache_and_stays_close(tiny_bert, pair, tmp_path):
    memory, _, data = pair
    half = S3T(small(tiny_bert, feature_cache_dtype="float16"), run_dir=tmp_path / "h").fit(
        data, progress=False)
    assert all(a.dtype == np.float16 for held in half.features.held.values()
               for a in held.states.values())
    fresh = S3T(small(tiny_bert), run_dir=tmp_path / "f").fit(data, progress=False)
    assert half.features.bytes_in_memory * 2 == fresh.features.bytes_in_memory
    texts = ["red cat", "blue moon", "green tree"]
    p16, p32 = half.predict(texts).probabilities, fresh.predict(texts).probabilities
    assert not np.array_equal(p16, p32)  # rounding reached the weights...
    torch.testing.assert_close(torch.tensor(p16), torch.tensor(p32), rtol=0, atol=2e-2)  # ...a little


@pytest.mark.parametrize("field, value, message", [
    ("feature_cache_dtype", "int8", "feature_cache_dtype must be one of float32, float16"),
    ("feature_cache_memory_gb", -1, "feature_cache_memory_gb must be a number >= 0"),
    ("feature_cache_memory_gb", float("nan"), "feature_cache_memory_gb must be a number >= 0"),
])
def test_cache_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        S3TConfig(**{field: value}).validate()


def test_deletion_during_a_spilled_retrain_leaves_no_stale_block(tiny_bert, tmp_path, monkeypatch):
    import s3t.train.local as local_executor

    data = toy_dataset(36)
    est = S3T(small(tiny_bert, budget=3, feature_cache_memory_gb=0), run_dir=tmp_path / "r").fit(
        data, progress=False)
    est.forget([data.ids[0], data.ids[1]])
    real_train = local_executor.train_stage
    calls: list[str] = []

    def train_then_delete(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if not calls:  # while the first stage trains, another process deletes from its data
            other = Run.open(est.run_dir)
            other.forget([kwargs["sample_ids"][0]])
            other.close()
        calls.append(kwargs["sample_ids"][0])
        return result

    monkeypatch.setattr(local_executor, "train_stage", train_then_delete)
    summary = est.retrain(progress=False)
    assert summary["stages_discarded"]
    # only the stage in flight trained on the changed cell; the rest were skipped untrained
    assert len(calls) == summary["stages_trained"] + 1
    files, current = FeatureFiles(est.run_dir), est.ledger.slice_versions()
    assert files.cell_blocks() and not files.stale(current)
    # nor does the trainer's own cache still hold the changed cell's old features
    assert all(current[b] == v for b, v in est.features.versions.items() if b in current)
    assert est.audit().ok
    monkeypatch.setattr(local_executor, "train_stage", real_train)
    est.retrain(progress=False)
    assert est.status()["capacity"] == 1.0 and est.audit().ok


def test_blocks_left_by_an_interrupted_forget_are_erased_by_the_next(tiny_bert, tmp_path,
                                                                      monkeypatch):
    data = toy_dataset(36)
    est = S3T(small(tiny_bert, feature_cache_memory_gb=0), run_dir=tmp_path / "r").fit(
        data, progress=False)
    cells = {sid: row[:2] for sid, row in est.ledger.find_samples(data.ids).items()}
    first = data.ids[0]
    second = next(sid for sid in data.ids if cells[sid] != cells[first])
    real_erase = FeatureFiles.erase_stale

    def failing_erase(self, versions, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(FeatureFiles, "erase_stale", failing_erase)
    crashing = Run.open(est.run_dir, repair=False)
    _, failed = crashing.forget([first])  # committed: a certificate recording the failure
    assert failed["files_erased"] is False and "disk went away" in failed["erase_error"]
    crashing.close()
    report = est.audit()
    assert not report.ok and any("feature-cache" in v for v in report.violations)
    monkeypatch.setattr(FeatureFiles, "erase_stale", real_erase)
    run = Run.open(est.run_dir, repair=False)  # no sweep: the next request itself cleans up
    _, certificate = run.forget([second])
    run.close()
    assert certificate["files_erased"] and certificate["feature_blocks_erased"] == 2
    assert est.audit().ok


class _Reaching:
    """A backbone whose hidden states (two tokens, three features per sample) all equal
    ``value``, to reach float16's range without a model that does."""

    def __init__(self, value: float) -> None:
        self.value = value

    def encode(self, inputs):
        return {"attention_mask": torch.ones(len(inputs), 2, dtype=torch.long)}

    def boundaries(self, batch):
        return {1: torch.full((len(batch["attention_mask"]), 2, 3), self.value)}


def test_float16_storage_refuses_states_beyond_its_range():
    from s3t.train.features import FeatureCache

    cache = FeatureCache(_Reaching(-7e4 / 2), dtype="float16")
    assert cache.ensure("cell", 0, ["a"], ["x"]) and "a" in cache
    assert cache.held["cell"].states[1].dtype == np.float16
    cache = FeatureCache(_Reaching(-7e4), dtype="float16")
    with pytest.raises(ValueError, match="beyond float16's range.*feature_cache_dtype='float32'"):
        cache.ensure("cell", 0, ["a"], ["x"])
    assert "a" not in cache and not cache.held and cache.bytes_in_memory == 0


def test_a_budget_between_nothing_and_everything_keeps_some_blocks_in_memory(pair, tiny_bert,
                                                                             tmp_path):
    memory, _, data = pair
    block = max(h.nbytes for h in memory.features.held.values())
    budget = 2.5 * block / 2**30  # room for two blocks of this size
    mixed = S3T(small(tiny_bert, feature_cache_memory_gb=budget), run_dir=tmp_path / "m").fit(
        data, progress=False)
    held = mixed.features.held.values()
    in_memory = [h for h in held if h.path is None]
    assert len(in_memory) == 2 and len(held) - len(in_memory) == 4
    assert mixed.features.bytes_in_memory == sum(h.nbytes for h in in_memory) <= budget * 2**30
    fresh = S3T(small(tiny_bert), run_dir=tmp_path / "f").fit(data, progress=False)
    for key, weights in fresh.live_weights().items():
        assert_same_weights(weights, mixed.live_weights()[key])
    dropped = next(cell for cell, h in mixed.features.held.items() if h.path is None)
    mixed.features.drop(dropped)  # frees its share of the budget
    assert mixed.features.bytes_in_memory == sum(h.nbytes for h in in_memory[1:])
