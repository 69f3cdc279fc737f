"""Image datasets (Fashion-MNIST IDX files, folders of images) as :class:`Dataset` objects.

The ledger stores every sample's input as a string, so an image travels as a self-describing
data URI (``data:image/png;base64,...``): the bytes are in the ledger, a deletion scrubs them
like a text, and the ViT family decodes them with Pillow. Fashion-MNIST images are encoded as
lossless PNG; files of an image folder keep their own bytes (PNG or JPEG), unchanged.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from s3t.data.samples import Dataset
from s3t.data.subset import limit_indices

if TYPE_CHECKING:  # Pillow loads on first use
    from PIL.Image import Image

DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Fashion-MNIST's classes, indexed by label.
FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
#: IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- data URIs


def to_data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_data_uri(pixels: np.ndarray) -> str:
    """A (H, W) uint8 grey or (H, W, 3) uint8 RGB array as a PNG data URI (lossless)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return to_data_uri(buffer.getvalue())


def decode_image(value: object) -> Image:
    """A data URI (or an already open PIL image) -> PIL image, fully loaded."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    if not isinstance(value, str) or not value.startswith("data:"):
        shown = repr(value)[:60]
        raise ValueError(
            f"image inputs must be data URIs ('data:image/png;base64,...'), got {shown}; "
            "load images with s3t.data.images (load_fashion_mnist, load_image_folder)"
        )
    header, comma, payload = value.partition(",")
    if not comma or not header.endswith(";base64"):
        raise ValueError(f"not a base64 data URI: {value[:60]!r}...")
    try:
        image = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        image.load()
    except (binascii.Error, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode image data URI {value[:40]!r}...: {err}") from None
    return image


# --------------------------------------------------------------------------- IDX / Fashion-MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (as used by MNIST and Fashion-MNIST), gzipped or not."""
    file = Path(path)
    raw = file.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{file} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{file}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{file}: IDX header announces shape {shape} ({expected} bytes of data) "
                         f"but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(base: Path, stem: str) -> Path:
    for name in (stem, f"{stem}.gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {base}: install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass the directory "
        "holding the IDX files"
    )


def load_fashion_mnist(path: str | Path | None = None, split: str = "train",
                       limit: int | None = None, seed: int = 0,
                       exclude: Collection[str] = ()) -> Dataset:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grey images, 10 classes).

    Ids are ``fmnist-<split>:<index>`` (index in the IDX file), inputs PNG data URIs,
    ``label_names`` the ten class names whatever the subset. ``exclude`` removes ids first
    (e.g. the public part a backbone was pre-trained on, which a run must never contain);
    ``limit`` then keeps a seeded, class-proportional subset (only that subset is encoded),
    sorted by id.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = DEFAULT_FASHION_MNIST if path is None else Path(path)
    if not base.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST directory {base} does not exist: install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass the directory "
            "holding the IDX files"
        )
    prefix = _SPLIT_PREFIX[split]
    images_file = _idx_file(base, f"{prefix}-images-idx3-ubyte")
    labels_file = _idx_file(base, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_file} and {labels_file} do not hold matching images "
                         f"(N, H, W) and labels (N,): shapes {images.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_LABELS)):
        raise ValueError(f"{labels_file}: labels outside 0..{len(FASHION_MNIST_LABELS) - 1}")
    excluded = set(exclude)
    kept = [i for i in range(len(labels)) if f"fmnist-{split}:{i}" not in excluded]
    keys = Dataset(ids=[f"fmnist-{split}:{i}" for i in kept], texts=[""] * len(kept),
                   labels=[int(labels[i]) for i in kept], label_names=list(FASHION_MNIST_LABELS))
    chosen = kept if limit is None else [kept[j] for j in limit_indices(keys, limit, seed)]
    ids = [f"fmnist-{split}:{i}" for i in range(len(labels))]
    pixels = images.astype(np.uint8, copy=False)
    return Dataset(
        ids=[ids[i] for i in chosen],
        texts=[png_data_uri(pixels[i]) for i in chosen],
        labels=[int(labels[i]) for i in chosen],
        label_names=list(FASHION_MNIST_LABELS),
    )


# --------------------------------------------------------------------------- image folders


def load_image_folder(root: str | Path) -> Dataset:
    """``root/<label>/<file>.png|jpg|jpeg`` -> labelled images.

    Ids are the files' paths relative to ``root`` (``cat/001.png``), label names the
    sub-directory names, sorted. Each file is checked to open as an image here, so a broken
    file is reported by name now rather than in the middle of training.
    """
    from PIL import Image, UnidentifiedImageError

    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    by_label = {
        d.name: sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
        for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")
    }
    label_names = sorted(name for name, files in by_label.items() if files)
    ids, texts, labels = [], [], []
    for label, name in enumerate(label_names):
        for file in by_label[name]:
            data = file.read_bytes()
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as err:
                raise ValueError(f"{file}: not a readable image ({err})") from None
            ids.append(file.relative_to(base).as_posix())
            texts.append(to_data_uri(data, _IMAGE_SUFFIXES[file.suffix.lower()]))
            labels.append(label)
    if not ids:
        raise ValueError(
            f"{base} holds no images: lay them out as {base}/<label>/<name>.png (or .jpg)"
        )
    return Dataset(ids=ids, texts=texts, labels=labels, label_names=label_names)
