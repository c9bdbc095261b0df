"""Scoring predictors: what a model family declares so that any Spark scorer can run its saved models.

A scorer (:mod:`hybrid.score`) asks a saved model's family for its :class:`Predictor` and knows nothing
else about the model: the columns a row to score holds and the kind of value in each (which decides the
bad-row rules Spark checks before any row reaches Python), the columns it adds, the rules Python may still
flag (a question that leaves no room for its context), how its predictions compare with a gold column, and
the function that turns a batch of valid rows into those columns. The maths here is pure numpy and torch
(no pyspark: only the edges of the package import it), so it is also what an in-process caller runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

PREDICTION, PREDICTION_LABEL, PROBABILITY, ERROR = "prediction", "prediction_label", "probability", "error"
"""A classifier's outputs, and the row error every scorer adds."""
ANSWER, ANSWER_START, SCORE = "answer", "answer_start", "score"
"""A span model's outputs: the answer text, its first character's offset in the context, start + end logit."""
QUESTION, CONTEXT, ANSWERS = "question", "context", "answers"
"""A span model's input columns, and the gold column (``list<string>``) its exact match and F1 read."""

PIXEL_REASONS = ("pixels_null", "pixel_count", "pixel_null", "pixel_not_finite")
"""The rules of :data:`hybrid.ingest.REASONS` that concern the pixels alone, in the order checked."""
QUESTION_TOO_LONG = "question_too_long"
"""A span model's rule checked in Python: the question leaves a window no more than ``doc_stride`` context tokens."""
NO_SPAN = "context_no_span"
"""A span model's rule checked in Python: no window holds a context token (a context of characters the
tokenizer drops, such as zero-width spaces), so no span can be decoded."""

InputKind = Literal["pixels", "text"]
OutputType = Literal["int", "double", "string", "floats"]
RowPredict = Callable[[Mapping[str, np.ndarray], int], dict[str, Any]]
"""``(valid rows by input name, batch size) -> outputs by name``; see :attr:`Predictor.load`."""


@dataclass(frozen=True)
class ScoreInput:
    """One column a row to score holds."""

    name: str
    """Its default column name (a caller may map it to another), and the prefix of its text rules."""
    kind: InputKind
    """``pixels``: an array of numbers, checked by :data:`PIXEL_REASONS`; ``text``: a string, checked by
    ``<name>_null`` then ``<name>_empty`` (nothing but white space, Unicode spaces too)."""
    length: int | None = None
    """``pixels``: values per row."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """The rules a value of this column is checked against in Spark, in order."""
        return PIXEL_REASONS if self.kind == "pixels" else (f"{self.name}_null", f"{self.name}_empty")


@dataclass(frozen=True)
class ScoreOutput:
    """One column a scorer adds (null for a row that broke a rule)."""

    name: str
    dtype: OutputType
    """``int`` (32-bit), ``double``, ``string`` or ``floats`` (an array of float32, never holding a null)."""


@dataclass(frozen=True)
class RowMetrics:
    """How scored rows are compared with a gold column, when the scored table has one."""

    reference: str
    """The gold column (``label``, ``answers``); a table without it gets no metric."""
    prediction: str
    """The output compared with it."""
    names: tuple[str, ...]
    """The metrics, each a mean over the scored rows whose reference is not null."""
    score: Callable[[Sequence[Any], Sequence[Any]], dict[str, np.ndarray]] | None = None
    """``(predictions, references) -> {name: per-row value}``, run in Spark's Python workers; ``None``: the one
    metric is whether the prediction equals the (numeric) reference cast to an integer, computed in the JVM."""


@dataclass(frozen=True)
class Predictor:
    """What scoring a saved model takes (see the module docstring); built by ``ModelFamily.predictor``."""

    inputs: tuple[ScoreInput, ...]
    """Columns fed to :attr:`load`'s function, in this order."""
    outputs: tuple[ScoreOutput, ...]
    """Columns added, in this order (the row error follows them)."""
    load: Callable[[Any], RowPredict]
    """Given the loaded model (a float ``nn.Module`` or an int8 model), the function that predicts the valid
    rows of a batch: ``(inputs by ScoreInput.name, each an array of one entry per row; batch size) ->
    {output name: one entry per row}``, plus optionally ``error``: per row ``None`` or one of
    :attr:`late_reasons` (that row's outputs are then ignored)."""
    late_reasons: tuple[str, ...] = ()
    """Rules the predict function itself flags, after the inputs' rules."""
    metrics: RowMetrics | None = None
    """How predictions compare with a gold column (``None``: never)."""
    worker_modules: tuple[str, ...] = ()
    """Modules a Spark Python worker must import besides the scorer's own (a tokenizer's ``transformers``)."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """Every rule a row can be flagged under: the inputs' (in input order), then :attr:`late_reasons`."""
        return tuple(r for spec in self.inputs for r in spec.reasons) + self.late_reasons


