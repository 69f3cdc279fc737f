"""The public estimator: ``S3T(config).fit(data)``, ``predict`` (classifiers) or ``generate``
and ``evaluate_lm`` (causal LMs), ``forget``, ``retrain``, ``save``/``load``.

A thin facade: the run's records live in :class:`~s3t.run.Run`, training in ``s3t.train``
(scheduler and local executor), serving in :class:`~s3t.serve.served.ServedModel`. The run
directory is the source of truth; this object only holds what is expensive to rebuild
(the backbone, the feature cache, stage weights already read).
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from s3t.config import NO_VALIDATION, NO_VALIDATION_ENSEMBLE, ConfigError, S3TConfig
from s3t.data.samples import Dataset
from s3t.models.adapted import AdaptedBackbone, default_model_dir
from s3t.models.stage_weights import StageWeights, WeightBank
from s3t.plan.accuracy import DepthTable
from s3t.plan.methods import Method
from s3t.plan.orderings import make_orderings
from s3t.plan.prefix_tree import PrefixTree
from s3t.run import AuditReport, Ledger, Run, StageStore, model_fingerprint
from s3t.run.directory import RUN_FILE
from s3t.run.faults import fault_point
from s3t.run.layout import Layout, lay_out
from s3t.serve.depth_table import depth_table
from s3t.serve.ensemble import ServedRoute
from s3t.serve.served import Generation, Prediction, ServedModel
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.local import train_missing
from s3t.train.numeric import check_env, numeric_env
from s3t.train.scheduler import Scheduler

__all__ = ["S3T", "Generation", "Prediction", "model_fingerprint"]


class S3T:
    """Sequence-aware Sharded Sliced Training with exact, instant forgetting."""

    # Set by fit or load; the rest is built on first use.
    run: Run | None = None
    last_train: dict | None = None
    _backbone: AdaptedBackbone | None = None
    _features: FeatureCache | OnTheFlyFeatures | None = None
    _served: ServedModel | None = None
    _bank: WeightBank | None = None
    _owns_tmp: bool = False

    def __init__(self, config: S3TConfig | None = None, run_dir: str | Path | None = None):
        self.config = config
        self.run_dir = run_dir

    # --- the run's parts ----------------------------------------------------------------------
    @property
    def ledger(self) -> Ledger:
        return self._require_fitted().ledger

    @property
    def store(self) -> StageStore:
        return self._require_fitted().store

    @property
    def label_names(self) -> list[str]:
        return self._require_fitted().label_names

    @property
    def task(self) -> str:
        return self._require_fitted().task

    @property
    def tree(self) -> PrefixTree:
        return self._require_fitted().tree

    @property
    def method(self) -> Method:
        return self._require_fitted().method

    # The backbone loads on first use: forget, status and audit never need it, so a
    # deletion costs no model-sized work even in a fresh process.
    @property
    def backbone(self) -> AdaptedBackbone:
        if self._backbone is None:
            run = self._require_fitted()
            model_dir = run.config.model or default_model_dir()
            if model_fingerprint(model_dir) != run.info["model_sha256"]:
                raise ValueError(f"the backbone at {model_dir} differs from the one this run "
                                 "was trained with (sha256 mismatch): install the same model")
            self._backbone = AdaptedBackbone(run.config, num_labels=len(run.label_names),
                                             model_dir=model_dir)
        return self._backbone

    @property
    def features(self) -> FeatureCache | OnTheFlyFeatures:
        if self._features is None:
            run = self._require_fitted()
            config = run.config
            if config.feature_cache:
                self._features = FeatureCache(
                    self.backbone, chunk_size=config.batch_size, dtype=config.feature_cache_dtype,
                    memory_bytes=int(config.feature_cache_memory_gb * 2**30),
                    files=run.features, is_current=run.is_current)
            else:
                self._features = OnTheFlyFeatures(self.backbone, chunk_size=config.batch_size)
        return self._features

    # --- training -----------------------------------------------------------------------------
    def fit(self, data: Dataset, eval_data: Dataset | None = None, progress: bool = True) -> S3T:
        config = (self.config or S3TConfig()).validate()
        self.config = config
        if data.labels is None:
            raise ValueError("training data has no labels: every sample needs a label")
        layout = lay_out(config, data)  # cells (or the anchor set), before anything is made
        if eval_data is not None and eval_data.labels is None:
            raise ValueError("eval data has no labels")
        if config.best_epoch and (eval_data is None or len(eval_data) == 0):
            raise ConfigError("best_epoch", NO_VALIDATION)
        if config.ensemble == "validation" and (eval_data is None or len(eval_data) == 0):
            raise ConfigError("ensemble", NO_VALIDATION_ENSEMBLE)
        if self.run_dir is None:
            self.run_dir, self._owns_tmp = Path(tempfile.mkdtemp(prefix="s3t-run-")), True
        Run.refuse_existing(self.run_dir)
        label_names = list(data.label_names) or [str(i) for i in range(max(data.labels) + 1)]
        backbone = AdaptedBackbone(config, num_labels=len(label_names))
        if backbone.task == "classification" and len(set(data.labels)) < 2:
            raise ValueError("training data has a single class: a classifier needs samples "
                             "of at least two labels")
        run_dir = Path(self.run_dir)
        existed = run_dir.is_dir()
        if existed and any(run_dir.iterdir()):
            raise FileExistsError(f"{run_dir} exists and is not empty (and is not an s3t run): "
                                  "choose a new or empty directory")
        try:
            return self._fit(run_dir, config, data, eval_data, backbone, label_names, layout,
                             progress)
        except BaseException:
            if self.run is not None:  # leave no half-made run behind
                self.close()
            if not existed or self._owns_tmp:
                shutil.rmtree(run_dir, ignore_errors=True)
            for child in list(run_dir.iterdir()) if run_dir.is_dir() else []:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            raise

    def _fit(self, run_dir: Path, config: S3TConfig, data: Dataset, eval_data: Dataset | None,
             backbone: AdaptedBackbone, label_names: list[str], layout: Layout,
             progress: bool) -> S3T:
        """Create the run and train it (``fit`` has checked the inputs)."""
        labels = list(data.labels or [])
        eval_labels = list(eval_data.labels or []) if eval_data is not None else []
        if backbone.task == "causal_lm":
            from s3t.data.instructions import parse_instruction

            for texts in (data.texts, eval_data.texts if eval_data is not None else []):
                for text in texts:
                    parse_instruction(text)
        cells = layout.cells
        orderings = make_orderings(config.strategy, config.slices, config.budget,
                                   prior=layout.prior, seed=config.seed)
        run = Run.create(run_dir, config, {
            "label_names": label_names, "task": backbone.task, "model_dir": backbone.model_dir,
            "model_sha256": model_fingerprint(backbone.model_dir),
            "orderings": [list(o) for o in PrefixTree(orderings).orderings], **layout.card})
        self._attach(run)
        run.ledger.add_samples(
            ((sid, *cells[sid], grp, label, text) for sid, grp, label, text in
             zip(data.ids, data.groups, labels, data.texts, strict=True)),
            config.shards, config.slices)
        if data.priors is not None or data.deletable is not None:
            run.ledger.add_placement(zip(data.ids, data.priors or [None] * len(data),
                                         data.deletable or [True] * len(data), strict=True))
        if eval_data is not None:
            run.ledger.add_eval_samples(zip(eval_data.ids, eval_labels, eval_data.texts,
                                            strict=True))
        self._backbone = backbone
        started = time.perf_counter()
        with run.writer_lock():
            self.last_train = self._train_missing(progress)
        self.last_train["train_seconds"] = time.perf_counter() - started
        return self

    def retrain(self, progress: bool = True,
                on_event: Callable[[dict], object] | None = None,
                executor: str | None = None, ray_address: str | None = None) -> dict:
        """Train every stage of the plan that is missing on the current data; restore routes.

        Stages whose files are missing or altered are quarantined first and rebuilt. Only one
        retrain runs per run directory at a time; deletions may go on meanwhile (a stage
        whose data changed while it trained is discarded, never served). Each stage serves
        from its commit on; ``on_event`` receives the scheduler's progress events.
        ``executor`` and ``ray_address`` override the run's config for this call (an address
        alone means executor 'ray'); the weights are the same either way.
        """
        run = self._require_fitted()
        started = time.perf_counter()
        with run.writer_lock():
            damaged = run.quarantine_damaged()
            self._weights.drop(damaged)
            fault_point("retrain:after-quarantine")
            summary = self._train_missing(progress, on_event, executor, ray_address)
        summary["quarantined_stages"] = damaged
        summary["train_seconds"] = time.perf_counter() - started
        return summary

    def _train_missing(self, progress: bool, on_event: Callable[[dict], object] | None = None,
                       executor: str | None = None, ray_address: str | None = None) -> dict:
        run = self._require_fitted()
        where = run.config
        if executor is not None or ray_address is not None:
            where = dataclasses.replace(run.config, executor=executor or "ray",
                                        ray_address=ray_address).validate()
        scheduler = Scheduler(run, on_event)
        check_env(run.numeric)  # before anything is planned or trained: say what cannot match
        if where.executor == "ray":  # imports ray only here; each task applies the environment
            from s3t.train.ray_executor import train_missing_ray

            return train_missing_ray(scheduler, self._weights, address=where.ray_address,
                                     progress=progress)
        with numeric_env(run.numeric):
            return train_missing(scheduler, self.backbone, self.features, self._weights, progress)

    # --- serving ------------------------------------------------------------------------------
    @property
    def _weights(self) -> WeightBank:
        if self._bank is None:
            self._bank = WeightBank(self._require_fitted().store)
        return self._bank

    def _serving(self) -> ServedModel:
        if self._served is None:
            self._served = ServedModel(self._require_fitted(), self.backbone, self._weights)
        return self._served

    def served(self) -> Mapping[int, ServedRoute]:
        """What is served now: each live shard's route (stage key, weights, merged layers)."""
        return self._serving().routes()

    def depth_table(self, progress: Callable[[int, int], object] | None = None,
                    rows: Sequence[tuple[str, int, str]] | None = None) -> DepthTable:
        """Each shard's output at each depth on the validation samples (or held-out ``rows``)."""
        return depth_table(self._serving(), progress, rows)

    def stage_weights(self, key: str) -> StageWeights:
        """A live stage's weights, read from its files (hash-checked) on first use."""
        record = self._require_fitted().live_stages().get(key)
        if record is None:
            raise ValueError(f"no live stage {key!r} in this run (see `s3t status`)")
        return self._weights.get(record)

    def live_weights(self) -> dict[str, StageWeights]:
        """Every live stage's weights by key (read and hash-checked on first use)."""
        return {key: self._weights.get(record)
                for key, record in self._require_fitted().live_stages().items()}

    def predict(self, inputs: Sequence[str] | str, batch_size: int = 64) -> Prediction:
        """Mean of class probabilities over live shards (or majority vote, per config)."""
        self._require_fitted()
        return self._serving().predict([inputs] if isinstance(inputs, str) else list(inputs),
                                       batch_size)

    def generate(self, prompt: str, max_new_tokens: int = 32, greedy: bool = True,
                 temperature: float = 1.0, seed: int = 0) -> Generation:
        """Answer an instruction with the live shards' averaged next-token probabilities."""
        self._require_fitted()
        return self._serving().generate(prompt, max_new_tokens, greedy, temperature, seed)

    def evaluate_lm(self, data: Dataset | Sequence[str], batch_size: int = 8) -> dict:
        """Token loss and perplexity on held-out instruction data, ensemble and per route."""
        self._require_fitted()
        texts = list(data.texts if isinstance(data, Dataset) else data)
        return self._serving().evaluate_lm(texts, batch_size)

    def score(self, data: Dataset) -> float:
        if data.labels is None:
            raise ValueError("scoring needs labelled data")
        pred = self.predict(data.texts)
        return float(np.mean(pred.label_ids == np.asarray(self._map_labels(data))))

    def _map_labels(self, data: Dataset) -> list[int]:
        if data.labels is None:
            raise ValueError("mapping labels needs labelled data")
        if not data.label_names or data.label_names == self.label_names:
            return list(data.labels)
        index = {name: i for i, name in enumerate(self.label_names)}
        unknown = sorted({data.label_names[y] for y in data.labels} - set(index))
        if unknown:
            raise ValueError(f"labels not seen in training: {unknown}")
        return [index[data.label_names[y]] for y in data.labels]

    # --- forgetting ---------------------------------------------------------------------------
    def set_serve_orderings(self, value: str) -> S3T:
        """One ordering per shard (``"best"``) or every surviving one (``"all"``)."""
        return self.set_serving(serve_orderings=value)

    def set_serving(self, **choices: str) -> S3T:
        """Change ``serve_orderings``/``ensemble`` without retraining (written to the card)."""
        run = self._require_fitted()
        if run.set_serving(**choices):
            self.config, self._served = run.config, None
        return self

    def forget(self, sample_ids: Sequence[str] | None = None,
               groups: Sequence[str] | None = None) -> dict:
        """Delete samples (or whole groups) exactly; returns the deletion certificate.

        The request is validated first (an invalid one changes nothing), committed durably,
        and every stage that saw a deleted sample is dropped from routing and erased from
        disk before this returns. No training happens here.
        """
        plan, certificate = self._require_fitted().forget(sample_ids, groups)
        self._weights.drop(certificate["erased_stages"])
        if isinstance(self._features, FeatureCache):  # rows of untouched chunks stay for reuse
            for cell in plan.cells:
                self._features.forget(cell, {s for s, c in plan.new.items() if c == cell})
        elif self._features is not None:
            for cell in plan.cells:
                self._features.drop(cell)
        return certificate

    def audit(self) -> AuditReport:
        return self._require_fitted().audit()

    def status(self) -> dict:
        return self._require_fitted().status()

    def close(self) -> None:
        """Close the ledger and drop the feature cache; the run directory stays as it is."""
        self._close_features()
        if self.run is not None:
            self.run.close()
            self.run = None

    def _close_features(self) -> None:
        if isinstance(self._features, FeatureCache):
            self._features.close()
        self._features = None

    def __enter__(self) -> S3T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Copy the run to ``path`` (a consistent snapshot) and continue working there."""
        run = self._require_fitted()
        target = Path(path).resolve()
        if target == run.path.resolve():
            return target
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"{target} exists and is not empty: choose a new directory")
        target.mkdir(parents=True, exist_ok=True)
        self._close_features()  # it may have spilled under the old directory
        backup = sqlite3.connect(target / Ledger.FILE)
        run.ledger.conn.backup(backup)
        backup.close()
        shutil.copytree(run.path / "stages", target / "stages")
        if (run.path / "certificates").exists():
            shutil.copytree(run.path / "certificates", target / "certificates")
        shutil.copy2(run.path / RUN_FILE, target / RUN_FILE)
        run.close()
        if self._owns_tmp:
            shutil.rmtree(run.path, ignore_errors=True)
            self._owns_tmp = False
        self._attach(Run.open(target, repair=False), keep_weights=True)
        return target

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, repair: bool = True) -> S3T:
        """Open a run directory. ``verify`` reads every live stage now, checking its files'
        sha256 (a stage is always checked when read); ``repair`` finishes an interrupted
        forget (stage files the ledger no longer holds live are erased)."""
        run = Run.open(path, repair=repair)
        self = cls(run.config, run_dir=run.path)
        self._attach(run)
        if verify:
            for record in run.ledger.stages("live"):
                self._weights.get(record)
        return self

    def _attach(self, run: Run, keep_weights: bool = False) -> None:
        self.run, self.run_dir, self.config = run, run.path, run.config
        self._served = None
        if keep_weights and self._bank is not None:
            self._bank.store = run.store
        else:
            self._bank = None

    def _require_fitted(self) -> Run:
        if self.run is None:
            raise RuntimeError("this S3T has not been fitted or loaded: call fit() or S3T.load()")
        return self.run
