"""The Ray executor: every stage bitwise the local executor's (S3T, SISA, after forget and
retrain); a worker killed mid-stage is retried and every stage commits once; a deletion while
a remote stage trains discards it; a driver killed mid-run leaves a run that retrain completes.

All Ray tests share one local Ray instance (the session fixture ``ray_session`` in
conftest.py, 2 CPUs) and tiny models; they skip only where ray is not installed. Both
executors compute in the run card's numeric environment (``torch_threads``, deterministic
kernels), so the local references here are trained with default settings, whatever thread
count or variables this process has.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from test_exactness import config, pick_victims
from tiny import copy_run, toy_dataset
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import ConfigError, S3TConfig
from s3t.engine import S3T
from s3t.run import Run
from s3t.run.faults import FAULT_ENV, FAULT_EXIT
from s3t.run.files import ADAPTER_FILE, HEAD_FILE
from s3t.train.numeric import NumericEnvError
from s3t.train.ray_worker import RAY_FAULT_ENV, RunSpec, run_stage
from s3t.train.scheduler import Scheduler, StageJob
from s3t.verify import verify_run


def assert_same_stages(a: S3T, b: S3T) -> None:
    """Both runs hold the same live stages, every adapter and head tensor bitwise equal."""
    left, right = a.live_weights(), b.live_weights()
    assert sorted(left) == sorted(right)
    for key in left:
        for part in ("adapter", "head"):
            x, y = getattr(left[key], part), getattr(right[key], part)
            assert x.keys() == y.keys()
            for name in x:
                assert torch.equal(x[name], y[name]), f"stage {key}: {part} tensor {name} differs"


@contextmanager
def one_thread() -> Iterator[None]:
    """Train locally with the torch thread count of a Ray worker (1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tiny_bert, tmp_path_factory):
    """A run trained by the local executor (the reference), with its data and config."""
    data, cfg = toy_dataset(72), config(tiny_bert)
    path = tmp_path_factory.mktemp("reference") / "run"
    S3T(cfg, run_dir=path).fit(data, progress=False).close()  # default settings
    return path, data, cfg


def stage_files(est: S3T) -> dict[str, bytes]:
    """Every live stage's weight files, as bytes (``<key>/<file>`` -> bytes)."""
    out = {}
    for record in est.ledger.stages("live"):
        for name in (ADAPTER_FILE, HEAD_FILE):
            out[f"{record.key}/{name}"] = (est.store.path(record.shard, record.key) / name).read_bytes()
    return out


def on_ray(cfg: S3TConfig) -> S3TConfig:
    return dataclasses.replace(cfg, executor="ray")


def test_s3t_stages_equal_the_local_executors_through_forget_and_retrain(
        reference, ray_session, tmp_path):
    path, data, cfg = reference
    local = S3T.load(copy_run(path, tmp_path))
    remote = S3T(on_ray(cfg), run_dir=tmp_path / "ray").fit(data, progress=False)
    summary = remote.last_train
    assert summary["executor"] == "ray"
    assert summary["stages_trained"] == summary["stages_total"] == 18
    assert_same_stages(local, remote)
    assert stage_files(local) == stage_files(remote)  # byte-identical weight files
    rows = summary["stages"]  # what --json reports: node, process and timings per stage
    assert sorted(r["key"] for r in rows) == sorted(remote.live_weights())
    assert all(r["status"] == "live" and r["host"] and r["pid"] and r["train_seconds"] >= 0
               and r["started"] <= r["finished"] <= r["settled"] for r in rows)
    record = remote.ledger.stages("live")[0]
    meta = json.loads((remote.store.path(record.shard, record.key) / "meta.json").read_text())
    assert (meta["executor"], meta["torch_threads"]) == ("ray", 1)  # one thread per worker

    victims = pick_victims(local, data)
    local.forget(victims)
    remote.forget(victims)
    local.retrain(progress=False)
    again = remote.retrain(progress=False)  # the run's executor: ray
    assert again["executor"] == "ray" and again["stages_trained"] > 0
    assert_same_stages(local, remote)
    assert stage_files(local) == stage_files(remote)
    assert remote.status()["capacity"] == 1.0
    assert remote.audit().ok


def test_a_local_run_retrained_on_ray_verifies_bitwise(reference, ray_session, tmp_path):
    path, data, _ = reference
    est = S3T.load(copy_run(path, tmp_path))
    est.forget(pick_victims(est, data))
    summary = est.retrain(progress=False, executor="ray")
    assert summary["stages_trained"] > 0
    est.close()
    report = verify_run(tmp_path / "run", "all", progress=False)
    assert report.ok, [c.describe() for c in report.stages if not c.identical]
    env = report.to_dict()["environment"]
    assert env["torch_threads"] == 1 and env["deterministic"] and not env["legacy_card"]


