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
from s3t.plan.methods import Method
from s3t.train.stage_trainer import StageWeights, apply_chain


@dataclass(frozen=True)
class ServedRoute:
    stage: str                 # the route's stage key
    active: int                # layer groups switched on
    layers: nn.ModuleList      # merged dense copies of the layers from group ``active`` up
    head: StateDict


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
            apply_chain(self.backbone, chain, self.method)
            active = self.method.active_groups(len(chain))
            fresh[shard] = ServedRoute(key, active, self.backbone.merged_top_layers(active),
                                       self.backbone.head_state())
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
