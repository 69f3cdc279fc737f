"""The per-stage training recipe (issue 14): stage_steps, lr_schedule with warm-up, and
best_epoch selection on the validation samples; each changes training as documented, and
validation samples stay non-deletable (the bitwise retrain-equivalence test with every option
on is in test_exactness.py, the same on Ray in test_ray.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_exactness import assert_same_weights, validation_set
from tiny import toy_dataset
from typer.testing import CliRunner

from s3t.cli import app
from s3t.config import ConfigError, S3TConfig, validation_use
from s3t.engine import S3T
from s3t.models.adapted import AdaptedBackbone
from s3t.plan.methods import Method
from s3t.run.forget import ValidationSampleError
from s3t.train import stage_trainer
from s3t.train.features import FeatureCache
from s3t.train.stage_trainer import lr_factor, train_stage
from s3t.verify import verify_run

DATA = toy_dataset(30)
VAL = validation_set()


def tiny_config(model: str, **kw) -> S3TConfig:
    base = dict(model=model, shards=1, slices=3, budget=3, epochs=2, batch_size=8,
                learning_rate=1e-2, seed=5)
    return S3TConfig(**{**base, **kw}).validate()


class Stage:
    """One backbone and feature cache for training depth-1 stages of shard 0 repeatedly."""

    def __init__(self, cfg: S3TConfig):
        self.cfg = cfg
        self.backbone = AdaptedBackbone(cfg, num_labels=3)
        self.features = FeatureCache(self.backbone, chunk_size=cfg.batch_size)
        self.features.ensure("all", 0, DATA.ids, DATA.texts)
        self.features.ensure("eval", 0, VAL.ids, VAL.texts)

    def train(self, cfg: S3TConfig | None = None, val: bool = False, **kw):
        self.backbone.config = cfg or self.cfg  # the recipe fields are read per stage
        return train_stage(self.backbone, self.features, shard=0, prefix=(0,), ancestors=[],
                           method=Method("s3t", self.cfg.slices), sample_ids=DATA.ids,
                           labels=DATA.labels, val=(VAL.ids, VAL.labels) if val else None, **kw)


@pytest.fixture(scope="module")
def stage(tiny_bert) -> Stage:
    return Stage(tiny_config(tiny_bert))


@pytest.fixture
def steps(monkeypatch) -> list[float]:
    """The learning rate of every AdamW step taken while the test runs."""
    taken: list[float] = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        taken.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return taken


# --- stage_steps -----------------------------------------------------------------------------

def test_equal_steps_give_a_shallow_stage_the_steps_of_full_shard_epochs(stage, steps):
    cfg = stage.cfg
    seen: list[int] = []
    stage.train(progress=seen.append)
    assert len(steps) == cfg.epochs * math.ceil(30 / 8) == 8  # 'epochs': 2 passes over 30
    assert sum(seen) == cfg.stage_sample_visits(30, 1) == 60
    steps.clear()
    seen.clear()
    equal = tiny_config(cfg.model, stage_steps="equal")
    stage.train(equal, progress=seen.append)
    # as many steps as 2 passes over a shard of 30 x 3 samples: 24, i.e. 6 passes over 30
    assert len(steps) == equal.epochs * math.ceil(30 * 3 / 8) == 24
    assert sum(seen) == equal.stage_sample_visits(30, 1) == 6 * 30


def test_equal_step_count_uses_the_prefix_only_and_matches_epochs_at_full_depth():
    equal, epochs = S3TConfig(slices=3, stage_steps="equal"), S3TConfig(slices=3)
    for n in (1, 31, 32, 100):  # full depth: both rules train epochs passes over the shard
        assert equal.stage_step_count(n, 3) == epochs.stage_step_count(n, 3)
    # equal slices of k samples: every depth gets the full shard's steps
    k = 40
    assert {equal.stage_step_count(p * k, p) for p in (1, 2, 3)} == {3 * math.ceil(3 * k / 32)}
    assert equal.stage_step_count(0, 1) == 0
    # a partial last pass: 3 x ceil(10 x 3 / 32) = 3 steps over 1-batch passes
    assert equal.stage_step_count(10, 1) == 3 and equal.stage_sample_visits(10, 1) == 30
    assert S3TConfig(slices=3, stage_steps="equal", epochs=1, batch_size=4
                     ).stage_sample_visits(10, 2) == 10 + 4  # 4 steps: one pass and a batch


# --- lr_schedule ------------------------------------------------------------------------------

@pytest.mark.parametrize(("schedule", "step", "expected"), [
    ("constant", 0, 1 / 3), ("constant", 1, 2 / 3), ("constant", 2, 1.0), ("constant", 9, 1.0),
    ("linear", 0, 1 / 3), ("linear", 2, 1.0), ("linear", 6, 0.5), ("linear", 9, 1 / 8),
    ("cosine", 1, 2 / 3), ("cosine", 2, 1.0), ("cosine", 4, 0.5 * (1 + math.cos(math.pi / 4))),
    ("cosine", 6, 0.5), ("cosine", 9, 0.5 * (1 + math.cos(math.pi * 7 / 8))),
])
def test_lr_factor_warms_up_then_follows_the_schedule(schedule, step, expected):
    # 10 steps, warmup_ratio 0.2: steps 0 and 1 warm up, decay runs over steps 2..9 towards 0
    assert lr_factor(schedule, step, 10, 0.2) == pytest.approx(expected, abs=1e-12)


def test_lr_factor_without_warm_up_starts_at_the_peak():
    assert lr_factor("linear", 0, 8, 0.0) == 1.0 and lr_factor("cosine", 0, 8, 0.0) == 1.0
    assert lr_factor("constant", 5, 8, 0.0) == 1.0


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_training_uses_the_schedule_at_every_step(stage, steps, schedule):
    cfg = tiny_config(stage.cfg.model, lr_schedule=schedule, warmup_ratio=0.25)
    stage.train(cfg)
    total = cfg.stage_step_count(30, 1)
    assert len(steps) == total == 8
    assert steps == pytest.approx([cfg.learning_rate * lr_factor(schedule, s, total, 0.25)
                                   for s in range(total)], rel=1e-12)
    assert steps[0] < steps[2] == pytest.approx(cfg.learning_rate)  # 2 warm-up steps
    if schedule != "constant":
        assert steps[-1] < steps[3]


def test_the_default_recipe_keeps_a_constant_rate(stage, steps):
    stage.train()
    assert steps == [stage.cfg.learning_rate] * 8


# --- best_epoch -------------------------------------------------------------------------------

def scripted_scores(monkeypatch, scores: list[float]) -> list[dict]:
    """Make the validation score of pass i be scores[i]; return each pass's weights."""
    snapshots: list[dict] = []

    def fake(backbone, features, val, active, batch_size):
        snapshots.append({"head": backbone.head_state(), "adapter": backbone.adapter_state((1,))})
        return scores[len(snapshots) - 1]

    monkeypatch.setattr(stage_trainer, "val_score", fake)
    return snapshots