def test_validation_scores_from_ray_workers_verify_like_local_ones(tiny_bert, ray_session,
                                                                  tmp_path):
    """Stages scored on the validation split by Ray workers: ``verify`` (local) re-derives the
    same scores bit for bit (the 'validation' ensemble weighs shards by them)."""
    data = toy_dataset(48)
    train, val = data.subset(range(40)), data.subset(range(40, 48))
    est = S3T(on_ray(config(tiny_bert, shards=1, slices=2, budget=1, epochs=1)),
              run_dir=tmp_path / "run").fit(train, val, progress=False)
    assert all(r.val_score is not None for r in est.ledger.stages("live"))
    est.close()
    report = verify_run(tmp_path / "run", "all", progress=False)
    assert report.ok, [c.describe() for c in report.stages if not c.identical]


def test_both_executors_use_the_thread_count_of_the_run_card(reference, ray_session, tmp_path):
    """A run created with 2 torch threads trains with 2 in this process and in each Ray task
    (which asks for 2 CPUs): the same bytes, through a forget and a retrain. The count
    matters: at 1 thread (the reference) some retrained stage rounds differently (the odd
    batch shapes after a deletion show it), so the equality is not a thread-blind model's."""
    path, data, cfg = reference
    two = dataclasses.replace(cfg, torch_threads=2)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # this process's own count is not what training uses
    try:
        local = S3T(two, run_dir=tmp_path / "local").fit(data, progress=False)
        local.forget(pick_victims(local, data))
        local.retrain(progress=False)
    finally:
        torch.set_num_threads(before)
    remote = S3T(on_ray(two), run_dir=tmp_path / "ray").fit(data, progress=False)
    remote.forget(pick_victims(remote, data))
    remote.retrain(progress=False)
    assert stage_files(local) == stage_files(remote)
    for est in (local, remote):
        for record in est.ledger.stages("live"):
            meta = json.loads((est.store.path(record.shard, record.key) / "meta.json").read_text())
            assert meta["torch_threads"] == 2
    one = S3T.load(copy_run(path, tmp_path / "one"))
    one.forget(pick_victims(one, data))
    one.retrain(progress=False)
    ones = stage_files(one)
    differ = [k for k, v in stage_files(local).items() if ones[k] != v]
    assert differ, "the tiny run rounds the same with 1 and 2 threads: the test shows nothing"


def test_a_process_with_other_library_versions_is_refused_before_training(reference, tmp_path):
    path, data, _ = reference
    run = copy_run(path, tmp_path)
    card = json.loads((run / "s3t.json").read_text())
    card["numeric"]["versions"]["torch"] = "0.0.1"
    (run / "s3t.json").write_text(json.dumps(card))
    est = S3T.load(run)
    est.forget(pick_victims(est, data))
    live = len(est.ledger.stages("live"))
    with pytest.raises(NumericEnvError, match=r"torch .* \(the run's: 0.0.1\).*install torch==0.0.1"):
        est.retrain(progress=False)
    with pytest.raises(NumericEnvError, match="install torch==0.0.1"):
        verify_run(run, progress=False)
    spec = RunSpec(config={}, model=None, model_sha256="0", num_labels=3, digests={},
                   eval_block=None, numeric=card["numeric"])
    job = StageJob(key="0-0v0", shard=0, prefix=(0,), versions=(0,), parent=None,
                   ancestors=(), cells=())
    with pytest.raises(NumericEnvError, match="Ray node"):  # a worker refuses before loading
        run_stage(spec, job)
    assert len(est.ledger.stages("live")) == live  # nothing trained


def test_sisa_stages_equal_the_local_executors(tiny_bert, ray_session, tmp_path):
    data = toy_dataset(72)
    cfg = config(tiny_bert, method="sisa", budget=1, strategy="sisa")
    local = S3T(cfg, run_dir=tmp_path / "local").fit(data, progress=False)
    remote = S3T(on_ray(cfg), run_dir=tmp_path / "ray").fit(data, progress=False)
    assert remote.last_train["stages_trained"] == 6
    assert_same_stages(local, remote)


