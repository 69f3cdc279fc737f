"""The public estimator: ``S3T(config).fit(data)``, ``predict`` (classifiers) or ``generate``
and ``evaluate_lm`` (causal LMs), ``forget``, ``retrain``, ``save``/``load``. It wires the
planner, ledger, trainer, stage store and router together and keeps the run directory (the
source of truth) consistent with what it serves.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from s3t.config import S3TConfig
from s3t.data.ledger import Ledger, StageRecord, stage_key
from s3t.data.partition import partition
from s3t.data.samples import Dataset
from s3t.models.adapted import AdaptedBackbone, default_model_dir
from s3t.plan.methods import Method
from s3t.plan.orderings import make_orderings
from s3t.plan.prefix_tree import PrefixTree
from s3t.run import FORMAT, RUN_FILE, NoLiveShardError, Run
from s3t.serve.ensemble import Ensemble
from s3t.serve.router import compute_routes, lineage_chain
from s3t.store import FeatureFiles, IntegrityError, StageStore, sha256_file
from s3t.train.features import FeatureCache, OnTheFlyFeatures
from s3t.train.stage_trainer import StageWeights, accuracy, apply_chain, train_stage
from s3t.unlearn import AuditReport, now

EVAL_BLOCK = "eval"


@dataclass
class Prediction:
    labels: list[str]
    label_ids: np.ndarray
    probabilities: np.ndarray      # (n, num_labels), aggregated over live shards
    live_shards: int


@dataclass
class Generation:
    text: str                      # the generated answer, special tokens removed
    token_ids: list[int]           # the generated tokens (the stop token excluded)
    finished: bool                 # True if the answer ended with an end-of-turn token
    live_shards: int


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the backbone's weight files: a run refuses a different backbone."""
    root = Path(model_dir)
    files = (sorted(root.glob("*.safetensors")) or sorted(root.glob("*.bin"))
             or sorted(root.glob("*.gguf")))
    joined = "".join(f"{f.name}:{sha256_file(f)}" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()


class S3T:
    """Sequence-aware Sharded Sliced Training with exact, instant forgetting."""

    def __init__(self, config: S3TConfig | None = None, run_dir: str | Path | None = None):
        self.config = config
        self.run_dir = run_dir

    # The backbone loads on first use: forget, status and audit never need it, so a
    # deletion costs no model-sized work even in a fresh process.
    @property
    def backbone(self) -> AdaptedBackbone:
        if getattr(self, "_backbone", None) is None:
            self._require_fitted()
            model_dir = self.config.model or default_model_dir()
            expected = getattr(self, "_model_sha256", None)
            if expected is not None and model_fingerprint(model_dir) != expected:
                raise ValueError(f"the backbone at {model_dir} differs from the one this run "
                                 "was trained with (sha256 mismatch): install the same model")
            self._backbone = AdaptedBackbone(self.config, num_labels=len(self.label_names),
                                             model_dir=model_dir)
        return self._backbone

    @property
    def features(self) -> FeatureCache | OnTheFlyFeatures:
        if getattr(self, "_features", None) is None:
            config = self.config
            if config.feature_cache:
                self._features = FeatureCache(
                    self.backbone, chunk_size=config.batch_size, dtype=config.feature_cache_dtype,
                    memory_bytes=int(config.feature_cache_memory_gb * 2**30),
                    files=FeatureFiles(self.run_dir), is_current=self._block_is_current)
            else:
                self._features = OnTheFlyFeatures(self.backbone, chunk_size=config.batch_size)
        return self._features

    # --- training -----------------------------------------------------------------------------
    def fit(self, data: Dataset, eval_data: Dataset | None = None, progress: bool = True) -> S3T:
        config = (self.config or S3TConfig()).validate()
        self.config = config
        if data.labels is None:
            raise ValueError("training data has no labels: every sample needs a label")
        if len(data) < config.shards * config.slices:
            raise ValueError(f"{len(data)} samples cannot fill {config.shards} shards x "
                             f"{config.slices} slices: use fewer shards or slices")
        if eval_data is not None and eval_data.labels is None:
            raise ValueError("eval data has no labels")
        run_dir = self._new_run_dir()
        self.label_names = list(data.label_names) or [str(i) for i in range(max(data.labels) + 1)]
        self._backbone = AdaptedBackbone(config, num_labels=len(self.label_names))
        self.task = self._backbone.task
        if self.task == "causal_lm":
            from s3t.models.decoder import parse_instruction

            for texts in (data.texts, eval_data.texts if eval_data is not None else []):
                for text in texts:
                    parse_instruction(text)
        orderings = make_orderings(config.strategy, config.slices, config.budget,
                                   prior=config.prior, seed=config.seed)
        self.tree = PrefixTree.from_orderings(orderings)
        self.method = Method(config.method, config.slices)
        cells = partition(data.ids, data.groups, config.shards, config.slices, seed=config.seed)

        self.ledger = Ledger(run_dir / Ledger.FILE)
        self.ledger.set_meta("format", FORMAT)
        self.ledger.add_samples(
            ((sid, *cells[sid], grp, label, text) for sid, grp, label, text in
             zip(data.ids, data.groups, data.labels, data.texts, strict=True)),
            config.shards, config.slices)
        if eval_data is not None:
            self.ledger.add_eval_samples(zip(eval_data.ids, eval_data.labels, eval_data.texts,
                                             strict=True))
        self.store = StageStore(run_dir / "stages")
        self._weights: dict[str, StageWeights] = {}
        self._write_run_file(run_dir)
        started = time.perf_counter()
        self.last_train = self._train_missing(progress)
        self.last_train["train_seconds"] = time.perf_counter() - started
        return self

    def retrain(self, progress: bool = True) -> dict:
        """Train every stage of the plan that is missing on the current data; restore routes.

        Stages whose files are missing or altered are quarantined first and rebuilt. Only one
        retrain runs per run directory at a time; deletions may go on meanwhile (a stage
        whose data changed while it trained is discarded, never served).
        """
        self._require_fitted()
        started = time.perf_counter()
        with self._retrain_lock():
            damaged = self._quarantine_damaged()
            summary = self._train_missing(progress)
        summary["quarantined_stages"] = damaged
        summary["train_seconds"] = time.perf_counter() - started
        return summary

    @contextmanager
    def _retrain_lock(self) -> Iterator[None]:
        with open(Path(self.run_dir) / ".retrain.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another retrain is running on {self.run_dir}") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _quarantine_damaged(self) -> list[str]:
        """Take live stages whose files fail their hash check out of service and erase them."""
        damaged = []
        for record in self.ledger.stages("live"):
            try:
                self.store.verify(record.shard, record.key, record.files)
            except IntegrityError:
                damaged.append(record)
        if damaged:
            with self.ledger.transaction() as c:
                c.executemany("UPDATE stages SET status = 'erased', erased_by = 'integrity' "
                              "WHERE key = ?", [(r.key,) for r in damaged])
                self.ledger.set_routes(compute_routes(self.ledger.stages("live"),
                                                      self.config.shards, self.method.servable))
            for record in damaged:
                self.store.erase(record.shard, record.key)
                self._weights.pop(record.key, None)
        return [r.key for r in damaged]

    def _train_missing(self, progress: bool) -> dict:
        config = self.config
        with self.ledger.transaction():  # one consistent snapshot of versions and contents
            versions = self.ledger.slice_versions()
            live = {r.key: r for r in self.ledger.stages("live")}
            cell_rows = {cell: self.ledger.cell_samples(*cell) for cell in versions}
        todo: list[tuple[int, tuple[int, ...]]] = []
        for shard in range(config.shards):
            for node in self.tree.stages:
                if self._key(shard, node.prefix, versions) not in live:
                    todo.append((shard, node.prefix))
        val = self._eval_block()
        stage_seconds: dict[str, float] = {}
        discarded: list[str] = []
        total = sum(sum(len(cell_rows[(m, s)]) for s in p) * config.epochs for m, p in todo)
        bar = tqdm(total=total, unit="sample", desc="training stages", disable=not progress)
        changed: set[tuple[int, int]] = set()  # cells a deletion hit while this ran
        for shard, prefix in todo:
            ancestor_keys = [self._key(shard, prefix[:k], versions) for k in range(1, len(prefix))]
            if (changed.intersection((shard, s) for s in prefix)
                    or any(k in discarded for k in ancestor_keys)):
                # would see deleted data, or build on a stage that did: never train it
                discarded.append(self._key(shard, prefix, versions))
                continue
            cached = all(self.features.ensure((shard, s), versions[(shard, s)],
                                              [r[0] for r in cell_rows[(shard, s)]],
                                              [r[2] for r in cell_rows[(shard, s)]])
                         for s in prefix)
            if not cached:  # a deletion hit a cell while it was being spilled
                now_versions = self.ledger.slice_versions()
                changed.update(c for c, v in versions.items() if now_versions[c] != v)
                self.features.drop_stale(now_versions)
                discarded.append(self._key(shard, prefix, versions))
                continue
            ancestors = [self._stage_weights(k) for k in ancestor_keys]
            rows = [r for s in prefix for r in cell_rows[(shard, s)]]
            result = train_stage(
                self.backbone, self.features, shard=shard, prefix=prefix, ancestors=ancestors,
                method=self.method, sample_ids=[r[0] for r in rows], labels=[r[1] for r in rows], val=val,
                progress=bar.update)
            key = self._key(shard, prefix, versions)
            parent = self._key(shard, prefix[:-1], versions) if len(prefix) > 1 else None
            meta = {"key": key, "shard": shard, "prefix": list(prefix),
                    "versions": [versions[(shard, s)] for s in prefix], "parent": parent,
                    "n_samples": result.n_samples, "val_score": result.val_score,
                    "seed": config.seed, "final_loss": result.final_loss,
                    "train_seconds": result.seconds}
            files = self.store.write(shard, key, result.weights, meta)
            record = StageRecord(key, shard, tuple(prefix), tuple(meta["versions"]), parent,
                                 "live", files, result.n_samples, result.val_score)
            with self.ledger.transaction():
                # A deletion may have hit this stage's data while it trained: then it saw a
                # deleted sample and must never go live.
                now_versions = self.ledger.slice_versions()
                current = all(now_versions[(shard, s)] == versions[(shard, s)] for s in prefix)
                accepted = current and (parent is None or self.ledger.is_live(parent))
                if accepted:
                    self.ledger.add_stage(record, now())
            # Cells a deletion changed meanwhile: their cached features hold deleted inputs.
            changed.update(c for c, v in versions.items() if now_versions[c] != v)
            self.features.drop_stale(now_versions)
            if not accepted:
                self.store.erase(shard, key)
                discarded.append(key)
                continue
            self._weights[key] = result.weights
            stage_seconds[key] = result.seconds
        bar.close()
        with self.ledger.transaction():
            self.ledger.set_routes(compute_routes(self.ledger.stages("live"), config.shards,
                                                  self.method.servable))
        return {"stages_trained": len(stage_seconds), "stages_discarded": discarded,
                "stage_seconds": stage_seconds,
                "stages_total": self.tree.count() * config.shards}

    def _block_is_current(self, block: object, version: object) -> bool:
        """Whether a cell is still at ``version`` in the ledger right now (other blocks: yes)."""
        if not isinstance(block, tuple):
            return True
        return self.ledger.slice_versions().get(block) == version

    def _key(self, shard: int, prefix: Sequence[int], versions: dict) -> str:
        return stage_key(shard, prefix, [versions[(shard, s)] for s in prefix])

    def _eval_block(self) -> tuple[list[str], list[int]] | None:
        rows = self.ledger.eval_samples()
        if not rows:
            return None
        ids = [f"eval:{r[0]}" for r in rows]
        self.features.ensure(EVAL_BLOCK, 0, ids, [r[2] for r in rows])
        return ids, [r[1] for r in rows]

    def _stage_weights(self, key: str) -> StageWeights:
        """In-memory weights of a live stage, read from disk (hash-checked) on first use."""
        if key not in self._weights:
            record = self._live_records()[key]
            self._weights[key] = self.store.read(record.shard, key, record.files)
        return self._weights[key]

    def _live_records(self) -> dict[str, StageRecord]:
        return {r.key: r for r in self.ledger.stages("live")}

    # --- serving ------------------------------------------------------------------------------
    def predict(self, inputs: Sequence[str], batch_size: int = 64) -> Prediction:
        """Mean of class probabilities over live shards (or majority vote, per config).

        The frozen trunk runs once per batch for all shards; each shard then runs only its
        top layers, with its route's adapters merged into dense weights.
        """
        self._require_fitted()
        if getattr(self, "task", "classification") == "causal_lm":
            raise ValueError("this run is a causal language model (instruction tuned), not a "
                             "classifier: use S3T.generate(prompt) / `s3t generate RUN --prompt "
                             "TEXT`, and S3T.evaluate_lm(data) to score it")
        if isinstance(inputs, str):
            inputs = [inputs]
        ensemble, live = self._ready_ensemble()
        n_labels = len(self.label_names)
        out = np.concatenate([
            ensemble.predict_proba(list(inputs[start:start + batch_size]),
                                         vote=self.config.aggregation == "vote",
                                         n_labels=n_labels)
            for start in range(0, len(inputs), batch_size)]) if len(inputs) else \
            np.zeros((0, n_labels))
        ids = out.argmax(axis=1)
        return Prediction([self.label_names[i] for i in ids], ids, out, live)

    def _ready_ensemble(self) -> tuple[Ensemble, int]:
        """The served routes, materialised (merged dense top layers) and current."""
        chains = self._served_chains()
        if not chains:
            raise NoLiveShardError(
                "no shard can serve: every shard has lost its first slice to deletions; "
                "run `s3t retrain RUN` (or S3T.retrain()) to restore service")
        if getattr(self, "_ensemble", None) is None:
            self._ensemble = Ensemble(self.backbone, self.method)
        self._ensemble.update(chains)
        self.backbone.model.eval()
        return self._ensemble, len(chains)

    # --- causal language models ---------------------------------------------------------------
    def _lm_ensemble(self, what: str) -> tuple[Ensemble, int]:
        self._require_fitted()
        if getattr(self, "task", "classification") != "causal_lm":
            raise ValueError(f"{what} needs a causal language model run (a Llama-style --model "
                             "trained on instruction data); this run is a classifier: use predict")
        return self._ready_ensemble()

    def generate(self, prompt: str, max_new_tokens: int = 32, greedy: bool = True,
                 temperature: float = 1.0, seed: int = 0) -> Generation:
        """Answer an instruction: at each step the live shards' next-token probabilities are
        averaged, then the next token is the most likely one (``greedy``) or drawn, with
        ``temperature``, from a generator seeded with ``seed``.

        The frozen trunk runs once per step for all shards (no KV cache: each step re-reads
        the whole sequence). Generation stops at an end-of-turn token or after
        ``max_new_tokens`` tokens.
        """
        if not isinstance(prompt, str):
            raise ValueError("generate takes one prompt string")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        ensemble, live = self._lm_ensemble("generate")
        backbone = self.backbone
        family, tokenizer = backbone.family, backbone.processor
        tokens = family.prompt_ids(tokenizer, prompt)
        stops = family.stop_ids(backbone.model, tokenizer)
        generator = torch.Generator().manual_seed(seed)
        new: list[int] = []
        finished = False
        for _ in range(max_new_tokens):
            probs = ensemble.next_token_probs(family.pad(tokenizer, [tokens + new]))[0]
            if greedy:
                token = int(probs.argmax())
            else:
                weights = torch.softmax(torch.log(probs) / temperature, dim=-1)
                token = int(torch.multinomial(weights, 1, generator=generator))
            if token in stops:
                finished = True
                break
            new.append(token)
        return Generation(tokenizer.decode(new, skip_special_tokens=True), new, finished, live)

    def evaluate_lm(self, data: Dataset | Sequence[str], batch_size: int = 8) -> dict:
        """Mean token loss and perplexity on held-out instruction data (response tokens only),
        for the ensemble (mean of the live routes' probabilities) and for each route alone."""
        ensemble, live = self._lm_ensemble("evaluate_lm")
        texts = list(data.texts if isinstance(data, Dataset) else data)
        if not texts:
            raise ValueError("evaluate_lm needs at least one sample")
        routes = dict(ensemble.routes)
        route_nll = dict.fromkeys(routes, 0.0)
        nll, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            batch = self.backbone.encode(texts[start:start + batch_size])
            per_route = ensemble.token_log_probs(batch)
            stacked = torch.stack([per_route[m] for m in routes])
            mixed = torch.logsumexp(stacked, dim=0) - np.log(len(routes))
            nll -= float(mixed.sum())
            count += int(mixed.numel())
            for m in routes:
                route_nll[m] -= float(per_route[m].sum())
        if count == 0:
            raise ValueError("no response token to score: the responses were all cut away "
                             "(raise max_seq_len)")

        def summary(total: float) -> dict:
            return {"loss": total / count, "perplexity": float(np.exp(total / count))}

        return {**summary(nll), "tokens": count, "live_shards": live,
                "per_route": {m: {"stage": routes[m].stage, **summary(route_nll[m])}
                              for m in sorted(routes)}}

    def score(self, data: Dataset) -> float:
        if data.labels is None:
            raise ValueError("scoring needs labelled data")
        pred = self.predict(data.texts)
        return float(np.mean(pred.label_ids == np.asarray(self._map_labels(data))))

    def _map_labels(self, data: Dataset) -> list[int]:
        if not data.label_names or data.label_names == self.label_names:
            return list(data.labels)
        index = {name: i for i, name in enumerate(self.label_names)}
        unknown = sorted({data.label_names[y] for y in data.labels} - set(index))
        if unknown:
            raise ValueError(f"labels not seen in training: {unknown}")
        return [index[data.label_names[y]] for y in data.labels]

    def _served_chains(self) -> dict[int, tuple[str, list[StageWeights]]]:
        """Each live shard's route: its stage key and the weights of its chain, root first.

        Memoised on the ledger's change counters, so a request costs no ledger scan unless
        something (here or in another process) committed since the last one.
        """
        stamp = self.ledger.change_stamp()
        cached = getattr(self, "_chains_memo", None)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        records = {r.key: r for r in self.ledger.stages(None)}
        for key in [k for k in self._weights if records.get(k) is None
                    or records[k].status != "live"]:
            del self._weights[key]  # erased by a deletion (possibly in another process)
        chains = {}
        for shard, key in sorted(self.ledger.routes().items()):
            if key is not None:
                chains[shard] = (key, [self._stage_weights(r.key)
                                       for r in lineage_chain(key, records)])
        self._chains_memo = (stamp, chains)
        return chains

    def stage_accuracy(self, key: str, data: Dataset, batch_size: int = 64) -> float:
        """Accuracy of one stage's route alone (for diagnostics and benchmarks)."""
        if getattr(self, "task", "classification") == "causal_lm":
            raise ValueError("stage_accuracy scores classifiers; score a causal LM with evaluate_lm")
        records = {r.key: r for r in self.ledger.stages(None)}
        chain = [self._stage_weights(r.key) for r in lineage_chain(key, records)]
        ids = [f"score:{i}" for i in data.ids]
        self.features.ensure(("score", id(data)), 0, ids, data.texts)
        apply_chain(self.backbone, chain, self.method)
        return accuracy(self.backbone, self.features, ids, self._map_labels(data),
                        self.method.active_groups(len(chain)), batch_size)

    # --- forgetting ---------------------------------------------------------------------------
    def forget(self, sample_ids: Sequence[str] | None = None,
               groups: Sequence[str] | None = None) -> dict:
        """Delete samples (or whole groups) exactly; returns the deletion certificate.

        The request is validated first (an invalid one changes nothing), committed durably,
        and every stage that saw a deleted sample is dropped from routing and erased from
        disk before this returns. No training happens here.
        """
        self._require_fitted()
        plan, certificate = self._run().forget(sample_ids, groups)
        for key in certificate["erased_stages"]:
            self._weights.pop(key, None)
        if getattr(self, "_features", None) is not None:
            for cell in plan.cells:
                self._features.drop(cell)
        return certificate

    def audit(self) -> AuditReport:
        self._require_fitted()
        return self._run().audit()

    def status(self) -> dict:
        self._require_fitted()
        return self._run().status()

    def _run(self) -> Run:
        """This run's directory view (shares the open ledger)."""
        info = getattr(self, "_info", None) or {}
        return Run(Path(self.run_dir), info, self.config, self.ledger, self.store)

    def close(self) -> None:
        """Close the ledger and drop the feature cache; the run directory stays as it is."""
        self._close_features()
        if getattr(self, "ledger", None) is not None:
            self.ledger.close()
            self.ledger = None

    def _close_features(self) -> None:
        features = getattr(self, "_features", None)
        if isinstance(features, FeatureCache):
            features.close()
        self._features = None

    def __enter__(self) -> S3T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Copy the run to ``path`` (a consistent snapshot) and continue working there."""
        self._require_fitted()
        target = Path(path).resolve()
        if target == Path(self.run_dir).resolve():
            return target
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"{target} exists and is not empty: choose a new directory")
        target.mkdir(parents=True, exist_ok=True)
        self._close_features()  # it may have spilled under the old directory
        backup = sqlite3.connect(target / Ledger.FILE)
        self.ledger.conn.backup(backup)
        backup.close()
        shutil.copytree(Path(self.run_dir) / "stages", target / "stages")
        if (Path(self.run_dir) / "certificates").exists():
            shutil.copytree(Path(self.run_dir) / "certificates", target / "certificates")
        shutil.copy2(Path(self.run_dir) / RUN_FILE, target / RUN_FILE)
        self.ledger.close()
        if getattr(self, "_owns_tmp", False):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._owns_tmp = False
        self.run_dir = target
        self.ledger = Ledger.open_existing(target / Ledger.FILE)
        self.store = StageStore(target / "stages")
        return target

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, repair: bool = True) -> S3T:
        """Open a run directory; every stage file's sha256 is checked before use.

        ``repair`` finishes an interrupted forget: stage files whose stage the ledger no
        longer holds live are erased. ``audit`` loads without it, to see the disk as it is.
        """
        run = Run.open(path, verify=verify, repair=repair)
        info = run.info
        self = cls(run.config, run_dir=run.path)
        self._info = info
        self.label_names = info["label_names"]
        self.task = info.get("task", "classification")
        self._model_sha256 = info["model_sha256"]
        self.tree = PrefixTree.from_orderings([tuple(o) for o in info["orderings"]])
        self.method = run.method
        self.ledger, self.store = run.ledger, run.store
        self._weights = {}
        return self

    # --- helpers ------------------------------------------------------------------------------
    def _new_run_dir(self) -> Path:
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="s3t-run-"))
            self._owns_tmp = True
        run_dir = Path(self.run_dir)
        if (run_dir / Ledger.FILE).exists() or (run_dir / RUN_FILE).exists():
            raise FileExistsError(f"{run_dir} already holds an s3t run: load it with "
                                  "S3T.load / `s3t status`, or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    def _write_run_file(self, run_dir: Path) -> None:
        model_dir = self.backbone.model_dir
        info = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "label_names": self.label_names,
            "task": self.task,
            "model_dir": model_dir,
            "model_sha256": model_fingerprint(model_dir),
            "orderings": [list(o) for o in self.tree.orderings],
        }
        (run_dir / RUN_FILE).write_text(json.dumps(info, indent=2))

    def _require_fitted(self) -> None:
        if getattr(self, "ledger", None) is None:
            raise RuntimeError("this S3T has not been fitted or loaded: call fit() or S3T.load()")
