"""A run's numeric environment: recorded on the card at creation, applied (and restored) by
whoever trains or verifies, refused before any work where it cannot be matched; cards
written before it keep working."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_exactness import config
from tiny import copy_run, toy_dataset

from s3t.engine import S3T
from s3t.run import Run
from s3t.run.card import NotARunError
from s3t.run.numeric import CUBLAS_WORKSPACE, LEGACY, NumericEnv, installed_versions, new_env
from s3t.train.numeric import NumericEnvError, numeric_env
from s3t.verify import verify_run


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    data = toy_dataset(48)
    path = tmp_path_factory.mktemp("numeric") / "run"
    S3T(config(tiny_bert, slices=2, budget=2, epochs=1), run_dir=path).fit(
        data, progress=False).close()
    return path, data


def edit_card(path, change) -> None:
    card = json.loads((path / "s3t.json").read_text())
    change(card)
    (path / "s3t.json").write_text(json.dumps(card))


def test_the_card_records_the_environment_at_creation(trained):
    path, _ = trained
    run = Run.open(path, repair=False)
    env = run.numeric
    run.close()
    assert env == NumericEnv(torch_threads=1, deterministic=True, dtype="float32", device="cpu",
                             versions=installed_versions())
    assert set(env.versions) == {"torch", "transformers", "peft"}


def test_the_environment_is_applied_and_then_restored():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    other = 2 if before[0] == 1 else 1
    with numeric_env(new_env(other)) as used:
        assert torch.get_num_threads() == other and torch.are_deterministic_algorithms_enabled()
        assert used["torch_threads"] == other and used["versions"] == installed_versions()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    with numeric_env(LEGACY) as used:  # a legacy card fixes nothing
        assert torch.get_num_threads() == before[0] and used["legacy_card"]


def test_a_card_that_contradicts_itself_is_a_damaged_run(trained, tmp_path):
    path, _ = trained
    run = copy_run(path, tmp_path)
    edit_card(run, lambda c: c["numeric"].update(torch_threads=3))
    with pytest.raises(NotARunError, match=r"numeric.torch_threads.*\(3\) disagrees"):
        Run.open(run)
    edit_card(run, lambda c: c["numeric"].update(torch_threads=1, device="tpu"))
    with pytest.raises(NotARunError, match="numeric.device"):
        Run.open(run)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_a_cuda_run_is_refused_before_work_where_there_is_no_cuda(trained, tmp_path):
    path, data = trained
    run = copy_run(path, tmp_path)
    edit_card(run, lambda c: c["numeric"].update(device="cuda"))
    est = S3T.load(run)
    est.forget([est.ledger.cell_samples(0, 0)[0][0]])
    live = len(est.ledger.stages("live"))
    with pytest.raises(NumericEnvError, match="computes on CUDA but this process has no CUDA"):
        est.retrain(progress=False)
    assert len(est.ledger.stages("live")) == live
    with pytest.raises(NumericEnvError, match="no CUDA"):
        verify_run(run, progress=False)


def test_a_card_without_the_field_keeps_working(trained, tmp_path):
    """Cards written before ``numeric``: training keeps the process's thread count, verify
    rebuilds each stage at the count its meta.json recorded (documented fallback)."""
    path, data = trained
    run = copy_run(path, tmp_path)

    def legacy(card: dict) -> None:
        del card["numeric"]
        del card["config"]["torch_threads"]
    edit_card(run, legacy)
    est = S3T.load(run)
    assert est.run.numeric.legacy and est.config.torch_threads == 0
    est.forget([est.ledger.cell_samples(0, 0)[0][0]])
    before = torch.get_num_threads()
    est.retrain(progress=False)
    assert torch.get_num_threads() == before
    est.close()
    report = verify_run(run, "all", progress=False)
    assert report.ok, [c.describe() for c in report.stages if not c.identical]
    assert report.environment["legacy_card"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_cuda_runs_with_deterministic_kernels_and_a_fixed_cublas_workspace():
    env = NumericEnv(torch_threads=1, device="cuda", versions=installed_versions())
    with numeric_env(env):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert torch.are_deterministic_algorithms_enabled()
        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randn(512, 512, device="cuda", generator=g)
        b = torch.randn(512, 512, device="cuda", generator=g)
        first = (a @ b).sum(dim=0)
        assert torch.equal(first, (a @ b).sum(dim=0))
