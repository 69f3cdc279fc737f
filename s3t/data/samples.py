"""The unit of data s3t tracks: samples with stable ids, optional group keys and labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Dataset:
    """Column-oriented samples: ``ids[i]``, ``texts[i]``, ``labels[i]``, ``groups[i]``.

    ``labels`` are integer indices into ``label_names`` (``None`` when unlabelled);
    ``groups`` hold a group key (e.g. a user id) or ``None``. ``priors`` (a deletion
    likelihood, ``None`` where not given) and ``deletable`` (``False``: never deletable) are
    ``None`` when the data carries neither column; they guide placement by prior.
    """

    ids: list[str]
    texts: list[str]
    labels: list[int] | None = None
    groups: list[str | None] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    priors: list[float | None] | None = None
    deletable: list[bool] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not self.groups:
            self.groups = [None] * n
        if len(self.texts) != n or len(self.groups) != n:
            raise ValueError("Dataset columns must have the same length")
        for column in (self.labels, self.priors, self.deletable):
            if column is not None and len(column) != n:
                raise ValueError("Dataset columns must have the same length")
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            for dup in self.ids:  # the first id that occurs a second time
                if dup in seen:
                    break
                seen.add(dup)
            raise ValueError(f"duplicate sample id {dup!r}: every sample needs a unique id")

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> Dataset:
        return Dataset(
            ids=[self.ids[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            labels=None if self.labels is None else [self.labels[i] for i in indices],
            groups=[self.groups[i] for i in indices],
            label_names=list(self.label_names),
            priors=None if self.priors is None else [self.priors[i] for i in indices],
            deletable=None if self.deletable is None else [self.deletable[i] for i in indices],
        )
