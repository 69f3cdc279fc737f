"""The optional placement columns of a data file: ``deletion_prior`` and ``deletable``.

``deletion_prior`` is how likely a deletion request names the row (any relative rate >= 0;
a group's rate may be repeated on each of its rows); ``deletable=false`` marks licensed,
public or consented-forever data that is never deleted. Placement by prior
(``S3TConfig.placement``) puts never-deleted data in the first slices, which every deeper
stage builds on, and likely-deleted data in the last; ``forget`` refuses a
``deletable=false`` sample.
"""

from __future__ import annotations

import math
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
