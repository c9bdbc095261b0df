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
    copy_model,
    load_model,
    read_metadata,
    save_model,
    sha256_file,
    update_metadata,
)
from hybrid.errors import HybridError
from hybrid.models import CNN
from hybrid.testing import minilm_dir, tiny_cnn_config


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
    with pytest.raises(ArtifactError, match=rf"{MANIFEST} must be (JSON|a JSON object)"):
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


# --- atomic writes ---------------------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_save_that_fails_midway_leaves_the_previous_directory_intact(
    saved: tuple[Path, CNN, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    directory, model, inputs = saved
    before = _snapshot(directory)

    def half_written(state: dict, path: str, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a safetensors file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(directory, CNN(tiny_cnn_config(batch_norm=True, head_width=8)), family="cnn", config=model.config)
    assert _snapshot(directory) == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]  # no temporary directory left behind
    loaded, _ = load_model(directory)
    assert torch.equal(loaded(inputs), model(inputs))


def test_update_metadata_that_fails_midway_leaves_the_directory_intact(
    saved: tuple[Path, CNN, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hybrid.artifacts

    directory = saved[0]
    before = _snapshot(directory)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a signal between writing model.json and writing the manifest

    monkeypatch.setattr(hybrid.artifacts, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        update_metadata(directory, test_metrics={"accuracy": 1.0})
    assert _snapshot(directory) == before
    assert "test_metrics" not in read_metadata(directory)


def test_update_metadata_adds_fields_and_keeps_the_directory_verifiable(saved: tuple[Path, CNN, torch.Tensor]) -> None:
    directory = saved[0]
    weights = (directory / WEIGHTS).read_bytes()
    meta = update_metadata(directory, test_metrics={"accuracy": 0.75})
    assert meta["test_metrics"] == {"accuracy": 0.75} and meta["epoch"] == 3
    assert read_metadata(directory) == meta
    assert (directory / WEIGHTS).read_bytes() == weights
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]


def test_copy_model_verifies_the_source_and_writes_the_target_whole(
    saved: tuple[Path, CNN, torch.Tensor], tmp_path: Path
) -> None:
    directory, model, inputs = saved
    meta = copy_model(directory, tmp_path / "teacher", trial_id="t1")
    loaded, again = load_model(tmp_path / "teacher")
    assert torch.equal(loaded(inputs), model(inputs)) and again == meta and meta["trial_id"] == "t1"
    _flip_byte(directory / WEIGHTS, -1)
    with pytest.raises(ArtifactError, match="changed or corrupted"):
        copy_model(directory, tmp_path / "student")
    assert not (tmp_path / "student").exists()
    load_model(tmp_path / "teacher")  # a copy, not a second name of the changed file


def test_saving_into_an_existing_empty_directory_works(tmp_path: Path) -> None:
    # The training loop saves each epoch's checkpoint into a fresh tempfile.TemporaryDirectory.
    import tempfile

    torch.manual_seed(2)
    model = CNN(tiny_cnn_config()).eval()
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        save_model(tmp, model, family="cnn", config=model.config, epoch=1)
        assert read_metadata(tmp)["epoch"] == 1
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_a_model_directory_is_never_replaced(tmp_path: Path) -> None:
    model = CNN(tiny_cnn_config()).eval()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match=r"holds files but no manifest.json: it is not a model directory"):
        save_model(tmp_path, model, family="cnn", config=model.config)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArtifactError, match="this is a link or a file"):
        save_model(tmp_path / "link", model, family="cnn", config=model.config)


def test_a_config_naming_a_path_outside_is_refused_at_save(tmp_path: Path) -> None:
    model = CNN(tiny_cnn_config()).eval()
    config = {**to_dict(model.config), "init_from": "/runs/teacher"}
    with pytest.raises(ArtifactError, match=r"config.init_from names '/runs/teacher', outside it"):
        save_model(tmp_path / "m", model, family="cnn", config=config)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_writer_killed_with_sigkill_leaves_the_previous_directory_intact(
    saved: tuple[Path, CNN, torch.Tensor],
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from hybrid._atomic import TMP_MARK, remove_debris

    directory, model, inputs = saved
    before = _snapshot(directory)
    child = f"""
import os, signal
import safetensors.torch
from hybrid.artifacts import save_model
from hybrid.models import CNN
from hybrid.testing import minilm_dir, tiny_cnn_config

def killed(state, path, *args, **kwargs):
    with open(path, "wb") as fh:
        fh.write(b"half a safetensors file")
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.torch.save_file = killed
model = CNN(tiny_cnn_config(batch_norm=True, head_width=8))
save_model({str(directory)!r}, model, family="cnn", config=model.config)
"""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert _snapshot(directory) == before
    loaded, _ = load_model(directory)
    assert torch.equal(loaded(inputs), model(inputs))
    assert [p for p in directory.parent.iterdir() if TMP_MARK in p.name]  # the killed writer's half directory
    assert remove_debris(directory.parent) == 1
    assert sorted(p.name for p in directory.parent.iterdir()) == ["model"]


# --- BERT: self-contained model directories --------------------------------------------------------------

MINILM = minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="all-MiniLM-L6-v2 not installed (scripts/setup.sh)")


def _bert_config(**overrides: object) -> object:
    from hybrid.models import model_config

    return model_config("bert", {"pretrained_dir": str(MINILM), "dropout": 0.0, **overrides})


def _bert_batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[101, 2307, 3185, 102], [101, 2307, 102, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


@needs_minilm
def test_a_saved_student_does_not_depend_on_its_teacher(tmp_path: Path) -> None:
    import shutil

    from hybrid.distill import student_config
    from hybrid.models import create_model

    teacher = create_model("bert", config=_bert_config(num_layers=2)).eval()
    save_model(tmp_path / "teacher", teacher, family="bert", config=teacher.config)
    config = student_config("bert", read_metadata(tmp_path / "teacher")["config"], {}, width_multiplier=0.5,
                            teacher_dir=tmp_path / "teacher")
    assert config.init_from == str((tmp_path / "teacher").resolve())  # the student starts from the teacher...
    student = create_model("bert", config=config).eval()
    save_model(tmp_path / "student", student, family="bert", config=config)
    saved = read_metadata(tmp_path / "student")["config"]
    # ...but its saved directory names neither the teacher nor any path outside itself
    assert saved["init_from"] is None and saved["pretrained_dir"] == "encoder"
    assert not [v for v in json.dumps(saved).split('"') if str(tmp_path) in v]
    shutil.rmtree(tmp_path / "teacher")
    loaded, _ = load_model(tmp_path / "student")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_bert_batch()), student(**_bert_batch()))


