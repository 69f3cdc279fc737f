"""Serving: one pass through the frozen trunk per request batch, then each live shard's
top layers with its route's LoRA deltas merged into dense weights.

A served route is materialised once when routes change and reused for every request;
the set of routes is swapped in one assignment, so a request sees either the routes
before a forget or those after it, never a mix.

Serving never mutates the shared backbone, so model calls can run concurrently (and while
routes are materialised): the trunk runs on views of the pretrained layers with the
adapters left out (``pretrained_view``: new module objects over the same frozen tensors),
and each route owns its merged top layers and a copy of its head modules, reached through
``head_view`` (a shallow copy of the model whose head submodules are the route's). Only
materialising (``update``) loads weights into the backbone; its caller serialises that.
Tokenizers are not safe to call from several threads at once: encoding takes a lock.

A shard may serve several stages (``serve_orderings='all'``): its route carries the others
as ``peers``, materialised the same way, and the shard's output is the mean of its members'
probabilities before shards are aggregated. Shards are aggregated with their routes'
``weight`` (``S3TConfig.ensemble``, computed by ``run/weighting.py`` from the served stages'
depth and validation score): equal weights give exactly the plain mean of before.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain as chained

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from s3t.models.adapted import AdaptedBackbone, StateDict
from s3t.models.stage_weights import StageWeights
from s3t.plan.methods import Method


@dataclass(frozen=True)
class ServedRoute:
    """One shard's served route, materialised. Read it, never change it."""

    stage: str                 # the route's stage key
    active: int                # layer groups switched on
    layers: nn.ModuleList      # merged dense copies of the layers from group ``active`` up
    head: StateDict
    chain: tuple[StageWeights, ...]  # the weights of the route's stages, root first
    # the model with this route's head modules in place of the backbone's (``head_view``)
    head_model: nn.Module | None = field(default=None, repr=False, compare=False)
    # serve_orderings 'all': the shard's other live stages as deep as this one, served with it
    peers: tuple[ServedRoute, ...] = field(default=(), repr=False, compare=False)
    # how much the shard counts when shards are aggregated (S3TConfig.ensemble; 1: the mean)
    weight: float = 1.0

    @property
    def depth(self) -> int:
        return len(self.chain)

    @property
    def members(self) -> tuple[ServedRoute, ...]:
        """Every stage the shard serves: this route, then its peers."""
        return (self, *self.peers)


def shard_shares(served: Sequence[ServedRoute]) -> list[float] | None:
    """Each route's share of the aggregate (its weight over the sum), or None when every
    weight is the same: the plain mean, computed as before (bitwise)."""
    weights = [route.weight for route in served]
    if all(w == weights[0] for w in weights):
        return None
    total = math.fsum(weights)
    return [w / total for w in weights]


def pretrained_view(layer: nn.Module) -> nn.Module:
    """``layer`` with its LoRA wrappers replaced by their base layers: new module objects
    over the SAME (frozen, never written) tensors, so nothing is copied and later changes to
    the adapters or their on/off switches do not reach it."""
    shared = {id(t): t for t in chained(layer.parameters(), layer.buffers())}
    view = copy.deepcopy(layer, memo=shared)
    for name, module in list(view.named_modules()):
        if isinstance(module, LoraLayer):
            parent = view.get_submodule(name.rsplit(".", 1)[0]) if "." in name else view
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    return view.eval()


def head_view(model: nn.Module, heads: Mapping[nn.Module, nn.Module]) -> nn.Module:
    """A shallow copy of ``model`` in which each module of ``heads`` (keyed by the model's
    own submodule) is replaced by its value; every other submodule and tensor is shared."""
    paths = {id(module): name for name, module in model.named_modules()}
    view = copy.copy(model)
    view._modules = dict(model._modules)
    for original, replacement in heads.items():
        *parents, leaf = paths[id(original)].split(".")
        node = view
        for name in parents:
            found = node._modules[name]
            assert found is not None  # a parent of a named submodule
            child = copy.copy(found)
            child._modules = dict(found._modules)
            node._modules[name] = child
            node = child
        node._modules[leaf] = replacement
    return view


# A model call's fixed cost (per-op dispatch through every route's layers), in units of
# one token's compute: a batch of n texts padded to length T costs about OVERHEAD + n*T.
# Measured for MiniLM (m=5, L=3) on CPU: ~26 ms for one call vs ~0.54 ms per padded token.
CALL_OVERHEAD_TOKENS = 48


