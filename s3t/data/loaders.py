"""Turn data on disk (WordNet, CSV, JSONL, images) into a :class:`Dataset`, and split it for evaluation.

Every loader returns stable string ids, because the ledger, the partition and every deletion
request refer to samples by id; errors name the file and line so the user can fix the data.
Ids are kept exactly as written, surrounding spaces and commas included (only an empty or
all-blank id is refused): a deletion request names a sample the way its data file does.

Instruction-tuning data (for causal LMs) is a Dataset whose texts are JSON strings
``{"instruction": ..., "response": ...}`` and whose labels are all 0 (the ledger's integer
label column is unused for language models): :func:`load_instructions`,
:func:`load_wordnet_instructions`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from s3t.data.deletability import placement_columns, placement_fields
from s3t.data.instructions import instruction_text
from s3t.data.samples import Dataset
from s3t.data.subset import limit_indices
from s3t.data.wordnet import load_wordnet, load_wordnet_instructions

_INT_RE = re.compile(r"-?\d+")

#: Largest CSV field accepted (the csv module's default, 131,072 characters, is too small for
#: long documents or images stored as data URIs); a C long on every platform.
CSV_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)

# --------------------------------------------------------------------------- CSV / JSONL


def _where(file: Path, line: int) -> str:
    return f"{file}, line {line}"


def _iter_csv(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with file.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            yield from _csv_rows(file, reader)
        except csv.Error as exc:  # e.g. a NUL byte, or a field over CSV_FIELD_LIMIT
            raise ValueError(f"{_where(file, max(reader.line_num, 1))}: malformed CSV ({exc})"
                             ) from None


def _csv_rows(file: Path, reader: csv.DictReader) -> Iterator[tuple[int, dict[str, Any]]]:
    if not reader.fieldnames or not any(f.strip() for f in reader.fieldnames):
        raise ValueError(f"{file} is empty: write a header line `id,text,label` and rows")
    fields = [(f or "").strip() for f in reader.fieldnames]
    reader.fieldnames = fields
    for col in ("id", "text"):
        if col not in fields:
            raise ValueError(
                f"{_where(file, 1)}: missing `{col}` column (header is {fields}); "
                "the file needs columns `id`, `text` and optionally `label`, `group`"
            )
    has_label = "label" in fields
    for row in reader:
        row = {k: v for k, v in row.items() if k is not None}
        if not has_label:
            row.pop("label", None)
        yield reader.line_num, row


def _iter_jsonl(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with file.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if lineno == 1 and line.lstrip().startswith("["):
                raise ValueError(
                    f"{_where(file, 1)}: found a JSON array; write JSON lines instead "
                    '(one object per line, e.g. {"id": "a1", "text": "...", "label": "x"})'
                )
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{_where(file, lineno)}: malformed JSON ({e.msg}); each line must be one "
                    "JSON object"
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{_where(file, lineno)}: expected a JSON object with `id` and `text`, "
                    f"got {type(obj).__name__}"
                )
            yield lineno, obj


def _sample_id(value: Any, where: str) -> str:
    """The id exactly as written (no stripping: deletion requests must match it)."""
    sid = "" if value is None else str(value)
    if not sid.strip():
        raise ValueError(f"{where}: empty id; every row needs a unique non-empty `id`")
    return sid


def _label_str(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: label must be a string or an integer, got {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: empty label; give every row a label or drop the column")
    return text


def _sort_label_names(names: set[str]) -> list[str]:
    """Integer-looking labels sort numerically (so "10" follows "9"), others by string."""
    if names and all(_INT_RE.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_table(path: str | Path, label_names: list[str] | None = None) -> Dataset:
    """Read a CSV or JSON-lines file with columns ``id``, ``text``, ``label`` and ``group``.

    ``label``, ``group``, ``deletion_prior`` and ``deletable`` are optional (the last two
    guide placement by prior: a likelihood >= 0, and false for data that is never deletable;
    a group's rate may be given on each of its rows). Without ``label`` the dataset is unlabelled
    (``labels=None``, for prediction). Pass ``label_names`` to map labels into an existing
    label space (e.g. an eval file scored by a model trained on another file).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".csv":
        rows = _iter_csv(file)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows = _iter_jsonl(file)
    else:
        raise ValueError(
            f"{file}: unsupported extension {file.suffix!r}; use .csv or .jsonl "
            "(columns id, text, label, optional group)"
        )

    ids: list[str] = []
    texts: list[str] = []
    raw_labels: list[str] = []
    groups: list[str | None] = []
    first_line: dict[str, int] = {}
    labelled: bool | None = None
    priors: list[float | None] = []
    deletable: list[bool] = []
    placed = False
    for lineno, row in rows:
        where = _where(file, lineno)
        for col in ("id", "text"):
            if col not in row:
                raise ValueError(
                    f"{where}: missing `{col}` column; every row needs `id` and `text`"
                )
        sid = _sample_id(row["id"], where)
        if sid in first_line:
            raise ValueError(
                f"{where}: duplicate id {sid!r} (first seen on line {first_line[sid]}); "
                "ids must be unique"
            )
        text = row["text"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: empty text for id {sid!r}; remove the row or fill it in")
        has_label = "label" in row
        if labelled is None:
            labelled = has_label
        elif has_label != labelled:
            raise ValueError(
                f"{where}: `label` is {'present' if has_label else 'missing'} here but "
                f"{'missing' if has_label else 'present'} on earlier lines; label every row "
                "or none"
            )
        if has_label:
            raw_labels.append(_label_str(row["label"], where))
        group = row.get("group")
        groups.append(None if group is None or str(group).strip() == "" else str(group).strip())
        placed = placed or "deletion_prior" in row or "deletable" in row
        prior, may_delete = placement_fields(row, where)
        priors.append(prior)
        deletable.append(may_delete)
        first_line[sid] = lineno
        ids.append(sid)
        texts.append(text)

    if not ids:
        raise ValueError(
            f"{file} is empty (no data rows): add rows with `id`, `text` (and `label`)"
        )

    labels: list[int] | None = None
    if labelled:
        if label_names is None:
            label_names = _sort_label_names(set(raw_labels))
        index = {str(name): i for i, name in enumerate(label_names)}
        labels = []
        for sid, lab in zip(ids, raw_labels, strict=True):
            if lab not in index:
                raise ValueError(
                    f"{_where(file, first_line[sid])}: unknown label {lab!r} (id {sid!r}); "
                    f"expected one of {list(label_names)}"
                )
            labels.append(index[lab])
    return Dataset(
        ids=ids,
        texts=texts,
        labels=labels,
        groups=groups,
        label_names=[str(n) for n in label_names] if label_names is not None else [],
        **placement_columns(priors, deletable, placed),
    )


def is_instruction_file(path: str | Path) -> bool:
    """Whether a JSON-lines file's first object has ``instruction`` and ``response`` fields."""
    file = Path(path)
    if not file.is_file() or file.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        return False
    with file.open(encoding="utf-8-sig") as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and "instruction" in obj and "response" in obj
    return False


def load_instructions(path: str | Path) -> Dataset:
    """Read instruction-tuning data: JSON lines ``{"id", "instruction", "response", "group"?}``.

    Texts become JSON strings ``{"instruction", "response"}``; labels are all 0.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"data file {file} does not exist")
    ids: list[str] = []
    texts: list[str] = []
    groups: list[str | None] = []
    first_line: dict[str, int] = {}
    priors: list[float | None] = []
    deletable: list[bool] = []
    placed = False
    for lineno, row in _iter_jsonl(file):
        where = _where(file, lineno)
        for col in ("id", "instruction", "response"):
            if col not in row:
                raise ValueError(f"{where}: missing `{col}`; every row needs `id`, "
                                 "`instruction` and `response` (and optionally `group`)")
        sid = _sample_id(row["id"], where)
        if sid in first_line:
            raise ValueError(f"{where}: duplicate id {sid!r} (first seen on line "
                             f"{first_line[sid]}); ids must be unique")
        for col in ("instruction", "response"):
            if not isinstance(row[col], str) or not row[col].strip():
                raise ValueError(f"{where}: `{col}` of id {sid!r} must be a non-empty string")
        group = row.get("group")
        placed = placed or "deletion_prior" in row or "deletable" in row
        prior, may_delete = placement_fields(row, where)
        priors.append(prior)
        deletable.append(may_delete)
        first_line[sid] = lineno
        ids.append(sid)
        texts.append(instruction_text(row["instruction"], row["response"]))
        groups.append(None if group is None or str(group).strip() == "" else str(group).strip())
    if not ids:
        raise ValueError(f"{file} is empty (no data rows): add rows with `id`, `instruction` "
                         "and `response`")
    return Dataset(ids=ids, texts=texts, labels=[0] * len(ids), groups=groups,
                   **placement_columns(priors, deletable, placed))


def is_instruction_source(src: str) -> bool:
    """Whether ``load_source(src)`` gives instruction-tuning data (for a causal LM)."""
    return src.startswith("instruct:") or is_instruction_file(src)


# --------------------------------------------------------------------------- dispatch / split


def _remap_labels(data: Dataset, label_names: list[str]) -> Dataset:
    """Re-express ``data``'s labels as indices into ``label_names`` (a caller's label space)."""
    if data.labels is None or list(label_names) == data.label_names:
        return dataclasses.replace(data, label_names=list(label_names))
    index = {str(name): i for i, name in enumerate(label_names)}
    missing = sorted({data.label_names[lab] for lab in data.labels} - set(index))
    if missing:
        raise ValueError(f"labels {missing} are not in the given label_names {list(label_names)}")
    labels = [index[data.label_names[lab]] for lab in data.labels]
    return dataclasses.replace(data, labels=labels, label_names=[str(n) for n in label_names])


def load_source(
    src: str, label_names: list[str] | None = None, limit: int | None = None, seed: int = 0
) -> Dataset:
    """Load a data source; ``limit`` keeps a seeded subset.

    Sources: ``"wordnet"`` or ``"wordnet:<dir>"``; ``"fashion-mnist"`` (its training split),
    ``"fashion-mnist:train"`` or ``"fashion-mnist:test"``; a directory of images laid out
    as ``<dir>/<label>/<file>.png|jpg``; a CSV/JSONL file. Instruction data (``label_names``
    does not apply): ``"instruct:wordnet"`` or ``"instruct:wordnet:<dir>"``, and a JSONL file
    whose rows have ``instruction`` and ``response`` (also as ``"instruct:<file>"``).
    """
    if src.startswith("instruct:"):
        rest = src.partition(":")[2]
        if rest == "wordnet" or rest.startswith("wordnet:"):
            return load_wordnet_instructions(rest.partition(":")[2] or None, limit=limit,
                                             seed=seed)
        data = load_instructions(rest)
        return data if limit is None else data.subset(limit_indices(data, limit, seed))
    if is_instruction_file(src):
        data = load_instructions(src)
        return data if limit is None else data.subset(limit_indices(data, limit, seed))
    if src == "wordnet" or src.startswith("wordnet:"):
        wn_path = src.partition(":")[2] or None
        data = load_wordnet(wn_path, limit=limit, seed=seed)
        return data if label_names is None else _remap_labels(data, label_names)
    if src == "fashion-mnist" or src.startswith("fashion-mnist:"):
        from s3t.data.images import load_fashion_mnist

        split = src.partition(":")[2] or "train"
        if split not in ("train", "test"):
            raise ValueError(f"unknown Fashion-MNIST split {split!r}: use fashion-mnist, "
                             "fashion-mnist:train or fashion-mnist:test")
        data = load_fashion_mnist(split=split, limit=limit, seed=seed)
        return data if label_names is None else _remap_labels(data, label_names)
    if Path(src).is_dir():
        from s3t.data.images import load_image_folder

        data = load_image_folder(src)
        if label_names is not None:
            data = _remap_labels(data, label_names)
    else:
        data = load_table(src, label_names=label_names)
    if limit is not None:
        data = data.subset(limit_indices(data, limit, seed))
    return data


def train_test_split(
    data: Dataset, test_size: int | float, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Seeded split into (train, test) that never puts one group's samples on both sides.

    ``test_size`` is a sample count (int) or a fraction in (0, 1) (rounded up). With groups the
    test side holds whole groups and gets as close to ``test_size`` as they allow.
    """
    n = len(data)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise ValueError(f"test_size must be an int count or a float fraction, got {test_size!r}")
    if isinstance(test_size, float):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"a float test_size must lie in (0, 1), got {test_size}")
        target = math.ceil(test_size * n)
    else:
        target = test_size
    if not 0 < target < n:
        raise ValueError(
            f"test_size={test_size} leaves {target} of {n} samples for test; "
            "both sides need at least one sample"
        )

    units: dict[tuple[int, str], list[int]] = {}
    for i, (sid, group) in enumerate(zip(data.ids, data.groups, strict=True)):
        key = (0, group) if group is not None else (1, sid)
        units.setdefault(key, []).append(i)
    keys = sorted(units)
    order = np.random.default_rng(seed).permutation(len(keys))

    test: list[int] = []
    for k in order:
        members = units[keys[k]]
        if abs(len(test) + len(members) - target) < abs(len(test) - target):
            test.extend(members)
        if len(test) == target:
            break
    if not test or len(test) == n:
        raise ValueError(
            f"cannot split {n} samples into train and test of about {target} without "
            "splitting a group; use more groups or another test_size"
        )
    in_test = set(test)
    train_idx = [i for i in range(n) if i not in in_test]
    return data.subset(train_idx), data.subset(sorted(test))