def test_an_anchored_run_trains_and_retrains_on_ray_bitwise_like_local(tiny_bert, ray_session,
                                                                        tmp_path):
    """Anchor data (tests/test_anchor.py): each Ray task trains its stage on the anchor set
    too, from the same feature block, so the files equal the local executor's."""
    from test_anchor import anchored_data
    from test_anchor import config as anchored_config

    data, cfg = anchored_data(), anchored_config(tiny_bert)
    local = S3T(cfg, run_dir=tmp_path / "local").fit(data, progress=False)
    remote = S3T(on_ray(cfg), run_dir=tmp_path / "ray").fit(data, progress=False)
    assert stage_files(local) == stage_files(remote)
    victim = local.ledger.cell_samples(0, 0)[0][0]
    summaries = []
    for est in (local, remote):
        est.forget([victim])
        summaries.append(est.retrain(progress=False))
    assert summaries[1]["executor"] == "ray" and summaries[1]["stages_trained"] > 0
    assert stage_files(local) == stage_files(remote)
    assert remote.status()["anchor_samples"] == 12 and remote.audit().ok


def test_results_arriving_children_first_still_commit_every_stage(tiny_bert, ray_session,
                                                                   tmp_path, monkeypatch):
    """Ray may report a chain's results in any order: the driver holds a child until its
    parent is settled, even when the parent itself waits for its own parent."""
    real_wait = ray_session.wait

    def children_first(refs, num_returns=1, timeout=None, **kw):
        ready, _ = real_wait(refs, num_returns=len(refs), timeout=timeout, **kw)
        return ready[-1:], [r for r in refs if r not in ready[-1:]]  # the latest submitted

    monkeypatch.setattr(ray_session, "wait", children_first)
    cfg = config(tiny_bert, method="sisa", budget=1, strategy="sisa")  # chains of 3 stages
    remote = S3T(on_ray(cfg), run_dir=tmp_path / "ray").fit(toy_dataset(72), progress=False)
    assert remote.last_train["stages_discarded"] == []
    assert remote.last_train["stages_trained"] == 6
    assert remote.audit().ok


def test_a_worker_killed_mid_stage_is_retried_and_every_stage_commits_once(
        reference, ray_session, tmp_path, monkeypatch):
    path, data, cfg = reference
    marker = tmp_path / "killed"
    monkeypatch.setenv(RAY_FAULT_ENV, f"exit-once:{marker}")
    remote = S3T(on_ray(cfg), run_dir=tmp_path / "ray").fit(data, progress=False)
    assert marker.exists(), "the hook never killed a worker"
    records = remote.ledger.stages(None)
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) == remote.last_train["stages_total"]
    assert all(r.status == "live" for r in records)
    committed = [r["key"] for r in remote.last_train["stages"] if r["status"] == "live"]
    assert sorted(committed) == sorted(keys)  # the driver committed each stage once
    assert remote.audit().ok
    assert_same_stages(S3T.load(path), remote)  # the retried stage trained the same weights


def test_a_deletion_while_a_remote_stage_trains_keeps_it_from_going_live(
        reference, ray_session, tmp_path, monkeypatch):
    path, data, _ = reference
    est = S3T.load(copy_run(path, tmp_path))
    est.forget([pick_victims(est, data)[0]])
    target = next(job for job in Scheduler(est.run).plan() if len(job.prefix) == 1)
    victim = target.cells[0].ids[0]
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(RAY_FAULT_ENV, f"pause:{target.key}:{gate}")
    errors: list[BaseException] = []

    def delete_while_it_trains() -> None:
        try:
            deadline = time.monotonic() + 300
            while not (gate / "started").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the paused stage never started")
                time.sleep(0.05)
            other = Run.open(est.run_dir)  # another writer of deletions, as a service would be
            other.forget([victim])
            other.close()
        except BaseException as exc:
            errors.append(exc)
        finally:
            (gate / "resume").touch()

    helper = threading.Thread(target=delete_while_it_trains)
    helper.start()
    summary = est.retrain(progress=False, executor="ray")
    helper.join()
    assert not errors, errors
    assert target.key in summary["stages_discarded"]
    assert target.key in summary["stages_cancelled"]  # stopped, not finished and discarded
    assert summary["replans"] == 1  # the stages on the new versions joined this call
    assert len(est.ledger.stages("live")) == summary["stages_total"]
    assert est.status()["capacity"] == 1.0
    record = {r.key: r for r in est.ledger.stages(None)}.get(target.key)
    assert record is None or record.status != "live"
    assert not est.store.path(target.shard, target.key).exists()
    report = est.audit()
    assert report.ok, report.violations


def test_a_driver_killed_mid_run_leaves_a_run_that_retrain_completes(tiny_bert, ray_session,
                                                                        tmp_path):
    """`s3t train --executor ray --ray-address ADDR` joins the running cluster and dies after
    its first commit; `s3t retrain --ray-address ADDR --json` (here in this process, which is
    connected to that cluster already) finishes the run."""
    data = toy_dataset(48)
    source = tmp_path / "train.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        writer.writerows([i, t, data.label_names[y]]
                         for i, t, y in zip(data.ids, data.texts, data.labels, strict=True))
    address = ray_session.get_runtime_context().gcs_address
    run = tmp_path / "run"
    env = {**os.environ, FAULT_ENV: "train:after-stage-commit"}
    s3t = [sys.executable, "-m", "s3t.cli"]
    killed = subprocess.run(
        [*s3t, "train", "--data", str(source), "--out", str(run), "--model", tiny_bert,
         "--epochs", "1", "--batch-size", "8", "--executor", "ray", "--ray-address", address,
         "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == FAULT_EXIT, killed.stderr[-2000:]
    assert len(Run.open(run).ledger.stages("live")) == 1  # one stage committed, then the crash

    done = CliRunner().invoke(app, ["retrain", str(run), "--ray-address", address, "--json"])
    assert done.exit_code == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["executor"] == "ray" and summary["capacity"] == 1.0
    assert summary["stages_trained"] == summary["stages_total"] - 1, summary
    assert all(r["host"] and r["node_id"] for r in summary["stages"])
    report = Run.open(run, repair=False).audit()
    assert report.ok, report.violations


def test_a_worker_refuses_a_backbone_other_than_the_runs(reference, tmp_path):
    path, _, cfg = reference
    spec = RunSpec(config=cfg.to_dict(), model=cfg.model, model_sha256="0" * 64, num_labels=3,
                   digests={}, eval_block=None)
    job = StageJob(key="0-0v0", shard=0, prefix=(0,), versions=(0,), parent=None,
                   ancestors=(), cells=())
    with pytest.raises(ValueError, match="differs from the run's"):
        run_stage(spec, job)


def test_executor_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError) as info:
        S3TConfig(executor="spark").validate()
    assert info.value.field == "executor"
    with pytest.raises(ConfigError) as info:
        S3TConfig(ray_address="auto").validate()  # an address only means something on Ray
    assert info.value.field == "ray_address"
    S3TConfig(executor="ray", ray_address="auto").validate()
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "x.csv"), "--out",
                                      str(tmp_path / "run"), "--ray-address", "auto"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --ray-address: ray_address must be"), result.stderr


def test_the_rest_of_s3t_never_imports_ray():
    code = ("import sys, s3t.engine, s3t.cli, s3t.train.local, s3t.train.ray_executor; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_ray_test_is_in_this_file():
    """scripts/test.sh's pytest-xdist keeps one file's tests in one worker (``loadscope``): a
    Ray test elsewhere would start a second Ray instance in another worker (conftest.py)."""
    from pathlib import Path

    here = Path(__file__)
    users = [p.name for p in here.parent.glob("test_*.py")
             if p != here and "ray_session" in p.read_text()]
    assert not users, f"move these Ray tests into {here.name}: {users}"


def test_ray_trains_the_recipe_bitwise_like_local(tiny_bert, ray_session, tmp_path):
    """Every option on: Ray workers (one torch thread) give the local executor's stages."""
    from test_recipe import DATA, VAL, tiny_config

    cfg = tiny_config(tiny_bert, slices=2, budget=2, best_epoch=True, stage_steps="equal",
                      lr_schedule="cosine", warmup_ratio=0.2, use_rslora=True)
    with one_thread():
        local = S3T(cfg, run_dir=tmp_path / "local").fit(DATA, VAL, progress=False)
    remote = S3T(dataclasses.replace(cfg, executor="ray"), run_dir=tmp_path / "ray").fit(
        DATA, VAL, progress=False)
    assert_same_stages(local, remote)
    assert ([r.val_score for r in local.ledger.stages("live")]
            == [r.val_score for r in remote.ledger.stages("live")])


def test_a_cancelled_stage_task_learns_it_from_the_stop_list_without_blocking(ray_session):
    """The driver cancels a running stage by naming it on the call's StopList; the task's
    ``should_stop`` sends the question, never waits for the answer, and says True once the
    key is listed (a broken list, or a check that never reads the answer, fails here)."""
    import ray

    from s3t.train.ray_worker import StopList, _Stopped

    stops = ray.remote(StopList).options(num_cpus=0).remote()
    other, mine = _Stopped(stops, "0-1v0"), _Stopped(stops, "0-2v0", every_s=0.0)
    assert mine() is False  # the question is sent; the answer is not awaited
    ray.get(stops.add.remote("0-2v0"))
    deadline, seen = time.monotonic() + 30, False
    while not seen and time.monotonic() < deadline:
        seen = mine()
        time.sleep(0.01)
    assert seen, "a listed stage never learnt that it was cancelled"
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert other() is False, "an unlisted stage was told to stop"
        time.sleep(0.01)
    assert _Stopped(None, "0-2v0")() is False  # no list (a spec from before): never stops
