"""Unit tests of hybrid.sources.idx on hand-built IDX bytes and files in tmp_path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from hybrid.errors import DataError
from hybrid.sources.idx import FASHION_MNIST_FILES, parse_idx, read_fashion_mnist, read_idx
from hybrid.testing import idx_bytes

# Header of a uint8 array of shape (2, 3, 4): magic 0x00000803, then each dimension as big-endian uint32.
UINT8_HEADER = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + b"\x00\x00\x00\x04"


def test_parse_uint8_3d_by_hand() -> None:
    payload = bytes(range(24))
    array = parse_idx(UINT8_HEADER + payload)
    assert array.shape == (2, 3, 4)
    assert array.dtype == np.uint8
    assert array[0, 0].tolist() == [0, 1, 2, 3]
    assert array[1, 2, 3] == 23


def test_parse_int32_1d_by_hand_is_big_endian() -> None:
    values = [0, 1, -1, 2**24 + 5, -(2**31)]
    data = b"\x00\x00\x0c\x01" + struct.pack(">I", len(values)) + struct.pack(">5i", *values)
    array = parse_idx(data)
    assert array.shape == (5,)
    assert array.dtype.kind == "i" and array.dtype.itemsize == 4
    assert array.tolist() == values


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_round_trip_through_the_test_encoder(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    parsed = parse_idx(idx_bytes(array))
    assert parsed.shape == array.shape
    np.testing.assert_array_equal(parsed, array)


def test_empty_dimension_is_valid() -> None:
    assert parse_idx(b"\x00\x00\x08\x02" + struct.pack(">II", 0, 28)).shape == (0, 28)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "not an IDX file"),
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "header declares 3 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "header declares 3 dimensions"),
        (UINT8_HEADER + bytes(23), "but the file holds 23"),
        (UINT8_HEADER + bytes(25), "but the file holds 25"),
        (b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + bytes(7), "(8 bytes)"),
    ],
    ids=[
        "empty",
        "short-magic",
        "bad-first-byte",
        "unknown-type",
        "truncated-dims",
        "missing-dims",
        "payload-short",
        "payload-long",
        "int32-payload-short",
    ],
)
def test_malformed_input_raises_data_error(data: bytes, why: str) -> None:
    with pytest.raises(DataError) as info:
        parse_idx(data, name="broken.idx")
    message = str(info.value)
    assert message.startswith("broken.idx: ")
    assert why in message


def test_read_idx_gzip_and_plain(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.uint8).reshape(5, 3, 4)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), array)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a.idx")), array)


def test_read_idx_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 4) + b"\x01"))
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(path)


def _write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    images_name, labels_name = FASHION_MNIST_FILES[split]
    (directory / images_name).write_bytes(gzip.compress(idx_bytes(images)))
    (directory / labels_name).write_bytes(gzip.compress(idx_bytes(labels)))


def test_read_fashion_mnist_pairs_images_and_labels(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)
    _write_split(tmp_path, "test", images, labels)
    got_images, got_labels = read_fashion_mnist(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_fashion_mnist_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path, "train")


def test_read_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(DataError, match=r"3 images but 2 labels in the train split"):
        read_fashion_mnist(tmp_path, "train")
