"""What a run serves, and serving it: class predictions, generation, LM evaluation.

:class:`ServedModel` keeps the :class:`Ensemble` in step with the ledger's routes (memoised
on the ledger's change counters and the run card's version, so a request costs no ledger
scan unless something, here or in another process, committed or reconfigured since the last
one) and exposes what is served as a
read-only mapping of :class:`ServedRoute` (stage key, chain, weights, merged layers). With
``serve_orderings='all'`` each shard's route carries, as ``peers``, the shard's other live
stages at the route's depth (``served_stages``), and the shard serves the mean of them all.
Each route carries its shard's weight in the aggregate (``S3TConfig.ensemble``,
``run/weighting.py``), recomputed with the routes whenever the ledger or the card changes.

Thread-safe: a call takes one snapshot of the routes (refreshing them under a lock if the
ledger changed) and computes with that snapshot alone, never touching the shared backbone
(``ensemble.py``), so calls from several threads run at the same time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from s3t.models.adapted import AdaptedBackbone
from s3t.models.stage_weights import StageWeights, WeightBank
from s3t.run.directory import NoLiveShardError, Run
from s3t.run.stages import StageRecord, lineage_chain, served_stages
from s3t.run.weighting import shard_weights
from s3t.serve.ensemble import Ensemble, ServedRoute, length_chunks


@dataclass
class Prediction:
    labels: list[str]
    label_ids: np.ndarray
    probabilities: np.ndarray      # (n, num_labels), aggregated over live shards
    live_shards: int
    routes: dict[int, str] = field(default_factory=dict)  # shard -> stage key that served
    # shard -> every stage that served it, the route first (several with serve_orderings 'all')
    routes_all: dict[int, list[str]] = field(default_factory=dict)


@dataclass
class Generation:
    text: str                      # the generated answer, special tokens removed
    token_ids: list[int]           # the generated tokens (the stop token excluded)
    finished: bool                 # True if the answer ended with an end-of-turn token
    live_shards: int
    routes: dict[int, str] = field(default_factory=dict)  # shard -> stage key that served
    routes_all: dict[int, list[str]] = field(default_factory=dict)  # as Prediction's


class ServedModel:
    """The ensemble of a run's live routes over one loaded backbone."""

    def __init__(self, run: Run, backbone: AdaptedBackbone, bank: WeightBank):
        self.run = run
        self.backbone = backbone
        self.bank = bank
        self.ensemble = Ensemble(backbone, run.method)
        self._stamp: tuple[int, int] | None = None
        self._refresh = threading.Lock()  # ledger reads and materialising: one at a time

    def routes(self) -> Mapping[int, ServedRoute]:
        """Each live shard's served route, current with the ledger (read-only): one
        snapshot, unaffected by later refreshes."""
        with self._refresh:
            card_changed = self.run.follow_card()  # `s3t configure` from another process
            stamp = self.run.ledger.change_stamp()
            if card_changed or stamp != self._stamp:
                records = {r.key: r for r in self.run.ledger.stages(None)}
                self.bank.keep_only(k for k, r in records.items() if r.status == "live")
                config = self.run.config
                served = served_stages(self.run.ledger.routes(), records, config.serve_orderings)
                weights = shard_weights(served, records, config.ensemble,
                                        len(self.run.label_names), self.run.ledger.eval_count(),
                                        self.run.task)
                chains, peers = {}, {}
                for shard, (key, *others) in sorted(served.items()):
                    chains[shard] = (key, self.chain(key, records))
                    if others:
                        peers[shard] = [(k, self.chain(k, records)) for k in others]
                self.ensemble.update(chains, peers, weights)
                self._stamp = stamp
            return MappingProxyType(self.ensemble.routes)

    def chain(self, key: str, records: dict[str, StageRecord]) -> list[StageWeights]:
        """The weights of stage ``key``'s chain, root first (hash-checked on first read)."""
        return [self.bank.get(r) for r in lineage_chain(key, records)]

    @staticmethod
    def _used(routes: Mapping[int, ServedRoute]) -> dict[int, str]:
        """The stage each shard's route of a snapshot serves."""
        return {shard: route.stage for shard, route in routes.items()}

    @staticmethod
    def _used_all(routes: Mapping[int, ServedRoute]) -> dict[int, list[str]]:
        """Every stage each shard of a snapshot serves, its route first."""
        return {shard: [m.stage for m in route.members] for shard, route in routes.items()}

    def _ready(self, task: str) -> Mapping[int, ServedRoute]:
        """The routes snapshot a call of ``task`` computes with (refreshed if stale)."""
        if self.run.task != task:
            if task == "classification":
                raise ValueError("this run is a causal language model (instruction tuned), not "
                                 "a classifier: use S3T.generate(prompt) / `s3t generate RUN "
                                 "--prompt TEXT`, and S3T.evaluate_lm(data) to score it")
            raise ValueError("generate and evaluate_lm need a causal language model run (a "
                             "Llama-style --model trained on instruction data); this run is a "
                             "classifier: use predict")
        routes = self.routes()
        if not routes:
            raise NoLiveShardError(
                "no shard can serve: every shard has lost its first slice to deletions; "
                "run `s3t retrain RUN` (or S3T.retrain()) to restore service")
        if self.backbone.model.training:  # the embeddings: dropout off (a no-op when serving)
            self.backbone.model.eval()
        return routes

    def predict(self, inputs: Sequence, batch_size: int = 64) -> Prediction:
        """Mean of class probabilities over live shards (or majority vote, per config).

        The frozen trunk runs once per batch for all shards; each shard then runs only its
        top layers, with its route's adapters merged into dense weights. Texts are grouped
        into batches of similar length (``length_chunks``), so that short texts are not
        padded to the longest of many.
        """
        routes = self._ready("classification")
        labels = self.run.label_names
        vote = self.run.config.aggregation == "vote"
        inputs = list(inputs)
        lengths = self.ensemble.token_lengths(inputs) if len(inputs) > 1 else None
        chunks = (length_chunks(lengths, batch_size) if lengths is not None else
                  [list(range(i, min(i + batch_size, len(inputs))))
                   for i in range(0, len(inputs), batch_size)])
        out = np.zeros((len(inputs), len(labels)))
        for chunk in chunks:
            out[chunk] = self.ensemble.predict_proba([inputs[i] for i in chunk], vote=vote,
                                                     n_labels=len(labels), routes=routes)
        ids = out.argmax(axis=1)
        return Prediction([labels[i] for i in ids], ids, out, len(routes), self._used(routes),
                          self._used_all(routes))

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
        routes = self._ready("causal_lm")
        backbone = self.backbone
        family, tokenizer = backbone.lm_family, backbone.processor
        with self.ensemble.tokenizer_lock:
            tokens = family.prompt_ids(tokenizer, prompt)
            stops = family.stop_ids(backbone.model, tokenizer)
        generator = torch.Generator().manual_seed(seed)
        new: list[int] = []
        finished = False
        for _ in range(max_new_tokens):
            probs = self.ensemble.next_token_probs(family.pad(tokenizer, [tokens + new]),
                                                   routes)[0]
            if greedy:
                token = int(probs.argmax())
            else:
                weights = torch.softmax(torch.log(probs) / temperature, dim=-1)
                token = int(torch.multinomial(weights, 1, generator=generator))
            if token in stops:
                finished = True
                break
            new.append(token)
        with self.ensemble.tokenizer_lock:
            text = tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text, new, finished, len(routes), self._used(routes),
                          self._used_all(routes))

    def evaluate_lm(self, texts: Sequence[str], batch_size: int = 8) -> dict:
        """Mean token loss and perplexity on held-out instruction data (response tokens only),
        for the ensemble (the live routes' probabilities averaged with their weights) and for
        each route alone."""
        routes = dict(self._ready("causal_lm"))
        live = len(routes)
        if not texts:
            raise ValueError("evaluate_lm needs at least one sample")
        route_nll = dict.fromkeys(routes, 0.0)
        nll, count = 0.0, 0
        for start in range(0, len(texts), batch_size):
            batch = self.ensemble.encode(list(texts[start:start + batch_size]))
            per_route = self.ensemble.token_log_probs(batch, routes)
            mixed = self.ensemble.mixture_log_probs(per_route, routes)
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
                "per_route": {m: {"stage": routes[m].stage,
                                  "stages": [r.stage for r in routes[m].members],
                                  **summary(route_nll[m])}
                              for m in sorted(routes)}}
