"""Served accuracy of a plan under a deletion stream, from what a trained run's shards score at
each depth (pure: numpy, no torch).

A deletion stream keeps each shard at some served depth for some time; the simulator
(``stream_sim``) reports the share of time spent in each *depth state* (the shards' served
depths, sorted). A :class:`DepthTable`, built from a trained run by
``s3t.serve.depth_table``, holds what each shard serves at each depth on the run's
validation samples (which are never deletable): its class probabilities and its weight in
the ensemble. The accuracy of a state is that of the weighted ensemble of the shards at
their depths, averaged over the ways the state's depths can fall on the shards; a plan's
expected accuracy weighs the states by their time. A state in which no shard serves scores
0 (every request fails).

The table answers for plans with the run's shard count ``m`` and a slice count ``L'`` that
divides the run's ``L``: a stage of depth ``d`` of ``L'`` slices was trained on the data of
the run's stages of depth ``d * L / L'``, so those stand for it, and a plan serving ``B'``
orderings per shard averages ``B'`` of the run's stages at that depth. SISA (``L' = 1,
B' = 1``) is stood for by the full-depth stage of SISA's own ordering (the identity), where
the run has it live: with allocation ``all`` that chain is SISA's checkpoints bit for bit
(tests/test_allocation.py), so the stand-in is SISA's shard model itself; else by the
shard's first full-depth stage. Other shard counts would change every shard's data; they
cannot be scored without training them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

EXACT_PERMUTATIONS = 720   # states with more distinct assignments are sampled
SAMPLED_PERMUTATIONS = 200


@dataclass
class DepthTable:
    """What each shard of a trained run serves at each depth, on its validation samples."""

    n_slices: int                                            # the run's L
    labels: np.ndarray                                       # (n,) validation labels
    # (shard, depth) -> the probabilities (n, K) of every stage that serves the shard at that
    # depth, in routing order (the route first); absent where the depth cannot serve
    members: Mapping[tuple[int, int], Sequence[np.ndarray]]
    weights: Mapping[tuple[int, int], float]                 # the shard's ensemble weight there
    n_shards: int
    vote: bool = False
    # shard -> the probabilities of its full-depth stage of the identity ordering (SISA's
    # ordering), where it is live: with allocation ``all`` SISA's shard model, bit for bit
    sisa: Mapping[int, np.ndarray] = field(default_factory=dict)
    _probs: dict = field(default_factory=dict, init=False, repr=False)

    def scores(self, depths: Sequence[int], budget: int | None = None,
               sisa: bool = False) -> float:
        """Validation accuracy of the ensemble serving shard ``k`` at the run's depth
        ``depths[k]`` (0: not serving), each shard averaging its first ``budget`` stages
        (``sisa``: a full-depth shard serves its SISA-ordering stage where the run has it)."""
        total: np.ndarray | None = None
        weights = [self.weights.get((k, d), 0.0) for k, d in enumerate(depths)]
        if all(w == 0 for w in weights):
            weights = [1.0] * len(weights)
        for k, d in enumerate(depths):
            probs = self.sisa.get(k) if sisa and d == self.n_slices and k in self.sisa \
                else self._served(k, d, budget)
            if probs is None:
                continue
            part = weights[k] * probs
            total = part if total is None else total + part
        if total is None:
            return 0.0
        return float(np.mean(total.argmax(axis=1) == self.labels))

    def _served(self, shard: int, depth: int, budget: int | None) -> np.ndarray | None:
        key = (shard, depth, budget)
        if key not in self._probs:
            stages = list(self.members.get((shard, depth), ()))[:budget]
            probs = None
            if depth > 0 and stages:
                probs = np.mean(stages, axis=0)
                if self.vote:
                    probs = np.eye(probs.shape[1])[probs.argmax(axis=1)]
            self._probs[key] = probs
        return self._probs[key]

    def state_accuracy(self, state: Sequence[int], budget: int | None = None,
                       seed: int = 0, sisa: bool = False) -> float:
        """Mean accuracy over the assignments of a state's depths (run units) to the shards."""
        if len(state) != self.n_shards:
            raise ValueError(f"a state names {self.n_shards} shards' depths, got {len(state)}")
        if math.factorial(len(state)) <= EXACT_PERMUTATIONS:
            assignments = sorted(set(itertools.permutations(state)))
        else:
            rng = np.random.default_rng(seed)
            assignments = [tuple(rng.permutation(state)) for _ in range(SAMPLED_PERMUTATIONS)]
        return float(np.mean([self.scores(a, budget, sisa) for a in assignments]))

    def depth_scores(self, budget: int | None = None) -> list[float]:
        """Each depth's validation accuracy of one shard alone, averaged over the shards:
        what a demoted shard is still worth (index 0 is depth 1)."""
        out = []
        for d in range(1, self.n_slices + 1):
            alone = [self.scores([d if j == k else 0 for j in range(self.n_shards)], budget)
                     for k in range(self.n_shards) if (k, d) in self.members]
            out.append(float(np.mean(alone)) if alone else 0.0)
        return out

    def scale(self, n_slices: int) -> int | None:
        """How many of the run's depths one depth of a plan with ``n_slices`` slices spans;
        None where the plan's slices do not line up with the run's."""
        return self.n_slices // n_slices if 1 <= n_slices <= self.n_slices \
            and self.n_slices % n_slices == 0 else None

    def expected(self, states: Mapping[tuple[int, ...], float], n_shards: int, n_slices: int,
                 budget: int) -> float | None:
        """Time-averaged served accuracy of the plan (``n_shards``, ``n_slices``, ``budget``)
        over ``states`` (state -> share of time, depths in the plan's units); None where
        the table cannot answer for that plan (module doc)."""
        step = self.scale(n_slices)
        if step is None or n_shards != self.n_shards:
            return None
        total = math.fsum(states.values())
        if not total > 0:
            raise ValueError("the depth states carry no time")
        sisa = (n_slices, budget) == (1, 1)
        return math.fsum(share * self.state_accuracy(tuple(d * step for d in state), budget,
                                                     sisa=sisa)
                         for state, share in states.items()) / total