@pytest.mark.parametrize(("scores", "kept"), [([0.2, 0.9, 0.9, 0.5], 1), ([0.5, 0.4, 0.3, 0.1], 0),
                                              ([0.1, 0.2, 0.3, 0.4], 3)])
def test_best_epoch_keeps_the_best_pass_earliest_on_ties(stage, monkeypatch, scores, kept):
    cfg = tiny_config(stage.cfg.model, epochs=4, best_epoch=True)
    snapshots = scripted_scores(monkeypatch, scores)
    result = stage.train(cfg, val=True)
    assert len(snapshots) == 4, "one evaluation per pass"
    assert result.val_score == scores[kept]
    for part in ("head", "adapter"):
        got = getattr(result.weights, part)
        assert all(torch.equal(got[k], snapshots[kept][part][k]) for k in got), part
    if kept != 3:
        assert not torch.equal(result.weights.head["classifier.weight"],
                               snapshots[3]["head"]["classifier.weight"])
    # the model holds the kept weights afterwards
    assert torch.equal(stage.backbone.head_state()["classifier.weight"],
                       result.weights.head["classifier.weight"])


@pytest.mark.parametrize(("epochs", "batch_size", "passes"), [
    (2, 8, 6),  # 2 x ceil(90 / 8) = 24 steps, 4 per pass over 30 samples
    (1, 7, 3),  # ceil(90 / 7) = 13 steps, 5 per pass: the third pass stops after 3 steps
])
def test_best_epoch_evaluates_after_every_pass_of_equal_steps(stage, monkeypatch, steps, epochs,
                                                              batch_size, passes):
    cfg = tiny_config(stage.cfg.model, stage_steps="equal", best_epoch=True, epochs=epochs,
                      batch_size=batch_size)
    snapshots = scripted_scores(monkeypatch, [0.0] * 20)
    stage.train(cfg, val=True)
    assert len(steps) == cfg.stage_step_count(30, 1)
    assert len(snapshots) == passes


