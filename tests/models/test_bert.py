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


def test_pad_teacher_windows_puts_each_example_back_in_its_windows() -> None:
    from hybrid.errors import DataError
    from hybrid.models.bert import SPAN_PAD_LOGIT, pad_teacher_windows

    # Example 0 has two windows of lengths 3 and 2, example 1 one window of length 4; the batch pads to 4.
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    example_index = np.array([0, 0, 1])
    first = np.arange(10, dtype=np.float32).reshape(5, 2)  # windows 3 + 2 positions, (start, end) each
    second = -np.arange(8, dtype=np.float32).reshape(4, 2)
    padded = pad_teacher_windows([first, second], window_lengths=[np.array([3, 2]), np.array([4])], attention_mask=mask,
                                 example_index=example_index)
    assert padded.shape == (3, 4, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[0, :3], first[:3])
    np.testing.assert_array_equal(padded[1, :2], first[3:])
    np.testing.assert_array_equal(padded[2], second)
    assert (padded[0, 3:] == SPAN_PAD_LOGIT).all() and (padded[1, 2:] == SPAN_PAD_LOGIT).all()
    # Flat storage (one float per position and side) reads the same.
    flat = pad_teacher_windows([first.ravel(), second.ravel()], window_lengths=[[3, 2], [4]], attention_mask=mask,
                               example_index=example_index)
    np.testing.assert_array_equal(flat, padded)

    with pytest.raises(DataError, match=r"example 0's teacher logits must cover its windows of lengths \[3, 2\], "
                                        r"but they cover windows of lengths \[3\]"):
        pad_teacher_windows([first[:3], second], window_lengths=[np.array([3]), np.array([4])], attention_mask=mask,
                            example_index=example_index)
    with pytest.raises(DataError, match=r"each of the batch's 2 examples, but got 1 logits"):
        pad_teacher_windows([first], window_lengths=[np.array([3, 2])], attention_mask=mask,
                            example_index=example_index)


def _qa_config(**overrides: object) -> object:
    return model_config("bert_qa", {"pretrained_dir": str(MODEL), "num_layers": 2, "max_length": 32,
                                    "doc_stride": 8, "dropout": 0.0, **overrides})


def _qa_rows() -> dict[str, np.ndarray]:
    long = ("The harbour museum keeps three wooden boats, a lighthouse lens and the logbooks of the ferry that "
            "crossed the bay every morning from 1890 until the bridge opened in 1961, when the service ended.")
    short = "The bakery opens at seven and sells rye bread."
    return {
        "question": np.array(["When did the bridge open?", "When does the bakery open?"], dtype=object),
        "context": np.array([long, short], dtype=object),
        "answer_start": np.array([long.index("1961"), short.index("seven")]),
        "answer_text": np.array(["1961", "seven"], dtype=object),
    }


def test_qa_teacher_outputs_are_stored_unpadded_and_collate_back_to_the_teacher_logits() -> None:
    from hybrid.models import get_family
    from hybrid.models.bert import SPAN_PAD_LOGIT, TEACHER_WINDOW_LENGTHS
    from hybrid.models.tasks import TEACHER_LOGITS

    config = _qa_config()
    teacher = create_model("bert_qa", config=config).eval()
    family, collate, rows = get_family("bert_qa"), collate_fn("bert_qa", config), _qa_rows()
    stored = family.teacher_outputs(teacher, rows, columns=family.input_columns, collate=collate)
    windows = collate(dict(rows))
    lengths = windows["attention_mask"].sum(1)
    assert (windows["example_index"] == 0).sum() >= 2  # the long context needs several windows
    for i in range(2):
        mine = lengths[torch.as_tensor(windows["example_index"] == i)]
        assert stored[TEACHER_WINDOW_LENGTHS][i].tolist() == mine.tolist()
        assert stored[TEACHER_LOGITS][i].shape == (int(mine.sum()), 2)
        assert stored[TEACHER_LOGITS][i].dtype == np.float32

    with torch.no_grad():
        expected = teacher(*(windows[c] for c in family.input_columns))
    together = collate({**rows, **stored})[TEACHER_LOGITS]
    torch.testing.assert_close(together, expected)  # the span head's padding is SPAN_PAD_LOGIT too
    # The short example alone pads to its own (shorter) window: same logits, cut to its length.
    alone = collate({k: v[1:] for k, v in {**rows, **stored}.items()})[TEACHER_LOGITS]
    n = int(lengths[-1])
    assert alone.shape == (1, n, 2)
    torch.testing.assert_close(alone[0], expected[-1, :n])
    assert (together[-1, n:] == SPAN_PAD_LOGIT).all()


def test_qa_student_keeps_every_other_teacher_layer_and_learns_from_the_span_distillation_loss(tmp_path: Path) -> None:
    from hybrid.distill import student_config
    from hybrid.models import get_family
    from hybrid.models.tasks import TEACHER_LOGITS

    config = _qa_config()
    teacher = create_model("bert_qa", config=config).eval()
    save_model(tmp_path / "t", teacher, family="bert_qa", config=config)
    meta = json.loads((tmp_path / "t" / "model.json").read_text())
    student_cfg = student_config("bert_qa", meta["config"], {}, width_multiplier=0.5, teacher_dir=tmp_path / "t")
    student = create_model("bert_qa", config=student_cfg).train()
    assert len(teacher.encoder.encoder.layer) == 2 and len(student.encoder.encoder.layer) == 1
    assert torch.equal(student.encoder.encoder.layer[0].output.dense.weight,
                       teacher.encoder.encoder.layer[1].output.dense.weight)

    family, rows = get_family("bert_qa"), _qa_rows()
    stored = family.teacher_outputs(teacher, rows, columns=family.input_columns,
                                    collate=model_collate(tmp_path / "t"))
    batch = collate_fn("bert_qa", student_cfg)({**rows, **stored})
    logits = student(*(batch[c] for c in family.input_columns))
    assert logits.shape == batch[TEACHER_LOGITS].shape
    loss = family.evaluation.distillation_loss(logits, batch[TEACHER_LOGITS], batch["label"], alpha=0.7,
                                               temperature=4.0)
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert student.head.weight.grad.abs().sum() > 0