@needs_minilm
@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("absolute-pretrained-dir", r"config.pretrained_dir names '/"),
        ("init-from-teacher", r"config.init_from names '/"),
        ("tampered-tokenizer", r"encoder/tokenizer.json has SHA-256 .* changed or corrupted"),
        ("unlisted-encoder-file", r"'encoder/pytorch_model.bin' is not"),
        ("encoder-symlinked-out", r"'encoder' is a symbolic link"),
        ("encoder-removed", r"encoder/config.json is listed in the manifest but missing"),
    ],
)
def test_bert_directory_attacks_are_refused(tmp_path: Path, attack: str, message: str) -> None:
    import shutil

    from hybrid.models import create_model

    model = create_model("bert", config=_bert_config(num_layers=1)).eval()
    directory = save_model(tmp_path / "m", model, family="bert", config=model.config)
    meta_path, encoder = directory / META, directory / "encoder"
    meta = json.loads(meta_path.read_text())
    if attack == "absolute-pretrained-dir":
        meta["config"]["pretrained_dir"] = str(MINILM)
    elif attack == "init-from-teacher":
        meta["config"]["init_from"] = str(tmp_path / "teacher")
    elif attack == "tampered-tokenizer":
        _flip_byte(encoder / "tokenizer.json", 10)
    elif attack == "unlisted-encoder-file":
        shutil.copyfile(MINILM / "model.safetensors", encoder / "pytorch_model.bin")
    elif attack == "encoder-symlinked-out":
        shutil.move(encoder, tmp_path / "encoder")
        encoder.symlink_to(tmp_path / "encoder", target_is_directory=True)
    elif attack == "encoder-removed":
        shutil.rmtree(encoder)
    if attack in ("absolute-pretrained-dir", "init-from-teacher"):
        meta_path.write_text(json.dumps(meta))
        files = json.loads((directory / MANIFEST).read_text())
        files["files"][META] = sha256_file(meta_path)  # re-hashed: only the self-containment rule can refuse it
        (directory / MANIFEST).write_text(json.dumps(files))
    with pytest.raises(ArtifactError, match=message):
        load_model(directory)