def length_chunks(lengths: list[int], max_chunk: int,
                  overhead: float = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split a batch into chunks of similar length, so that padding every text to the longest
    of its chunk wastes little compute: the indices sorted by length, cut where the cost
    model ``sum(overhead + size * longest)`` is smallest (exact, by dynamic programming),
    each chunk at most ``max_chunk`` texts."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - max_chunk), j):
            cost = best[i] + overhead + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks = []
    j = n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


class Ensemble:
    def __init__(self, backbone: AdaptedBackbone, method: Method):
        self.backbone = backbone
        self.method = method
        self.routes: dict[int, ServedRoute] = {}
        self.trunk = nn.ModuleList(pretrained_view(layer)
                                   for layer in backbone.family.layers(backbone.model))
        self.tokenizer_lock = threading.Lock()

    def update(self, chains: Mapping[int, tuple[str, Sequence[StageWeights]]],
               peers: Mapping[int, Sequence[tuple[str, Sequence[StageWeights]]]] | None = None,
               weights: Mapping[int, float] | None = None) -> None:
        """Materialise changed routes (``chains``: shard -> route key and chain; ``peers``:
        shard -> the other stages it serves with its route, serve_orderings 'all'; ``weights``:
        shard -> how much it counts, 1 where absent); keep the stages already materialised;
        swap the whole set at once.
        Loads weights into the backbone: one caller at a time (model calls may run)."""
        peers, weights = peers or {}, weights or {}
        known = {member.stage: member for route in self.routes.values()
                 for member in route.members}
        fresh: dict[int, ServedRoute] = {}
        for shard, (key, chain) in chains.items():
            wanted = [k for k, _ in peers.get(shard, ())]
            current = self.routes.get(shard)
            weight = float(weights.get(shard, 1.0))
            if current is not None and current.stage == key and \
                    [p.stage for p in current.peers] == wanted:
                fresh[shard] = current if current.weight == weight else \
                    dataclasses.replace(current, weight=weight)
                continue
            route = self._materialise(key, chain, known)
            group = tuple(self._materialise(k, c, known) for k, c in peers.get(shard, ()))
            if group:  # _materialise returns stages alone
                route = dataclasses.replace(route, peers=group)
            fresh[shard] = route if route.weight == weight else \
                dataclasses.replace(route, weight=weight)
        self.routes = fresh

    def _materialise(self, key: str, chain: Sequence[StageWeights],
                     known: dict[str, ServedRoute]) -> ServedRoute:
        """Stage ``key`` served alone (no peers): reused if materialised, else built."""
        if key in known:
            done = known[key]
            return done if not done.peers and done.weight == 1.0 else \
                dataclasses.replace(done, peers=(), weight=1.0)
        backbone = self.backbone
        backbone.load_route(list(chain), self.method)
        active = self.method.active_groups(len(chain))
        heads = backbone.family.head_modules(backbone.model)
        own = {module: copy.deepcopy(module).eval() for module in heads.values()}
        built = ServedRoute(key, active, backbone.merged_top_layers(active),
                            backbone.head_state(), tuple(chain), head_view(backbone.model, own))
        known[key] = built
        return built

    def encode(self, inputs: list) -> dict[str, torch.Tensor]:
        with self.tokenizer_lock:
            return self.backbone.encode(inputs)

    def token_lengths(self, inputs: list) -> list[int] | None:
        """Each text's length in tokens as encoded (truncated); None when the family does not
        pad its inputs to the longest of a batch (images are all the same length)."""
        if self.backbone.family.name != "encoder":
            return None
        with self.tokenizer_lock:
            ids = self.backbone.processor(list(inputs), truncation=True,
                                          max_length=self.backbone.config.max_seq_len)
        return [len(row) for row in ids["input_ids"]]

    def boundaries(self, batch: dict[str, torch.Tensor], top_group: int = 1) -> dict[int, torch.Tensor]:
        """As ``AdaptedBackbone.boundaries`` (pretrained hidden states entering layer groups
        ``L..top_group``), on the pretrained views: the backbone is not touched."""
        backbone, family = self.backbone, self.backbone.family
        mask = batch["attention_mask"]
        hidden = family.embed(backbone.model, batch)
        hidden = family.apply_layers(self.trunk[:backbone.trunk_end], hidden, mask)
        out = {backbone.n_groups: hidden}
        for g in range(backbone.n_groups, max(top_group, 1), -1):
            hidden = family.apply_layers(
                self.trunk[backbone.group_start(g):backbone.group_start(g - 1)], hidden, mask)
            out[g - 1] = hidden
        return out

    def _head(self, route: ServedRoute, hidden: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
        model = route.head_model if route.head_model is not None else self.backbone.model
        return self.backbone.family.head(model, hidden, mask)

    @staticmethod
    def _top_group(served: Sequence[ServedRoute]) -> int:
        return min(member.active for route in served for member in route.members)

    @torch.no_grad()
    def predict_proba(self, inputs: list, vote: bool, n_labels: int,
                      routes: Mapping[int, ServedRoute] | None = None) -> np.ndarray:
        """Class probabilities of ``routes`` (default: those served now, one snapshot)
        averaged over shards with the routes' weights (equal weights: the plain mean); a
        shard with peers contributes the mean of its members' probabilities (with ``vote``:
        that mean's most likely class)."""
        served = list((self.routes if routes is None else routes).values())
        out = np.zeros((len(inputs), n_labels))
        shares = shard_shares(served)
        for i, shard in enumerate(self._shard_probs(inputs, served)):
            if vote:
                shard = nn.functional.one_hot(shard.argmax(-1), n_labels).double()
            if shares is None:
                out += shard.numpy()
            else:
                out += shares[i] * shard.numpy()
        return out / len(served) if shares is None else out

    @torch.no_grad()
    def route_proba(self, inputs: list,
                    routes: Mapping[int, ServedRoute] | None = None) -> dict[int, np.ndarray]:
        """Each route's class probabilities alone (a route with peers: the mean of its
        members'), the trunk run once for all: what a shard would add to the aggregate."""
        routes = dict(self.routes if routes is None else routes)
        return {key: probs.numpy() for key, probs in
                zip(routes, self._shard_probs(inputs, list(routes.values())), strict=True)}

    def _shard_probs(self, inputs: list, served: Sequence[ServedRoute]) -> list[torch.Tensor]:
        batch = self.encode(inputs)
        mask = batch["attention_mask"]
        bounds = self.boundaries(batch, top_group=self._top_group(served))
        family = self.backbone.family
        out = []
        for route in served:
            shard: torch.Tensor | None = None
            for member in route.members:
                hidden = family.apply_layers_for_head(member.layers, bounds[member.active], mask)
                probs = torch.softmax(self._head(member, hidden, mask), dim=-1).double()
                shard = probs if shard is None else shard + probs
            assert shard is not None  # a route is its first member
            out.append(shard / len(route.members) if route.peers else shard)
        return out

    # --- causal language models -------------------------------------------------------------
    @torch.no_grad()
    def route_next_token_probs(self, batch: dict[str, torch.Tensor],
                               routes: Mapping[int, ServedRoute] | None = None
                               ) -> dict[int, torch.Tensor]:
        """Each live shard's next-token distribution (B, vocab) after the batch's last real
        token (a shard with peers: the mean of its members' distributions).

        The frozen trunk runs once for all routes; each then runs its merged top layers.
        """
        routes = dict(self.routes if routes is None else routes)  # one consistent snapshot
        family = self.backbone.family
        mask = batch["attention_mask"]
        last = mask.sum(dim=1) - 1
        rows = torch.arange(mask.shape[0])
        bounds = self.boundaries(batch, top_group=self._top_group(list(routes.values())))
        out = {}
        for shard, route in routes.items():
            members = []
            for member in route.members:
                hidden = family.apply_layers(member.layers, bounds[member.active], mask)
                logits = self._head(member, hidden[rows, last], mask)
                members.append(torch.softmax(logits.double(), dim=-1))
            out[shard] = members[0] if len(members) == 1 else torch.stack(members).mean(dim=0)
        return out

    def next_token_probs(self, batch: dict[str, torch.Tensor],
                         routes: Mapping[int, ServedRoute] | None = None) -> torch.Tensor:
        """Live shards' next-token probabilities averaged with their routes' weights (equal
        weights: the plain mean), (B, vocab)."""
        routes = dict(self.routes if routes is None else routes)
        per_route = self.route_next_token_probs(batch, routes)
        stacked = torch.stack([per_route[m] for m in routes])
        shares = shard_shares(list(routes.values()))
        if shares is None:
            return stacked.mean(dim=0)
        return (stacked * torch.tensor(shares, dtype=stacked.dtype)[:, None, None]).sum(dim=0)

    @staticmethod
    def mixture_log_probs(per_route: Mapping[int, torch.Tensor],
                          routes: Mapping[int, ServedRoute]) -> torch.Tensor:
        """The log of the shards' probabilities (``per_route``: shard -> log-probabilities,
        as ``token_log_probs`` gives) averaged with their routes' weights."""
        stacked = torch.stack([per_route[m] for m in routes])
        shares = shard_shares(list(routes.values()))
        if shares is None:
            return torch.logsumexp(stacked, dim=0) - math.log(len(routes))
        logs = torch.log(torch.tensor(shares, dtype=stacked.dtype))
        return torch.logsumexp(stacked + logs[:, None], dim=0)

    @torch.no_grad()
    def token_log_probs(self, batch: dict[str, torch.Tensor],
                        routes: Mapping[int, ServedRoute] | None = None
                        ) -> dict[int, torch.Tensor]:
        """Each shard's log-probability of every supervised next token (``labels`` != -100),
        as (N,) tensors in the same token order (a shard with peers: the log of the mean of
        its members' probabilities)."""
        from s3t.models.decoder import supervised

        routes = dict(self.routes if routes is None else routes)
        family = self.backbone.family
        mask = batch["attention_mask"]
        bounds = self.boundaries(batch, top_group=self._top_group(list(routes.values())))
        out = {}
        for shard, route in routes.items():
            members = []
            for member in route.members:
                hidden = family.apply_layers(member.layers, bounds[member.active], mask)
                states, tokens = supervised(hidden, batch["labels"])
                logits = self._head(member, states, None).double()
                members.append(torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0])
            out[shard] = members[0] if len(members) == 1 else \
                torch.logsumexp(torch.stack(members), dim=0) - math.log(len(members))
        return out
