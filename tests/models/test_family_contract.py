"""The contract every registered model family must keep (timm's ``test_models`` pattern).

Each family in ``list_models()`` builds from a tiny config, runs forward and backward on a batch made by
its own collate, evaluates that batch into exactly the metrics ``tune.metric`` may name, round-trips
through ``save_model``/``load_model``, and makes a smaller student from a saved teacher. A last test checks
that no module outside ``hybrid/models`` guesses a family from config keys or task names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hybrid
from hybrid.artifacts import load_model, model_collate, read_metadata, save_model
from hybrid.models import batch_inputs, collate_fn, create_model, get_family, list_models, model_config
from hybrid.testing import minilm_dir, tiny_cnn_config, toy_images

MINILM = minilm_dir()


def _cnn(layers: int) -> Any:
    return tiny_cnn_config(num_blocks=layers, head_width=8)


def _bert(layers: int) -> Any:
    return model_config("bert", {"pretrained_dir": str(MINILM), "num_layers": layers, "max_length": 16,
                                 "num_classes": 3})


def _bert_qa(layers: int) -> Any:
    return model_config("bert_qa", {"pretrained_dir": str(MINILM), "num_layers": layers, "max_length": 32,
                                    "doc_stride": 8})


def _image_batch() -> dict[str, Any]:
    images, labels = toy_images(4, image_size=8, num_classes=3)
    return {"pixels": images, "label": labels}


def _text_batch() -> dict[str, Any]:
    ids = np.empty(3, dtype=object)  # ragged token ids, as a Ray Data batch holds them
    ids[:] = [np.array([101, 2307, 3185, 102]), np.array([101, 2919, 102]), np.array([101, 7592, 2088, 999, 102])]
    return {"input_ids": ids, "label": np.array([0, 1, 2])}


def _qa_batch() -> dict[str, Any]:
    context = "The bakery on the corner opens at seven and sells rye bread, cakes and coffee to the whole street."
    return {
        "question": np.array(["When does the bakery open?", "What bread is sold?"], dtype=object),
        "context": np.array([context, context], dtype=object),
        "answer_start": np.array([context.index("seven"), context.index("rye")]),
        "answer_text": np.array(["seven", "rye bread"], dtype=object),
    }


# name -> (tiny config with this many encoder layers / conv blocks, a raw batch, needs MiniLM)
TINY: dict[str, tuple[Any, Any, bool]] = {
    "cnn": (_cnn, _image_batch, False),
    "bert": (_bert, _text_batch, True),
    "bert_qa": (_bert_qa, _qa_batch, True),
}


def _tiny(name: str, layers: int = 1) -> tuple[Any, dict[str, Any]]:
    if name not in TINY:
        pytest.fail(f"family {name!r} has no tiny config in TINY: add one so that it is held to the contract")
    make_config, make_batch, needs_minilm = TINY[name]
    if needs_minilm and MINILM is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (scripts/setup.sh)")
    return make_config(layers), make_batch()


def _collated(name: str, config: Any, raw: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """The forward inputs and the whole collated batch (labels, and what span decoding needs)."""
    collate = collate_fn(name, config)
    batch = collate(dict(raw)) if collate is not None else {k: torch.as_tensor(v) for k, v in raw.items()}
    return batch_inputs(raw, get_family(name).input_columns, collate), batch


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``teacher(name) -> (model directory, config)``: a tiny two-layer model of the family, saved once."""
    root = tmp_path_factory.mktemp("teachers")
    saved: dict[str, tuple[Path, Any]] = {}

    def get(name: str) -> tuple[Path, Any]:
        if name not in saved:
            config, _ = _tiny(name, layers=2)
            torch.manual_seed(0)
            model = create_model(name, config=config).eval()
            saved[name] = (save_model(root / name, model, family=name, config=config), config)
        return saved[name]

    return get


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward_on_the_family_collate(name: str) -> None:
    config, raw = _tiny(name)
    torch.manual_seed(0)
    model = create_model(name, config=config).train()
    inputs, batch = _collated(name, config, raw)
    logits = model(*inputs)
    # The one training loop's loss for every family: classes (batch, C) vs (batch,), spans (windows, L, 2)
    # vs (windows, 2).
    loss = F.cross_entropy(logits.float(), batch["label"].long())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_evaluation_reports_the_metrics_tune_may_name(name: str) -> None:
    family = get_family(name)
    config, raw = _tiny(name)
    model = create_model(name, config=config).eval()
    _, batch = _collated(name, config, raw)
    num_classes = getattr(config, "num_classes", 2)
    sums = family.evaluation.evaluate(model, [batch], columns=family.input_columns, device=torch.device("cpu"),
                                      num_classes=num_classes)
    result = family.evaluation.summarize(np.asarray(sums, dtype=np.float64), num_classes)
    assert {f"val_{k}" for k in result.scores} | {"val_loss"} == set(family.metrics)
    assert result.rows == len(raw[next(iter(raw))])
    assert np.isfinite(result.loss)


@pytest.mark.parametrize("name", list_models())
def test_save_and_load_round_trip(name: str, teacher: Any) -> None:
    directory, config = teacher(name)
    torch.manual_seed(0)
    original = create_model(name, config=config).eval()
    loaded, meta = load_model(directory)
    assert meta["family"] == name
    inputs, _ = _collated(name, config, TINY[name][1]())
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), original(*inputs))


