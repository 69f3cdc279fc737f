"""GGUF model directories: find the one ``*.gguf`` file and read its architecture cheaply.

A model directory is in Hugging Face format when it has a ``config.json``; otherwise it may
hold exactly one GGUF file, which transformers loads (dequantized) with
``from_pretrained(dir, gguf_file=name)``. Parsing a GGUF file with transformers walks every
metadata field (the whole tokenizer vocabulary), which takes seconds; the architecture is
the first field by convention, so :func:`gguf_architecture` reads the header directly.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
# value type -> struct format of a scalar (8 = string and 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_file(model_dir: str | Path) -> str | None:
    """The name of the directory's GGUF file, or ``None`` for a Hugging Face directory."""
    path = Path(model_dir)
    if (path / "config.json").is_file():
        return None
    files = sorted(p.name for p in path.glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"{path} holds several GGUF files ({', '.join(files)}): keep one "
                         "per model directory")
    return files[0] if files else None


def _read(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise ValueError(f"{handle.name}: truncated GGUF header")
    return data


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    return _read(handle, length).decode("utf-8", errors="replace")


def _skip_value(handle: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        (length,) = struct.unpack("<Q", _read(handle, 8))
        handle.seek(length, 1)
    elif kind == _ARRAY:
        elem, count = struct.unpack("<IQ", _read(handle, 12))
        if elem in _SCALARS:
            handle.seek(struct.calcsize(_SCALARS[elem]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(handle, elem)
    elif kind in _SCALARS:
        handle.seek(struct.calcsize(_SCALARS[kind]), 1)
    else:
        raise ValueError(f"{handle.name}: unknown GGUF value type {kind}")


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` field of a GGUF file (e.g. ``llama``)."""
    with open(path, "rb") as handle:
        if _read(handle, 4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        version, _tensors, n_fields = struct.unpack("<IQQ", _read(handle, 20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (need >= 2)")
        for _ in range(n_fields):
            key = _string(handle)
            (kind,) = struct.unpack("<I", _read(handle, 4))
            if key == "general.architecture" and kind == _STRING:
                return _string(handle)
            _skip_value(handle, kind)
    raise ValueError(f"{path} has no general.architecture field")
