"""Parse the IDX format (MNIST, Fashion-MNIST) into numpy arrays. Pure: bytes in, arrays out."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from hybrid.errors import DataError

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode one IDX file's bytes into an array of its declared shape and dtype.

    Raises:
        DataError: If the header is malformed or the payload size does not match it.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{name}: not an IDX file (magic bytes {data[:4].hex()!r})")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{name}: header declares {ndim} dimensions ({header} header bytes), "
            f"but the file holds only {len(data)} bytes"
        )
    shape = tuple(int(x) for x in np.frombuffer(data[4:header], dtype=">u4"))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{name}: header declares shape {shape} ({expected} bytes) but the file holds {len(data) - header}")
    return np.frombuffer(data[header:], dtype=dtype).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw, name=str(path))


def read_fashion_mnist(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (n, 28, 28) uint8, labels (n,) uint8)`` of the ``train`` or ``test`` split.

    Raises:
        DataError: If a file is missing or images and labels disagree in count.
    """
    directory = Path(directory)
    images_name, labels_name = FASHION_MNIST_FILES[split]
    for name in (images_name, labels_name):
        if not (directory / name).is_file():
            raise DataError(
                f"data.path: {str(directory / name)!r} is missing; install the Fashion-MNIST IDX files "
                "(`apt-get install dataset-fashion-mnist`) or pass --set data.path=DIR"
            )
    images, labels = read_idx(directory / images_name), read_idx(directory / labels_name)
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels
