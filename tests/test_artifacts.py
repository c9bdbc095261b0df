"""Unit tests of hybrid.artifacts: model directories round-trip, and any tampering is caught."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hybrid._dataclass_io import to_dict
from hybrid.artifacts import (
    MANIFEST,
    META,
    WEIGHTS,
    ArtifactError,
    load_model,
    read_metadata,
    save_model,
    sha256_file,
)
from hybrid.errors import HybridError
from hybrid.models import CNN
from hybrid.testing import tiny_cnn_config


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, CNN, torch.Tensor]:
    """A tiny CNN saved to ``tmp_path/model``, with a batch of inputs."""
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config(batch_norm=True, head_width=8))
    model.train()
    model(torch.rand(8, 64))  # move batch-norm running statistics off their initial values
    model.eval()
    directory = save_model(
        tmp_path / "model",
        model,
        family="cnn",
        config=model.config,
        epoch=3,
        label_names=("a", "b", "c"),
        val_metrics={"accuracy": 0.5},
    )
    return directory, model, torch.rand(4, 64)


def test_round_trip_restores_weights_buffers_and_metadata(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory, model, inputs = saved
    assert sorted(p.name for p in directory.iterdir()) == sorted([WEIGHTS, META, MANIFEST])
    loaded, meta = load_model(directory)
    assert isinstance(loaded, CNN) and not loaded.training
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded(inputs), model(inputs))
    assert meta["family"] == "cnn"
    assert meta["config"] == to_dict(model.config)
    assert meta["epoch"] == 3 and meta["label_names"] == ["a", "b", "c"]
    assert meta["val_metrics"] == {"accuracy": 0.5}
    assert read_metadata(directory) == meta


def test_manifest_records_sha256_of_every_file(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory = saved[0]
    files = json.loads((directory / MANIFEST).read_text())["files"]
    assert set(files) == {WEIGHTS, META}
    for name, digest in files.items():
        assert digest == hashlib.sha256((directory / name).read_bytes()).hexdigest()


def test_sha256_file_reads_large_files_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * (5 * 4096 + 3)  # a little over 5 MiB, not a whole number of chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def _flip_byte(path: Path, index: int) -> None:
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("index", [-1, 20], ids=["tensor-data", "header"])
def test_one_changed_weight_byte_is_caught(saved: tuple[Path, CNN, torch.Tensor], index: int) -> None:
    directory = saved[0]
    # The last byte is tensor data: safetensors itself would load the changed file without complaint.
    _flip_byte(directory / WEIGHTS, index)
    with pytest.raises(ArtifactError, match=rf"{WEIGHTS} has SHA-256 .* the file was changed or corrupted"):
        load_model(directory)


def test_edited_metadata_is_caught(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory = saved[0]
    meta = json.loads((directory / META).read_text())
    meta["epoch"] = 99
    (directory / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=META):
        load_model(directory)
    with pytest.raises(ArtifactError, match=META):
        read_metadata(directory)


def test_missing_manifest_raises(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory = saved[0]
    (directory / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match=rf"no {MANIFEST}; not a hybrid model directory"):
        load_model(directory)


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=MANIFEST):
        load_model(tmp_path)


def test_listed_file_missing_raises(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory = saved[0]
    (directory / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match=rf"{WEIGHTS} is listed in the manifest but missing"):
        load_model(directory)


def test_manifest_that_leaves_out_the_weights_is_rejected(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    # Otherwise replacing the weights and deleting their line from the manifest would go unnoticed.
    directory = saved[0]
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["files"][WEIGHTS]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"does not list \['{WEIGHTS}'\]"):
        load_model(directory)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"hashes": {}}'])
def test_unreadable_manifest_is_an_artifact_error(saved: tuple[Path, CNN, torch.Tensor], text: str) -> None:
    directory = saved[0]
    (directory / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match=rf"{MANIFEST} is not a JSON object"):
        load_model(directory)


def test_artifact_error_is_a_user_error() -> None:
    assert issubclass(ArtifactError, HybridError)


def test_saving_again_replaces_the_weights(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory, model, inputs = saved
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    save_model(directory, model, family="cnn", config=model.config)
    loaded, meta = load_model(directory)
    assert torch.equal(loaded(inputs), model(inputs))
    assert "epoch" not in meta  # metadata of the earlier save is gone


class _Wrapper(nn.Module):
    """Stands in for ``DistributedDataParallel``, which keeps the real model in ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_wrapped_model_is_unwrapped(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CNN(tiny_cnn_config()).eval()
    save_model(tmp_path, _Wrapper(model), family="cnn", config=model.config)
    loaded, _ = load_model(tmp_path)
    inputs = torch.rand(2, 64)
    assert torch.equal(loaded(inputs), model(inputs))
