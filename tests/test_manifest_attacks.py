"""Every way a model directory can be malformed, escape itself or be tampered with is one ArtifactError line.

Each attack edits a freshly saved model directory and, where the manifest would otherwise catch the edit by
its hash alone, re-hashes it as an attacker would, so that the rule under test is the one that fires.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.artifacts import (
    MANIFEST,
    META,
    WEIGHTS,
    ArtifactError,
    load_model,
    model_collate,
    read_metadata,
    save_model,
    verify_manifest,
    write_manifest,
)
from hybrid.models import CNN
from hybrid.quantize import InputSpec, Int8Model, load_quantized, save_quantized
from hybrid.testing import tiny_cnn_config


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny CNN saved to ``tmp_path/model``; ``tmp_path`` also holds ``secret.txt``, outside it."""
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config()).eval()
    (tmp_path / "secret.txt").write_text("not part of the model\n")
    return save_model(tmp_path / "model", model, family="cnn", config=model.config, label_names=["a", "b", "c"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(directory: Path) -> dict[str, str]:
    return json.loads((directory / MANIFEST).read_text())["files"]


def _list(directory: Path, files: dict[str, str]) -> None:
    """Write a manifest by hand, as someone bypassing hybrid's writer would."""
    (directory / MANIFEST).write_text(json.dumps({"files": files}))


def _add_entry(name: str, target: str = "secret") -> Callable[[Path], None]:
    """An attack listing ``name`` with the correct hash of a file outside the directory."""

    def attack(directory: Path) -> None:
        source = Path("/etc/hostname") if target == "hostname" else directory.parent / "secret.txt"
        _list(directory, {**_manifest(directory), name: _sha(source)})

    return attack


def _absolute(directory: Path) -> None:
    secret = directory.parent / "secret.txt"
    _list(directory, {**_manifest(directory), str(secret): _sha(secret)})


def _symlink_file_out(directory: Path) -> None:
    (directory / "extra.txt").symlink_to(directory.parent / "secret.txt")
    _list(directory, {**_manifest(directory), "extra.txt": _sha(directory.parent / "secret.txt")})


def _weights_symlinked(directory: Path) -> None:
    # the same bytes, so the hash matches: only the link rule can refuse it
    outside = directory.parent / "weights-copy"
    outside.write_bytes((directory / WEIGHTS).read_bytes())
    (directory / WEIGHTS).unlink()
    (directory / WEIGHTS).symlink_to(outside)


def _symlink_file_in(directory: Path) -> None:
    (directory / "alias.json").symlink_to(directory / META)
    _list(directory, {**_manifest(directory), "alias.json": _sha(directory / META)})


def _symlink_dir_out(directory: Path) -> None:
    outside = directory.parent / "assets"
    outside.mkdir()
    (outside / "vocab.txt").write_text("[PAD]\n")
    (directory / "encoder").symlink_to(outside, target_is_directory=True)
    _list(directory, {**_manifest(directory), "encoder/vocab.txt": _sha(outside / "vocab.txt")})


def _symlink_dir_in(directory: Path) -> None:
    (directory / "loop").symlink_to(directory, target_is_directory=True)


def _symlinked_manifest(directory: Path) -> None:
    outside = directory.parent / "manifest-copy.json"
    outside.write_text((directory / MANIFEST).read_text())
    (directory / MANIFEST).unlink()
    (directory / MANIFEST).symlink_to(outside)


def _unlisted(name: str) -> Callable[[Path], None]:
    def attack(directory: Path) -> None:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(b"smuggled")

    return attack


def _manifest_text(text: str | bytes) -> Callable[[Path], None]:
    def attack(directory: Path) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        (directory / MANIFEST).write_bytes(data)

    return attack


def _hash_of_weights(value: object) -> Callable[[Path], None]:
    def attack(directory: Path) -> None:
        _list(directory, {**_manifest(directory), WEIGHTS: value})  # type: ignore[dict-item]

    return attack


def _meta(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """An attack rewriting ``model.json`` (edit returns the new content) and re-hashing the manifest."""

    def attack(directory: Path) -> None:
        meta = json.loads((directory / META).read_text())
        new = edit(meta)
        (directory / META).write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
        write_manifest(directory)

    attack.rehashed = True  # type: ignore[attr-defined]
    return attack


def _flip_weights(directory: Path) -> None:
    data = bytearray((directory / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (directory / WEIGHTS).write_bytes(bytes(data))


def _bert(**config: object) -> Callable[[dict], dict]:
    return lambda meta: {**meta, "family": "bert", "config": {"pretrained_dir": "encoder", **config}}


ATTACKS: dict[str, tuple[Callable[[Path], None], str]] = {
    # entries that leave the directory or are not normalised
    "absolute-path-entry": (_absolute, r"every manifest.json entry must be a relative.*is absolute"),
    "etc-hostname-entry": (_add_entry("/etc/hostname", "hostname"), r"'/etc/hostname' is absolute"),
    "dotdot-entry": (_add_entry("../secret.txt"), r"'\.\./secret.txt' has a '\.' or '\.\.' part"),
    "dotdot-dotdot-entry": (_add_entry("../../x"), r"has a '\.' or '\.\.' part"),
    "dotdot-inside-entry": (_add_entry("sub/../../secret.txt"), r"has a '\.' or '\.\.' part"),
    "dot-part-entry": (_add_entry("./model.json"), r"has a '\.' or '\.\.' part"),
    "backslash-entry": (_add_entry("..\\secret.txt"), r"has a backslash"),
    "empty-part-entry": (_add_entry("sub//x"), r"has an empty part"),
    "trailing-slash-entry": (_add_entry("sub/"), r"has an empty part"),
    "empty-entry": (_add_entry(""), r"must be a relative, normalised POSIX path.*got ''"),
    "control-character-entry": (_add_entry("a\nb"), r"has a control character"),
    "manifest-lists-itself": (_add_entry(MANIFEST), r"manifest.json lists itself"),
    # links, pointing in or out
    "symlink-file-out": (_symlink_file_out, r"'extra.txt' is a symbolic link"),
    "symlink-file-in": (_symlink_file_in, r"'alias.json' is a symbolic link"),
    "weights-symlinked-same-bytes": (_weights_symlinked, r"'model.safetensors' is a symbolic link"),
    "symlink-dir-out": (_symlink_dir_out, r"'encoder' is a symbolic link"),
    "symlink-dir-in": (_symlink_dir_in, r"'loop' is a symbolic link"),
    "symlinked-manifest": (_symlinked_manifest, r"manifest.json must be a regular file, but it is a symbolic link"),
    # files the manifest does not list
    "unlisted-file": (_unlisted("notes.txt"), r"every file must be listed in manifest.json, but 'notes.txt' is not"),
    "unlisted-file-in-subdir": (_unlisted("encoder/extra.bin"), r"'encoder/extra.bin' is not"),
    "unlisted-hidden-file": (_unlisted(".hidden"), r"'.hidden' is not"),
    # malformed manifests
    "manifest-not-json": (_manifest_text("{not json"), r"manifest.json must be JSON, but it is not \(.*line 1"),
    "manifest-empty-file": (_manifest_text(""), r"manifest.json must be JSON"),
    "manifest-non-utf8": (
        _manifest_text(b'{"files": {"\xff\xfe": "00"}}'), r"must be UTF-8 JSON, but byte 12 is not UTF-8"
    ),
    "manifest-a-list": (_manifest_text("[]"), r"must be a JSON object .*, but it is a JSON list"),
    "manifest-a-string": (_manifest_text('"files"'), r"but it is a JSON str"),
    "manifest-without-files": (_manifest_text('{"hashes": {}}'), r"but it is an object with keys \['hashes'\]"),
    "manifest-extra-key": (_manifest_text('{"files": {}, "x": 1}'), r"with keys \['files', 'x'\]"),
    "files-a-list": (_manifest_text('{"files": []}'), r"'files' must be an object .*, but it is a JSON list"),
    "files-null": (_manifest_text('{"files": null}'), r"but it is a JSON NoneType"),
    "repeated-key": (
        _manifest_text('{"files": {"a": "0", "a": "1"}}'), r"must not repeat a key, but 'a' appears twice"
    ),
    "hash-not-a-string": (_hash_of_weights(5), r"entry 'model.safetensors' must have a SHA-256 of 64 .* but has 5"),
    "hash-a-list": (_hash_of_weights(["0" * 64]), r"must have a SHA-256 .* but has \['0"),
    "hash-wrong-length": (_hash_of_weights("ab" * 31), r"must have a SHA-256 of 64 lowercase hex digits"),
    "hash-uppercase": (_hash_of_weights("AB" * 32), r"must have a SHA-256 of 64 lowercase hex digits"),
    "hash-not-hex": (_hash_of_weights("g" * 64), r"must have a SHA-256 of 64 lowercase hex digits"),
    # tampering
    "tampered-weights": (_flip_weights, r"model.safetensors has SHA-256 .* the file was changed or corrupted"),
    "missing-listed-file": (
        lambda d: (d / WEIGHTS).unlink(), r"model.safetensors is listed in the manifest but missing"
    ),
    "listed-entry-is-a-directory": (
        lambda d: ((d / "sub").mkdir(), _list(d, {**_manifest(d), "sub": "0" * 64})),
        r"sub is listed in the manifest but missing \(or not a regular file\)",
    ),
    "weights-left-out-of-manifest": (
        lambda d: _list(d, {k: v for k, v in _manifest(d).items() if k != WEIGHTS}),
        r"does not list \['model.safetensors'\]",
    ),
    "no-manifest": (lambda d: (d / MANIFEST).unlink(), r"no manifest.json; not a hybrid model directory"),
    # malformed or not self-contained model.json
    "meta-not-an-object": (_meta(lambda m: [m]), r"model.json must be a JSON object, but it is a JSON list"),
    "meta-not-json": (_meta(lambda m: b"{family: cnn"), r"model.json must be JSON, but it is not"),
    "meta-non-utf8": (_meta(lambda m: b'{"family": "\xe9"}'), r"model.json must be UTF-8 JSON"),
    "meta-missing-family": (_meta(lambda m: {"config": m["config"]}), r"'family' must be one of .* but it is None"),
    "meta-unknown-family": (_meta(lambda m: {**m, "family": "cnnn"}), r"but it is 'cnnn' \(did you mean 'cnn'\?\)"),
    "meta-family-not-a-string": (_meta(lambda m: {**m, "family": 5}), r"'family' must be one of .* but it is 5"),
    "meta-missing-config": (_meta(lambda m: {"family": "cnn"}), r"'config' must be an object, but it is None"),
    "meta-config-a-list": (_meta(lambda m: {**m, "config": []}), r"'config' must be an object, but it is \[\]"),
    "meta-config-not-cnn": (_meta(lambda m: {**m, "config": {"width": 3}}), r"config does not build a cnn model"),
    "absolute-pretrained-dir": (
        _meta(_bert(pretrained_dir="/work/main/data/models/all-MiniLM-L6-v2")),
        r"self-contained, but model.json's config.pretrained_dir names '/work/main/data/models/all-MiniLM",
    ),
    "absolute-init-from": (
        _meta(_bert(init_from="/runs/demo/teacher")), r"config.init_from names '/runs/demo/teacher'"
    ),
    "escaping-pretrained-dir": (_meta(_bert(pretrained_dir="../teacher/encoder")), r"outside it"),
    "home-pretrained-dir": (_meta(_bert(pretrained_dir="~/models/minilm")), r"outside it"),
    "url-pretrained-dir": (_meta(_bert(pretrained_dir="s3://bucket/minilm")), r"outside it"),
    "windows-path": (_meta(_bert(pretrained_dir="C:\\models\\minilm")), r"outside it"),
    "absolute-path-in-a-list": (
        _meta(lambda m: {**m, "config": {**m["config"], "extra": ["a", "/etc/passwd"]}}),
        r"config.extra\[1\] names '/etc/passwd'",
    ),
    "relative-init-from": (_meta(_bert(init_from="teacher")), r"config.init_from must be null"),
    "pretrained-dir-not-in-directory": (
        _meta(_bert(pretrained_dir="encoder2")), r"config.pretrained_dir is 'encoder2', but encoder2/config.json"
    ),
    "pretrained-dir-dot": (_meta(_bert(pretrained_dir=".")), r"config.pretrained_dir must name a sub-directory"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_refused_in_one_line(model_dir: Path, name: str) -> None:
    attack, message = ATTACKS[name]
    attack(model_dir)
    with pytest.raises(ArtifactError, match=message) as caught:
        load_model(model_dir)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(model_dir))
    with pytest.raises(ArtifactError):
        model_collate(model_dir)  # reads model.json itself when not handed it


MANIFEST_ATTACKS = [name for name, (attack, _) in ATTACKS.items() if not getattr(attack, "rehashed", False)]
METADATA_ATTACKS = [name for name in ATTACKS if name not in MANIFEST_ATTACKS]


@pytest.mark.parametrize("name", MANIFEST_ATTACKS)
def test_manifest_attack_is_refused_by_verify_manifest_and_read_metadata(model_dir: Path, name: str) -> None:
    ATTACKS[name][0](model_dir)
    with pytest.raises(ArtifactError):
        verify_manifest(model_dir)
    with pytest.raises(ArtifactError):
        read_metadata(model_dir)


@pytest.mark.parametrize("name", METADATA_ATTACKS)
def test_metadata_attack_passes_the_manifest_so_its_own_rule_refuses_it(model_dir: Path, name: str) -> None:
    ATTACKS[name][0](model_dir)
    verify_manifest(model_dir)  # re-hashed: the hashes alone would not catch it


def test_an_untouched_directory_passes_every_check(model_dir: Path) -> None:
    assert set(verify_manifest(model_dir, required=(WEIGHTS, META))) == {WEIGHTS, META}
    assert read_metadata(model_dir)["label_names"] == ["a", "b", "c"]
    assert model_collate(model_dir) is None
    load_model(model_dir)


def test_empty_sub_directories_are_ignored(model_dir: Path) -> None:
    (model_dir / "empty" / "nested").mkdir(parents=True)
    load_model(model_dir)


def test_writing_a_manifest_over_a_symlink_is_refused(model_dir: Path) -> None:
    (model_dir / "extra.txt").symlink_to(model_dir.parent / "secret.txt")
    with pytest.raises(ArtifactError, match="is a symbolic link"):
        write_manifest(model_dir)


# --- int8 directories ------------------------------------------------------------------------------------


def _onnx_linear() -> Int8Model:
    """A tiny ONNX model (one MatMul) standing in for an int8 model: the directory rules are the same."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).random((64, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "W"], ["logits"])], "linear",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return Int8Model(backend="onnxruntime", mode="dynamic", inputs=[InputSpec("pixels", (None, 64), "float32")],
                     payload=model.SerializeToString(), num_threads=1)


@pytest.fixture(scope="module")
def int8() -> Int8Model:
    return _onnx_linear()


def test_int8_round_trip_and_its_attacks(int8: Int8Model, tmp_path: Path) -> None:
    directory = save_quantized(tmp_path / "int8", int8, family="cnn", config=tiny_cnn_config(), label_names=["a"])
    loaded, meta = load_model(directory)
    x = torch.rand(2, 64)
    assert torch.equal(loaded(x), int8(x)) and meta["label_names"] == ["a"]
    (directory / "notes.txt").write_text("smuggled")
    with pytest.raises(ArtifactError, match="'notes.txt' is not"):
        load_quantized(directory)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: {**m, "inputs": None}, r"must hold 'inputs'"),
        (lambda m: {**m, "inputs": ["pixels"]}, r"but one input is 'pixels'"),
        (lambda m: {**m, "inputs": [{"name": "pixels", "shape": [None, 64], "dtype": "nonsense"}]}, r"one input is"),
        (lambda m: {**m, "inputs": [{"name": "pixels", "shape": 64, "dtype": "float32"}]}, r"one input is"),
        (lambda m: {**m, "quantization": "int8"}, r"quantization.mode"),
        (lambda m: {**m, "backend": ["onnxruntime"]}, r"names backend \['onnxruntime'\]"),
        (lambda m: {**m, "config": {"pretrained_dir": "/abs/encoder"}}, r"outside it"),
    ],
)
def test_malformed_int8_metadata_is_refused(int8: Int8Model, tmp_path: Path, edit: Callable, message: str) -> None:
    directory = save_quantized(tmp_path / "int8", int8, family="cnn", config={})
    _meta(edit)(directory)
    with pytest.raises(ArtifactError, match=message):
        load_quantized(directory)


def test_int8_bytes_that_are_no_model_are_refused(int8: Int8Model, tmp_path: Path) -> None:
    directory = save_quantized(tmp_path / "int8", int8, family="cnn", config={})
    (directory / "model.onnx").write_bytes(b"not a protobuf")
    write_manifest(directory)
    with pytest.raises(ArtifactError, match=r"model.onnx is not a loadable onnxruntime model"):
        load_quantized(directory)


def test_int8_assets_come_from_a_verified_float_directory(int8: Int8Model, model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "encoder").mkdir()
    (model_dir / "encoder" / "vocab.txt").write_text("[PAD]\n")
    write_manifest(model_dir)
    directory = save_quantized(tmp_path / "int8", int8, family="cnn", config={}, assets_from=model_dir)
    assert set(verify_manifest(directory)) == {"encoder/vocab.txt", "model.onnx", META}
    (model_dir / "encoder" / "vocab.txt").write_text("changed\n")
    with pytest.raises(ArtifactError, match="changed or corrupted"):
        save_quantized(tmp_path / "int8b", int8, family="cnn", config={}, assets_from=model_dir)
    assert not (tmp_path / "int8b").exists()


def test_int8_save_keeps_files_already_there_and_replaces_the_model(int8: Int8Model, tmp_path: Path) -> None:
    directory = tmp_path / "int8"
    (directory / "encoder").mkdir(parents=True)
    (directory / "encoder" / "vocab.txt").write_text("[PAD]\n")  # how the pipeline stages a tokenizer today
    save_quantized(directory, int8, family="cnn", config={})
    save_quantized(directory, int8, family="cnn", config={}, note="second")
    assert set(verify_manifest(directory)) == {"encoder/vocab.txt", "model.onnx", META}
    assert read_metadata(directory)["note"] == "second"


def test_int8_save_refuses_a_symlink_it_would_carry(int8: Int8Model, tmp_path: Path) -> None:
    directory = tmp_path / "int8"
    directory.mkdir()
    (directory / "vocab.txt").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="is a symbolic link"):
        save_quantized(directory, int8, family="cnn", config={})


def test_int8_config_outside_is_refused_at_save(int8: Int8Model, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"config.pretrained_dir names '/abs'"):
        save_quantized(tmp_path / "int8", int8, family="bert", config={"pretrained_dir": "/abs"})
    assert not (tmp_path / "int8").exists()


def test_a_directory_with_two_model_files_is_refused(model_dir: Path, int8: Int8Model) -> None:
    (model_dir / "model.onnx").write_bytes(int8.payload)
    write_manifest(model_dir)
    with pytest.raises(ArtifactError, match=r"holds one model file, but it has \['model.safetensors', 'model.onnx'\]"):
        load_model(model_dir)
    assert os.path.exists(model_dir / WEIGHTS)


def test_an_int8_save_that_fails_midway_leaves_the_previous_directory_intact(
    int8: Int8Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hybrid.quantize

    directory = save_quantized(tmp_path / "int8", int8, family="cnn", config={}, note="first")
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # after the model file, before model.json

    monkeypatch.setattr(hybrid.quantize, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(directory, int8, family="cnn", config={}, note="second")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["int8"]
    assert load_quantized(directory)[1]["note"] == "first"