def _artifact_error(message: str) -> Exception:
    from hybrid.artifacts import ArtifactError  # lazily: artifacts loads models through the registry

    return ArtifactError(message)


# --------------------------------------------------------------------------------------------------
# Classifiers (the cnn and bert families): prediction, its label name, all class probabilities.

CLASS_OUTPUTS = (ScoreOutput(PREDICTION, "int"), ScoreOutput(PREDICTION_LABEL, "string"),
                 ScoreOutput(PROBABILITY, "floats"))
ACCURACY = RowMetrics(reference="label", prediction=PREDICTION, names=("accuracy",))


def normalize_pixels(pixels: np.ndarray, *, mean: float, std: float) -> np.ndarray:
    """Standardise raw pixels exactly as :func:`hybrid.ingest.normalize` did for training.

    Spark computes ``CAST((CAST(x AS DOUBLE) - mean) / std AS FLOAT)``; the same float64 operations
    followed by a round-to-nearest cast give bit-identical float32 values.

    Args:
        pixels: ``(rows, num_pixels)`` of any real dtype.
        mean: The training split's pixel mean (``model.json``'s ``normalizer.mean``).
        std: The training split's pixel standard deviation.

    Returns:
        A new C-contiguous float32 array of the same shape (writable, safe for ``torch.from_numpy``).
    """
    return ((pixels.astype(np.float64) - mean) / std).astype(np.float32)


