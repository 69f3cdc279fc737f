"""What a Ray worker runs for one stage: build (once per process) the backbone and a feature
cache, train the stage, return its weight files as bytes and its metrics.

A worker never sees the run directory and writes nothing: the driver
(:mod:`s3t.train.ray_executor`) verifies and commits what it returns. Its backbone must be the
run's (the sha256 of the model files is checked here, on the worker); its feature cache keys each
cell by a digest of the cell's retained ids and inputs, so a cell that a deletion changed, or a
cell of another run, is never served from stale features. Runs in the run's numeric environment
(its torch thread count, deterministic kernels; another library version is refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s3t.config import S3TConfig
from s3t.models.stage_weights import StageWeights
from s3t.run.numeric import LEGACY, NumericEnv
from s3t.train.scheduler import EVAL_BLOCK, StageJob

#: Test hook, read by the driver and sent to the workers in the RunSpec: ``exit-once:MARKER``
#: makes the first stage attempt that creates file MARKER exit at once (as kill -9 would);
#: ``pause:KEY:DIR`` makes stage KEY write DIR/started and wait until DIR/resume exists.
RAY_FAULT_ENV = "S3T_RAY_FAULT"
_NOT_WEIGHTS = ("executor", "ray_address")  # config fields that do not shape a worker's model


@dataclass(frozen=True)
class RunSpec:
    """What every stage task of one call shares (sent once through Ray's object store)."""

    config: dict[str, Any]
    model: str | None  # the run's model path; None: the default model package on each worker
    model_sha256: str
    num_labels: int
    digests: dict[Hashable, str]  # cell (or the eval block) -> digest of its ids and inputs
    eval_block: tuple[list[str], list[int], list[str]] | None
    test_hook: str | None = None  # the driver's RAY_FAULT_ENV, for the crash and race tests
    numeric: dict | None = None  # the run's numeric environment (None: a card without one)
    stops: Any = None  # the call's StopList actor: stages the driver cancelled

    @property
    def env(self) -> NumericEnv:
        """The environment a task computes in; a legacy card's tasks keep one thread."""
        env = LEGACY if self.numeric is None else NumericEnv.from_dict(self.numeric)
        return dataclasses.replace(env, torch_threads=1) if env.legacy else env


class StopList:
    """The stages a retrain call cancelled (a Ray actor, one per call). A stage task asks it
    between optimiser steps and stops itself: cancelling a running task from the driver
    (``ray.cancel``) raced with its completion and crashed the driver in Ray 2.60
    (``TaskManager::CompletePendingTask``)."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def add(self, *keys: str) -> None:
        self.keys.update(keys)

    def has(self, key: str) -> bool:
        return key in self.keys


class _Stopped:
    """``should_stop`` for ``train_stage``: asks the StopList without ever blocking. A task
    blocked in ``ray.get`` lends its CPUs back to Ray, which then starts other stages in new
    worker processes (each loading the backbone); so the question is sent, and its answer
    read only once it has arrived, at most every ``every_s``."""

    def __init__(self, stops: Any, key: str, every_s: float = 0.5) -> None:
        self.stops, self.key, self.every_s = stops, key, every_s
        self.asked: Any = None
        self.next = 0.0

    def __call__(self) -> bool:
        import ray

        if self.stops is None:
            return False
        if self.asked is None:
            now = time.monotonic()
            if now >= self.next:
                self.asked, self.next = self.stops.has.remote(self.key), now + self.every_s
            return False
        ready, _ = ray.wait([self.asked], timeout=0)
        if not ready:
            return False
        answer, self.asked = ray.get(ready[0]), None
        return bool(answer)


def cancelled(key: str) -> dict[str, Any]:
    """What a task the driver cancelled returns (the driver no longer waits for it)."""
    return {"key": key, "cancelled": True}


def content_digest(ids: Any, inputs: Any) -> str:
    """A cell's identity for a worker's feature cache: its retained ids and inputs."""
    return hashlib.sha256(json.dumps([list(ids), list(inputs)]).encode()).hexdigest()


@dataclass
class _Worker:
    key: str
    backbone: Any  # AdaptedBackbone
    features: Any  # FeatureCache | OnTheFlyFeatures


_WORKER: _Worker | None = None


def _worker(spec: RunSpec) -> _Worker:
    """This worker process's backbone and feature cache for ``spec``'s config (built once)."""
    global _WORKER
    from s3t.models.adapted import AdaptedBackbone, default_model_dir
    from s3t.run.card import model_fingerprint
    from s3t.train.features import FeatureCache, OnTheFlyFeatures

    config = {k: v for k, v in spec.config.items() if k not in _NOT_WEIGHTS}
    key = json.dumps([config, spec.model, spec.model_sha256, spec.num_labels], sort_keys=True)
    if _WORKER is None or _WORKER.key != key:
        _WORKER = None
        model_dir = spec.model or default_model_dir()
        host = socket.gethostname()
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(
                f"the backbone directory {model_dir} does not exist on Ray node {host}: every "
                "worker needs the run's backbone at the same path (a shared or copied directory)")
        found = model_fingerprint(model_dir)
        if found != spec.model_sha256:
            raise ValueError(f"the backbone at {model_dir} on Ray node {host} differs from the "
                             f"run's (sha256 {found[:12]}... != {spec.model_sha256[:12]}...): "
                             "install the same model at that path on every worker")
        cfg = S3TConfig.from_dict(config)
        backbone = AdaptedBackbone(cfg, num_labels=spec.num_labels, model_dir=model_dir)
        features = (FeatureCache(backbone, chunk_size=cfg.batch_size, dtype=cfg.feature_cache_dtype)
                    if cfg.feature_cache else OnTheFlyFeatures(backbone, chunk_size=cfg.batch_size))
        _WORKER = _Worker(key, backbone, features)
    return _WORKER


def run_stage(spec: RunSpec, job: StageJob, *ancestors: dict[str, Any]) -> dict[str, Any]:
    """Train one stage on a Ray worker, in the run's numeric environment: its weight files
    (bytes) and metrics; writes nothing."""

    from s3t.train.numeric import numeric_env

    started = time.time()
    with numeric_env(spec.env, where=f"Ray node {socket.gethostname()}"):  # refuses first
        return _run_stage(spec, job, ancestors, started)


def _run_stage(spec: RunSpec, job: StageJob, ancestors: tuple[dict[str, Any], ...],
               started: float) -> dict[str, Any]:
    global _WORKER
    import ray
    import torch

    from s3t.train.scheduler import StageCancelled
    from s3t.train.stage_trainer import train_stage

    stopped = _Stopped(spec.stops, job.key)
    if any(a.get("cancelled") for a in ancestors):
        return cancelled(job.key)  # built on a cancelled stage
    try:
        worker = _worker(spec)  # the first task of a process loads the backbone
        setup_seconds = time.time() - started
        features = worker.features
        features.drop_stale(spec.digests)  # cells that changed since: features of deleted samples
        t0 = time.perf_counter()
        for c in job.blocks:  # the anchor set (if any) and the prefix's cells
            features.ensure(c.cell, spec.digests[c.cell], list(c.ids), list(c.inputs))
        val = None
        if spec.eval_block is not None:
            ids, labels, inputs = spec.eval_block
            features.ensure(EVAL_BLOCK, spec.digests[EVAL_BLOCK], ids, inputs)
            val = ids, labels
        features_seconds = time.perf_counter() - t0
        config = worker.backbone.config
        _test_hook(spec.test_hook, job.key)
        result = train_stage(
            worker.backbone, features, shard=job.shard, prefix=job.prefix,
            ancestors=[StageWeights.from_files(a["files"]) for a in ancestors],
            method=config.training_method(), sample_ids=job.sample_ids,
            labels=job.labels, val=val, should_stop=stopped)
    except StageCancelled:
        _WORKER = None  # stopped mid-stage: rebuild rather than trust a half-changed model
        return cancelled(job.key)
    except BaseException:
        _WORKER = None  # e.g. cancelled mid-stage: rebuild rather than trust a half-changed model
        raise
    files = result.weights.to_files()
    return {"key": job.key, "files": files,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            "val_score": result.val_score, "final_loss": result.final_loss,
            "setup_seconds": setup_seconds, "train_seconds": result.seconds,
            "torch_threads": torch.get_num_threads(),
            "features_seconds": features_seconds,
            "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "started": started, "finished": time.time()}


def _test_hook(spec: str | None, key: str) -> None:
    if not spec:
        return
    kind, _, rest = spec.partition(":")
    if kind == "exit-once":
        try:
            os.close(os.open(rest, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(86)
    if kind == "pause":
        target, _, folder = rest.partition(":")
        if target == key:
            (Path(folder) / "started").touch()
            while not (Path(folder) / "resume").exists():
                time.sleep(0.05)