def test_evaluating_does_not_change_training(stage):
    """On the real scores, the kept score is the best; keeping the last pass reproduces the
    run without best_epoch bit for bit (evaluation draws no random numbers)."""
    scores: list[float] = []
    real = stage_trainer.val_score

    def record(*args):
        scores.append(real(*args))
        return scores[-1]

    plain = stage.train(tiny_config(stage.cfg.model, epochs=3), val=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage_trainer, "val_score", record)
        best = stage.train(tiny_config(stage.cfg.model, epochs=3, best_epoch=True), val=True)
    assert len(scores) == 3 and best.val_score == max(scores)
    if scores.index(max(scores)) == 2:
        assert_same_weights(best.weights, plain.weights)
        assert best.val_score == plain.val_score
    calls = iter(range(3))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage_trainer, "val_score", lambda *args: float(next(calls)))
        last = stage.train(tiny_config(stage.cfg.model, epochs=3, best_epoch=True), val=True)
    assert_same_weights(last.weights, plain.weights)  # increasing scores: the last pass


def test_best_epoch_without_validation_samples_names_the_fix(stage, tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, best_epoch=True)
    with pytest.raises(ConfigError, match="--eval-size") as info:
        S3T(cfg, run_dir=tmp_path / "run").fit(DATA, progress=False)
    assert info.value.field == "best_epoch"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="validation"):
        stage.train(cfg)


def test_best_epoch_run_refuses_to_forget_validation_samples_and_says_why(tiny_bert, tmp_path):
    cfg = tiny_config(tiny_bert, slices=2, budget=2, epochs=2, best_epoch=True,
                      lr_schedule="linear", warmup_ratio=0.1, stage_steps="equal")
    est = S3T(cfg, run_dir=tmp_path / "run").fit(DATA, VAL, progress=False)
    with pytest.raises(ValidationSampleError, match="validation samples cannot be forgotten"):
        est.forget([VAL.ids[0]])
    status = est.status()
    assert status["deleted"] == 0 and status["deletion_requests"] == 0
    assert status["validation_samples"] == len(VAL)
    assert "model selection" in status["validation_use"]
    assert "never deletable" in status["validation_use"].lower()
    est.forget([DATA.ids[0]])
    est.close()
    # s3t verify rebuilds best-epoch stages with the same validation block
    report = verify_run(tmp_path / "run", progress=False)
    assert report.stages and all(c.status == "identical" for c in report.stages), report.stages


def test_status_without_best_epoch_says_validation_only_breaks_ties():
    use = validation_use(S3TConfig())
    assert "route ties" in use and "model selection" not in use and "Never deletable" in use
    assert "model selection" in validation_use(S3TConfig(best_epoch=True))


# --- the command line -------------------------------------------------------------------------

def test_train_flags_set_the_recipe_and_status_reports_model_selection(tiny_bert, tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("id,text,label\n" + "".join(
        f"s{i},{t},{DATA.label_names[y]}\n"
        for i, (t, y) in enumerate(zip(DATA.texts, DATA.labels, strict=True))))
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "--data", str(csv), "--out", str(out), "--model", tiny_bert, "--shards", "1",
        "--slices", "2", "--epochs", "1", "--batch-size", "8", "--eval-size", "6",
        "--stage-steps", "equal", "--lr-schedule", "cosine", "--warmup-ratio", "0.1",
        "--best-epoch", "--rslora", "--lora-r", "4", "--lora-alpha", "8", "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert {k: config[k] for k in ("stage_steps", "lr_schedule", "warmup_ratio", "best_epoch",
                                   "use_rslora", "lora_r", "lora_alpha", "batch_size")} == {
        "stage_steps": "equal", "lr_schedule": "cosine", "warmup_ratio": 0.1,
        "best_epoch": True, "use_rslora": True, "lora_r": 4, "lora_alpha": 8, "batch_size": 8}
    status = runner.invoke(app, ["status", str(out)])
    assert status.exit_code == 0, status.output
    assert "validation samples 6: model selection" in status.stdout
