"""The BERT family with the real packaged all-MiniLM-L6-v2 (loaded from its local directory)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.artifacts import load_model, model_collate, save_model
from hybrid.errors import ConfigError
from hybrid.models import collate_fn, create_model, model_config
from hybrid.models.bert import student_layers
from hybrid.testing import minilm_dir
from hybrid.text import load_tokenizer, pad_batch, tokenize

MODEL = minilm_dir()
pytestmark = pytest.mark.skipif(MODEL is None, reason="all-MiniLM-L6-v2 not installed (scripts/setup.sh)")


def _config(**overrides: object) -> object:
    return model_config("bert", {"pretrained_dir": str(MODEL), **overrides})


def test_pad_batch_pads_to_the_longest_row_and_masks_the_padding() -> None:
    ids, mask = pad_batch([np.array([101, 7, 102]), np.array([101, 102])], pad_id=0)
    assert ids.tolist() == [[101, 7, 102], [101, 102, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_pad_batch_truncation_keeps_the_separator_last() -> None:
    ids, mask = pad_batch([np.array([101, 5, 6, 7, 102]), np.array([101, 9, 102])], pad_id=0, max_length=4, sep_id=102)
    assert ids.tolist() == [[101, 5, 6, 102], [101, 9, 102, 0]]
    assert mask.sum(axis=1).tolist() == [4, 3]


def test_layers_are_selected_and_lower_layers_frozen() -> None:
    model = create_model("bert", config=_config(num_layers=2, frozen_layers=1))
    layers = model.encoder.encoder.layer
    assert len(layers) == 2
    assert not any(p.requires_grad for p in model.encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert model.head.weight.requires_grad


def test_too_many_layers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"source model has 6 layers"):
        create_model("bert", config=_config(keep_layers=[1, 7]))
    with pytest.raises(ConfigError, match=r"frozen_layers must be <= the 2 kept layers"):
        create_model("bert", config=_config(num_layers=2, frozen_layers=3))


def test_missing_pretrained_dir_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.pretrained_dir.*no config.json"):
        create_model("bert", config=model_config("bert", {"pretrained_dir": str(tmp_path)}))


def test_collate_pads_dynamically_and_the_padding_does_not_change_the_logits() -> None:
    tokenizer = load_tokenizer(str(MODEL))
    texts = ["a gripping, beautifully acted film", "dull"]
    ids = tokenize(tokenizer, texts, max_length=64)
    config = _config(num_layers=2, dropout=0.0)
    model = create_model("bert", config=config).eval()
    batch = collate_fn("bert", config)({"input_ids": np.array(ids, dtype=object), "label": np.array([1, 0])})
    assert batch["input_ids"].shape == (2, len(ids[0]))  # the longest row, not max_length
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"])
        alone = model(torch.as_tensor(ids[1][None].astype(np.int64)), torch.ones(1, len(ids[1]), dtype=torch.long))
    torch.testing.assert_close(together[1:], alone, atol=1e-4, rtol=1e-4)


def test_saved_model_is_self_contained_and_reloads_identically(tmp_path: Path) -> None:
    config = _config(num_layers=3, dropout=0.0)
    model = create_model("bert", config=config).eval()
    save_model(tmp_path / "m", model, family="bert", config=config, label_names=["negative", "positive"])
    files = json.loads((tmp_path / "m" / "manifest.json").read_text())["files"]
    assert {"encoder/config.json", "encoder/tokenizer.json", "model.safetensors"} <= set(files)
    saved = json.loads((tmp_path / "m" / "model.json").read_text())["config"]
    assert saved["pretrained_dir"] == "encoder" and saved["pretrained_weights"] is False
    assert json.loads((tmp_path / "m" / "encoder" / "config.json").read_text())["num_hidden_layers"] == 3

    again, _ = load_model(tmp_path / "m")
    batch = model_collate(tmp_path / "m")({"input_ids": np.array([np.array([101, 2307, 3185, 102])], dtype=object)})
    with torch.no_grad():
        torch.testing.assert_close(model(batch["input_ids"], batch["attention_mask"]),
                                   again(batch["input_ids"], batch["attention_mask"]))


def test_student_starts_from_every_other_teacher_layer(tmp_path: Path) -> None:
    assert student_layers(MODEL, 0.5) == [1, 3, 5]
    teacher = create_model("bert", config=_config()).eval()
    save_model(tmp_path / "t", teacher, family="bert", config=_config())
    from hybrid.distill import student_config

    cfg = student_config("bert", _config().__dict__ | {"keep_layers": []}, {}, width_multiplier=0.5,
                         teacher_dir=tmp_path / "t")
    student = create_model("bert", config=cfg)
    assert len(student.encoder.encoder.layer) == 3
    for s_layer, t_index in zip(student.encoder.encoder.layer, [1, 3, 5]):
        t_layer = teacher.encoder.encoder.layer[t_index]
        assert torch.equal(s_layer.output.dense.weight, t_layer.output.dense.weight)
    assert torch.equal(student.head.weight, teacher.head.weight)


def test_doc_stride_is_checked_for_span_models_only() -> None:
    from hybrid.config import config_from_dict

    config_from_dict({"model": {"name": "bert", "pretrained_dir": str(MODEL), "max_length": 32, "doc_stride": 32}})
    with pytest.raises(ConfigError, match=r"model.doc_stride must be < model.max_length=32 for bert_qa, but got 32"):
        config_from_dict({"model": {"name": "bert_qa", "pretrained_dir": str(MODEL), "max_length": 32,
                                    "doc_stride": 32}})
