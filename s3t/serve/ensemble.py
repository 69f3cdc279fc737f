"""Serving: one pass through the frozen trunk per request batch, then each live shard's
top layers with its route's LoRA deltas merged into dense weights.

A served route is materialised once when routes change and reused for every request;
the set of routes is swapped in one assignment, so a request sees either the routes
before a forget or those after it, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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

    @property
    def depth(self) -> int:
        return len(self.chain)


class Ensemble:
    def __init__(self, backbone: AdaptedBackbone, method: Method):
        self.backbone = backbone
        self.method = method
        self.routes: dict[int, ServedRoute] = {}

    def update(self, chains: dict[int, tuple[str, list[StageWeights]]]) -> None:
        """Materialise changed routes; keep unchanged ones; swap the whole set at once."""
        fresh: dict[int, ServedRoute] = {}
        for shard, (key, chain) in chains.items():
            current = self.routes.get(shard)
            if current is not None and current.stage == key:
                fresh[shard] = current
                continue
            self.backbone.load_route(chain, self.method)
            active = self.method.active_groups(len(chain))
            fresh[shard] = ServedRoute(key, active, self.backbone.merged_top_layers(active),
                                       self.backbone.head_state(), tuple(chain))
        self.routes = fresh

    @torch.no_grad()
    def predict_proba(self, inputs: list, vote: bool, n_labels: int) -> np.ndarray:
        routes = list(self.routes.values())  # one consistent snapshot
        backbone, family = self.backbone, self.backbone.family
        batch = backbone.encode(inputs)
        mask = batch["attention_mask"]
        bounds = backbone.boundaries(batch, top_group=min(r.active for r in routes))
        out = np.zeros((len(inputs), n_labels))
        for route in routes:
            hidden = family.apply_layers(route.layers, bounds[route.active], mask)
            backbone.load_head_state(route.head)
            probs = torch.softmax(family.head(backbone.model, hidden, mask), dim=-1)
            if vote:
                probs = nn.functional.one_hot(probs.argmax(-1), n_labels).double()
            out += probs.double().numpy()
        return out / len(routes)

    # --- causal language models -------------------------------------------------------------
    @torch.no_grad()
    def route_next_token_probs(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each live route's next-token distribution (B, vocab) after the batch's last real token.

        The frozen trunk runs once for all routes; each then runs its merged top layers.
        """
        routes = dict(self.routes)  # one consistent snapshot
        backbone, family = self.backbone, self.backbone.family
        mask = batch["attention_mask"]
        last = mask.sum(dim=1) - 1
        rows = torch.arange(mask.shape[0])
        bounds = backbone.boundaries(batch, top_group=min(r.active for r in routes.values()))
        out = {}
        for shard, route in routes.items():
            hidden = family.apply_layers(route.layers, bounds[route.active], mask)
            backbone.load_head_state(route.head)
            logits = family.head(backbone.model, hidden[rows, last], mask)
            out[shard] = torch.softmax(logits.double(), dim=-1)
        return out

    def next_token_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over live routes of their next-token probabilities, (B, vocab)."""
        per_route = self.route_next_token_probs(batch)
        return torch.stack(list(per_route.values())).mean(dim=0)

    @torch.no_grad()
    def token_log_probs(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each route's log-probability of every supervised next token (``labels`` != -100),
        as (N,) tensors in the same token order."""
        from s3t.models.decoder import supervised

        routes = dict(self.routes)
        backbone, family = self.backbone, self.backbone.family
        mask = batch["attention_mask"]
        bounds = backbone.boundaries(batch, top_group=min(r.active for r in routes.values()))
        out = {}
        for shard, route in routes.items():
            hidden = family.apply_layers(route.layers, bounds[route.active], mask)
            backbone.load_head_state(route.head)
            states, tokens = supervised(hidden, batch["labels"])
            logits = family.head(backbone.model, states, None).double()
            out[shard] = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]
        return out
