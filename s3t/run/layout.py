"""Where each training sample of a new run goes: a cell (the seeded uniform partition, or
placement by deletion prior) or, with ``S3TConfig.anchor``, the run's anchor set.

The anchor set is the training data's ``deletable=false`` samples: no shard's cell, since every
shard trains on it in its first slice (the ledger keeps its rows at ``ANCHOR_CELL``). Decided
once, before any stage trains, and recorded in the ledger: forget, routing, audit and verify
read it back and never recompute it, so exactness is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from s3t.config import ConfigError, S3TConfig
from s3t.data.deletability import anchor_split
from s3t.data.partition import partition
from s3t.data.samples import Dataset
from s3t.plan.placement import place_samples
from s3t.run.deletion import ANCHOR_CELL


@dataclass(frozen=True)
class Layout:
    """Every sample id's cell (``ANCHOR_CELL`` for the anchor set), the slice prior that
    placement by prior computed (None otherwise) and what the run card records of it."""

    cells: dict[str, tuple[int, int]]
    prior: list[float] | None = None
    card: dict = field(default_factory=dict)


def lay_out(config: S3TConfig, data: Dataset) -> Layout:
    """The cells of ``data`` under ``config`` (placement, anchor, seed). Raises
    ``ConfigError`` (field ``anchor``) or ``ValueError`` naming the fix when the data cannot
    be laid out (no or only anchor samples, too few samples for the cells)."""
    anchors: list[str] = []
    if config.anchor:
        try:
            kept, rest = anchor_split(data.deletable, len(data))
        except ValueError as err:
            raise ConfigError("anchor", str(err)) from None
        anchors, data = [data.ids[i] for i in kept], data.subset(rest)
    if len(data) < config.shards * config.slices:
        besides = " besides the anchor set" if anchors else ""
        raise ValueError(f"{len(data)} samples{besides} cannot fill {config.shards} shards x "
                         f"{config.slices} slices: use fewer shards or slices")
    if config.placement == "prior":  # cells by deletion likelihood; bms orders by the prior
        cells, prior = place_samples(data.ids, data.groups, data.priors, data.deletable,
                                     config.shards, config.slices, seed=config.seed)
        layout = Layout(cells, prior, {"placement": {"rule": "prior", "slice_prior": prior}})
    else:
        layout = Layout(partition(data.ids, data.groups, config.shards, config.slices,
                                  seed=config.seed), config.prior)
    layout.cells.update((sid, ANCHOR_CELL) for sid in anchors)  # every shard's first slice
    return layout