def predict_proba(
    model: Any, pixels: np.ndarray, *, mean: float, std: float, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise raw pixels and run ``model`` on them ``batch_size`` rows at a time.

    Args:
        model: An ``nn.Module`` in eval mode mapping ``(batch, num_pixels)`` float32 to logits.
        pixels: ``(rows, num_pixels)`` raw pixels.
        mean: See :func:`normalize_pixels`.
        std: See :func:`normalize_pixels`.
        batch_size: Rows per forward pass.

    Returns:
        ``(prediction, probability)``: int32 ``(rows,)`` arg-max of the logits and float32
        ``(rows, num_classes)`` softmax.
    """
    import torch

    x = normalize_pixels(pixels, mean=mean, std=std)
    predictions, probabilities = [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start : start + batch_size]))  # (batch, num_classes)
            predictions.append(logits.argmax(dim=1).to(torch.int32).numpy())
            probabilities.append(torch.softmax(logits.float(), dim=1).numpy())
    if not predictions:
        return np.zeros(0, np.int32), np.zeros((0, 0), np.float32)
    return np.concatenate(predictions), np.concatenate(probabilities)


def predict_text_proba(
    model: Any, collate: Callable[[dict[str, Any]], dict[str, Any]], tokenizer: Any, texts: list[str], *,
    input_columns: tuple[str, ...], max_length: int, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``texts`` and run ``model`` on them ``batch_size`` rows at a time.

    Rows are ordered by token count before batching (and put back afterwards), so each padded
    batch holds rows of similar length: padding is computed for nothing.

    Returns:
        ``(prediction, probability)`` as in :func:`predict_proba`.
    """
    import torch

    from hybrid.text import INPUT_IDS, tokenize

    ids = tokenize(tokenizer, texts, max_length=max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    predictions = np.zeros(len(ids), np.int32)
    probabilities: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            batch = collate({INPUT_IDS: np.array([ids[i] for i in rows] + [None], dtype=object)[:-1]})
            logits = model(*(batch[c] for c in input_columns)).float()  # (batch, num_classes)
            proba = torch.softmax(logits, dim=1).numpy()
            if probabilities is None:
                probabilities = np.zeros((len(ids), proba.shape[1]), np.float32)
            predictions[rows] = logits.argmax(dim=1).numpy()
            probabilities[rows] = proba
    return predictions, probabilities if probabilities is not None else np.zeros((0, 0), np.float32)


def label_names(meta: Mapping[str, Any], directory: Path) -> tuple[str, ...]:
    """A classifier's class names by index from ``model.json`` (``"0"``, ``"1"``... when it has none).

    Raises:
        ArtifactError: If it has neither names nor ``config.num_classes``, or they disagree.
    """
    num_classes = (meta.get("config") or {}).get("num_classes")
    names = tuple(str(n) for n in meta.get("label_names") or ())
    if not names:
        if num_classes is None:
            raise _artifact_error(f"{directory}: model.json has neither 'label_names' nor config.num_classes")
        return tuple(str(i) for i in range(int(num_classes)))
    if num_classes is not None and len(names) != int(num_classes):
        raise _artifact_error(
            f"{directory}: model.json lists {len(names)} label_names but config.num_classes is {num_classes}"
        )
    return names


def _normalizer(meta: Mapping[str, Any], directory: Path) -> dict[str, float]:
    norm = meta.get("normalizer")
    try:
        mean, std = float(norm["mean"]), float(norm["std"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise _artifact_error(
            f"{directory}: model.json must hold normalizer {{'mean': float, 'std': float}} (the training "
            f"preprocessing), but has {norm!r}; save the model with normalizer=IngestResult.normalizer.to_dict()"
        ) from None
    if not std > 0 or not np.isfinite(mean):
        raise _artifact_error(f"{directory}: normalizer must have a finite mean and std > 0, but got {norm!r}")
    return {"mean": mean, "std": std}


def _classified(names: tuple[str, ...], prediction: np.ndarray, probability: np.ndarray) -> dict[str, Any]:
    return {PREDICTION: prediction, PREDICTION_LABEL: np.asarray(names, dtype=object)[prediction],
            PROBABILITY: list(probability)}


def image_predictor(meta: Mapping[str, Any], directory: Path) -> Predictor:
    """The ``cnn`` family's predictor: raw pixels (column ``pixels``), standardised as ingest did in training.

    Raises:
        ArtifactError: If ``model.json`` lacks the image size, the normaliser or the class names.
    """
    config = meta.get("config") or {}
    if "image_size" not in config:
        raise _artifact_error(
            f"{directory}: model.json's config has no 'image_size'; an image model's scorer needs it "
            f"(family {meta.get('family')!r})"
        )
    num_pixels = int(config.get("in_channels", 1)) * int(config["image_size"]) ** 2
    norm, names = _normalizer(meta, directory), label_names(meta, directory)

    def load(model: Any) -> RowPredict:
        def predict(rows: Mapping[str, np.ndarray], batch_size: int) -> dict[str, Any]:
            pred, proba = predict_proba(model, np.stack(rows["pixels"]), mean=norm["mean"], std=norm["std"],
                                        batch_size=batch_size)
            return _classified(names, pred, proba)

        return predict

    return Predictor(inputs=(ScoreInput("pixels", "pixels", length=num_pixels),), outputs=CLASS_OUTPUTS, load=load,
                     metrics=ACCURACY)


def text_predictor(meta: Mapping[str, Any], directory: Path) -> Predictor:
    """The ``bert`` family's predictor: one string column ``text``, tokenised in the worker by the tokenizer
    shipped in the model directory.

    Raises:
        ArtifactError: If ``model.json`` lacks the class names.
    """
    names = label_names(meta, directory)
    max_length = int(meta.get("max_seq_length") or (meta.get("config") or {}).get("max_length", 128))

    def load(model: Any) -> RowPredict:
        from hybrid.artifacts import model_collate
        from hybrid.models.bert import ENCODER_DIR
        from hybrid.models.registry import get_family
        from hybrid.text import load_tokenizer

        collate = model_collate(directory, dict(meta))
        columns = get_family(meta["family"]).input_columns
        tokenizer = load_tokenizer(str(directory / ENCODER_DIR))

        def predict(rows: Mapping[str, np.ndarray], batch_size: int) -> dict[str, Any]:
            pred, proba = predict_text_proba(model, collate, tokenizer, [str(t) for t in rows["text"]],
                                             input_columns=columns, max_length=max_length, batch_size=batch_size)
            return _classified(names, pred, proba)

        return predict

    return Predictor(inputs=(ScoreInput("text", "text"),), outputs=CLASS_OUTPUTS, load=load, metrics=ACCURACY,
                     worker_modules=("transformers",))


# --------------------------------------------------------------------------------------------------
# Span models (the bert_qa family): the best answer span of each question in its (windowed) context.

SPAN_OUTPUTS = (ScoreOutput(ANSWER, "string"), ScoreOutput(ANSWER_START, "int"), ScoreOutput(SCORE, "double"))


def predict_spans(
    model: Any, tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], *,
    input_columns: Sequence[str], max_length: int, doc_stride: int, max_answer_length: int, batch_size: int,
    n_best: int = 20,
) -> list[Any]:
    """The best span of each question in its context, decoded from all windows of the context.

    Windows are made by :func:`hybrid.qa.featurize` and decoded by :func:`hybrid.qa.postprocess` (n-best
    start/end pairs of every window, the same character span seen in two windows keeping its higher score),
    exactly as in training's evaluation. Windows are ordered by length and run ``batch_size`` at a time,
    each batch padded to its own longest window.

    Args:
        model: A span model (float or int8) mapping ``input_columns`` to ``(windows, L, 2)`` logits.
        tokenizer: The model's fast tokenizer.
        questions: One question per row (not blank).
        contexts: One context per row (not blank).
        input_columns: The family's ``input_columns``, in ``forward``'s order.
        max_length: Tokens per window (the model's ``max_length``).
        doc_stride: Context tokens shared by consecutive windows (the model's ``doc_stride``).
        max_answer_length: Longest answer in tokens.
        batch_size: Windows per forward pass.
        n_best: Candidates kept per window and per example.

    Returns:
        Per row a :class:`hybrid.qa.Prediction`, or ``None`` for a question that leaves a window no more
        than ``doc_stride`` context tokens (:data:`QUESTION_TOO_LONG`).
    """
    import torch

    from hybrid.models.bert import ATTENTION_MASK, SPAN_PAD_LOGIT
    from hybrid.qa import context_room, featurize, postprocess

    questions, contexts = [str(q) for q in questions], [str(c) for c in contexts]
    out: list[Any] = [None] * len(questions)
    kept = np.flatnonzero(context_room(tokenizer, questions, max_length=max_length) > doc_stride)
    if not len(kept):
        return out
    kept_contexts = [contexts[i] for i in kept]
    feats = featurize(tokenizer, {"question": [questions[i] for i in kept], "context": kept_contexts},
                      max_length=max_length, doc_stride=doc_stride, with_labels=False)
    lengths = feats[ATTENTION_MASK].sum(axis=1)  # (windows,)
    order = np.argsort(lengths, kind="stable")
    logits = np.full((*feats[ATTENTION_MASK].shape, 2), SPAN_PAD_LOGIT, np.float32)  # (windows, L, 2)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            batch = [torch.from_numpy(feats[c][rows, :width]) for c in input_columns]
            logits[rows, :width] = model(*batch).float().numpy()
    decoded = postprocess(logits[..., 0], logits[..., 1], feats["offsets"], feats["example_index"], kept_contexts,
                          n_best=n_best, max_answer_length=max_answer_length)
    for i, prediction in zip(kept, decoded):
        out[i] = prediction
    return out


def span_row_scores(predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per row, SQuAD exact match and F1 of the predicted answer, each the max over the row's gold answers
    (:func:`hybrid.qa.squad_scores` is their mean; no gold answers: scored against ``""``)."""
    from hybrid.qa import exact_match, f1

    em, f = np.zeros(len(predictions)), np.zeros(len(predictions))
    for i, (prediction, golds) in enumerate(zip(predictions, references)):
        golds = [str(g) for g in golds] or [""]
        em[i] = max(exact_match(str(prediction), g) for g in golds)
        f[i] = max(f1(str(prediction), g) for g in golds)
    return {"exact_match": em, "f1": f}


SPAN_METRICS = RowMetrics(reference=ANSWERS, prediction=ANSWER, names=("exact_match", "f1"), score=span_row_scores)


def span_predictor(meta: Mapping[str, Any], directory: Path) -> Predictor:
    """The ``bert_qa`` family's predictor: columns ``question`` and ``context`` in, the best span out
    (``answer``, ``answer_start``, ``score``), long contexts windowed by the model's ``max_length`` and
    ``doc_stride``; a table with ``answers`` (gold texts) gets exact match and F1."""
    config = meta.get("config") or {}
    max_length, doc_stride = int(config.get("max_length", 128)), int(config.get("doc_stride", 32))
    longest = int(config.get("max_answer_length", 30))

    def load(model: Any) -> RowPredict:
        from hybrid.models.bert import ENCODER_DIR
        from hybrid.models.registry import get_family
        from hybrid.text import load_tokenizer

        tokenizer = load_tokenizer(str(directory / ENCODER_DIR))
        columns = get_family(meta["family"]).input_columns

        def predict(rows: Mapping[str, np.ndarray], batch_size: int) -> dict[str, Any]:
            found = predict_spans(model, tokenizer, rows[QUESTION], rows[CONTEXT], input_columns=columns,
                                  max_length=max_length, doc_stride=doc_stride, max_answer_length=longest,
                                  batch_size=batch_size)
            scored = [p is not None and np.isfinite(p.score) for p in found]
            return {
                ANSWER: [p.text if ok else None for p, ok in zip(found, scored)],
                ANSWER_START: [p.start if ok else 0 for p, ok in zip(found, scored)],
                SCORE: [p.score if ok else 0.0 for p, ok in zip(found, scored)],
                ERROR: [None if ok else QUESTION_TOO_LONG if p is None else NO_SPAN for p, ok in zip(found, scored)],
            }

        return predict

    return Predictor(inputs=(ScoreInput(QUESTION, "text"), ScoreInput(CONTEXT, "text")), outputs=SPAN_OUTPUTS,
                     load=load, late_reasons=(QUESTION_TOO_LONG, NO_SPAN), metrics=SPAN_METRICS,
                     worker_modules=("transformers",))