@pytest.mark.parametrize("name", list_models())
def test_make_student_builds_a_smaller_model(name: str, teacher: Any) -> None:
    family = get_family(name)
    if family.make_student is None:
        assert "distill" not in family.stages
        return
    directory, config = teacher(name)
    big, _ = load_model(directory)
    params = family.make_student(read_metadata(directory)["config"], width_multiplier=0.5, teacher_dir=directory)
    student = create_model(name, config=model_config(name, params)).eval()
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in big.parameters())
    inputs, _ = _collated(name, config, TINY[name][1]())
    with torch.no_grad():
        assert student(*inputs).shape == big(*inputs).shape


@pytest.mark.parametrize("name", list_models())
def test_a_student_learns_from_its_teacher_outputs_through_the_family_collate(name: str, teacher: Any) -> None:
    """The distill stage's path without Ray: the teacher's outputs stored per row as the family says, the
    family's collate shaping them like the student's logits, and the task's distillation loss training it."""
    family = get_family(name)
    if "distill" not in family.stages:
        return
    directory, config = teacher(name)
    big, meta = load_model(directory)
    raw = TINY[name][1]()
    stored = family.teacher_outputs(big.eval(), raw, columns=family.input_columns,
                                    collate=model_collate(directory, meta))
    assert all(len(column) == len(raw[next(iter(raw))]) for column in stored.values())  # one entry per row
    params = family.make_student(meta["config"], width_multiplier=0.5, teacher_dir=directory)
    student_cfg = model_config(name, params)
    torch.manual_seed(0)
    student = create_model(name, config=student_cfg).train()
    inputs, batch = _collated(name, student_cfg, {**raw, **stored})
    logits = student(*inputs)
    assert batch["teacher_logits"].shape == logits.shape
    loss = family.evaluation.distillation_loss(logits, batch["teacher_logits"], batch["label"], alpha=0.5,
                                               temperature=2.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# name -> (rows to score, as a Spark table would hand them over, by the predictor's input names; the metadata the
# pipeline saves with such a model besides its config)
SCORE_ROWS: dict[str, tuple[Any, dict[str, Any]]] = {
    "cnn": (lambda: {"pixels": np.array(list(toy_images(3, image_size=8, num_classes=3)[0]) + [None], dtype=object)[:-1]},
            {"normalizer": {"mean": 0.5, "std": 0.25}}),
    "bert": (lambda: {"text": np.array(["a fine film", "dull", "the plot never moves"], dtype=object)}, {}),
    "bert_qa": (lambda: {"question": np.array(["When does it open?", "What bread?"], dtype=object),
                         "context": np.array(["It opens at seven.", "They sell rye bread, cakes and coffee."],
                                             dtype=object)}, {}),
}


@pytest.mark.parametrize("name", list_models())
def test_the_scoring_predictor_declares_its_columns_and_predicts_one_entry_per_row(name: str, teacher: Any) -> None:
    """What a Spark scorer asks of a family: input and output columns that do not collide, rules named once,
    and a predict function giving every output for every valid row (the scorer knows nothing else)."""
    from hybrid.artifacts import update_metadata
    from hybrid.models.predict import ERROR

    family = get_family(name)
    if family.predictor is None:
        assert "score" not in family.stages
        return
    if name not in SCORE_ROWS:
        pytest.fail(f"family {name!r} has a predictor but no rows in SCORE_ROWS: add some")
    make_rows, extra = SCORE_ROWS[name]
    directory, _ = teacher(name)
    scored_dir = directory.parent / f"{name}-scored"
    if not scored_dir.exists():
        import shutil

        shutil.copytree(directory, scored_dir)
        if extra:
            update_metadata(scored_dir, **extra)
    model, meta = load_model(scored_dir)
    predictor = family.predictor(meta, scored_dir)
    inputs = [spec.name for spec in predictor.inputs]
    outputs = [out.name for out in predictor.outputs]
    assert len(set(inputs + outputs + [ERROR])) == len(inputs) + len(outputs) + 1
    assert len(set(predictor.reasons)) == len(predictor.reasons)
    assert {out.dtype for out in predictor.outputs} <= {"int", "double", "string", "floats"}
    rows = make_rows()
    assert set(rows) == set(inputs)
    found = predictor.load(model)(rows, 2)
    n = len(rows[inputs[0]])
    for column in outputs:
        assert len(found[column]) == n, column
    assert all(reason is None or reason in predictor.late_reasons for reason in found.get(ERROR) or [None] * n)


FAMILY_GUESSES = (
    re.compile(r"""["']pretrained_dir["']\s+(not\s+)?in\b"""),
    re.compile(r"""[!=]=\s*["']spans["']|["']spans["']\s*[!=]="""),
)


def test_no_module_outside_models_guesses_the_family() -> None:
    package = Path(hybrid.__file__).parent
    found = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if package / "models" not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(pattern.search(line) for pattern in FAMILY_GUESSES)
    ]
    assert not found, "family behaviour guessed outside hybrid/models (ask get_family(name) instead):\n" + "\n".join(found)
