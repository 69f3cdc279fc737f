"""The optional placement columns of a data file: ``deletion_prior`` and ``deletable``.

``deletion_prior`` is how likely a deletion request names the row (any relative rate >= 0;
a group's rate may be repeated on each of its rows); ``deletable=false`` marks licensed,
public or consented-forever data that is never deleted. Placement by prior
(``S3TConfig.placement``) puts never-deleted data in the first slices, which every deeper
stage builds on, and likely-deleted data in the last; ``forget`` refuses a
``deletable=false`` sample. With ``S3TConfig.anchor`` the ``deletable=false`` samples are no
shard's: they form the run's anchor set, which every shard trains on in its first slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def placement_fields(row: dict[str, Any], where: str) -> tuple[float | None, bool]:
    """A row's ``deletion_prior`` (``None`` when empty or absent) and ``deletable`` (true when
    empty or absent); ``where`` (file and line) leads any error."""
    raw = row.get("deletion_prior")
    prior = None
    if raw is not None and str(raw).strip() != "":
        try:
            prior = math.nan if isinstance(raw, bool) else float(raw)
        except (TypeError, ValueError):
            prior = math.nan
        if not (math.isfinite(prior) and prior >= 0):
            raise ValueError(f"{where}: deletion_prior must be a number >= 0 (a relative "
                             f"deletion likelihood), got {raw!r}")
    flag = row.get("deletable")
    if flag is None or (isinstance(flag, str) and not flag.strip()):
        return prior, True
    text = str(flag).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(f"{where}: deletable must be true or false (1/0, yes/no), got {flag!r}")
    return prior, text in _TRUE


def placement_columns(priors: list[float | None], deletable: list[bool],
                      present: bool) -> dict[str, Any]:
    """The Dataset keyword arguments for the columns, or none when no row carried them."""
    return {"priors": priors, "deletable": deletable} if present else {}


def anchor_split(deletable: Sequence[bool] | None, n: int) -> tuple[list[int], list[int]]:
    """The indices of the anchor set (the ``deletable=false`` samples, which every shard trains
    on with ``S3TConfig.anchor``) and of the samples to partition; ``ValueError`` naming the
    fix when the data has no anchor or nothing else."""
    flags = [True] * n if deletable is None else list(deletable)
    anchors = [i for i, may_delete in enumerate(flags) if not may_delete]
    rest = [i for i, may_delete in enumerate(flags) if may_delete]
    if not anchors:
        raise ValueError("anchor trains every shard on the samples marked deletable=false, but "
                         "the training data marks none: add a deletable column (false for "
                         "licensed, public or consented-forever rows) or train without anchor "
                         "(drop --anchor)")
    if not rest:
        raise ValueError(f"all {n} training samples are marked deletable=false, so with anchor "
                         "no deletable data is left to split into shards: mark the rows that "
                         "may be deleted deletable=true, or train without anchor (drop --anchor)")
    return anchors, rest
