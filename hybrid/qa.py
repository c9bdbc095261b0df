"""Extractive question answering: SQuAD reading, sliding-window features, span decoding and EM/F1.

Pure Python and numpy: no Spark, no Ray, no torch. The tokenizer is passed in (a Hugging Face *fast*
tokenizer, for its offset mappings), so this module never imports transformers.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hybrid.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CLS_INDEX = 0
"""Token index that labels "no answer in this window"; BERT-style tokenizers put [CLS] first."""

REJECT_REASONS = (
    "missing_id",
    "duplicate_id",
    "empty_question",
    "empty_context",
    "malformed_is_impossible",
    "malformed_answer",
    "no_answer",
    "empty_answer",
    "answer_offset_mismatch",
)
"""Every ``reason`` a rejected row can carry."""


@dataclass(frozen=True)
class Answer:
    """One gold answer span."""

    text: str
    """The answer exactly as it appears in the context."""
    start: int
    """Character offset of the answer's first character in the context."""


@dataclass(frozen=True)
class QAExample:
    """One question about one context; validated on construction (see :data:`REJECT_REASONS`)."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...]
    """Gold answers; empty exactly when ``is_impossible``."""
    is_impossible: bool = False
    """SQuAD v2: the context does not answer the question."""
    group: str = ""
    """What a train/val/test split keeps together: the SQuAD article's title (questions of one article
    share its paragraphs and topic), else the context; see :func:`split_group`."""

    def __post_init__(self) -> None:
        problem = _problem(self.question, self.context, self.answers, self.is_impossible)
        if problem is not None:
            raise DataError(f"QAExample {self.id!r}: {problem[0]}: {problem[1]}")


@dataclass(frozen=True)
class Prediction:
    """The best span for one example; ``text == context[start:end]`` always holds."""

    text: str
    """The answer text, or ``""`` for the null (no-answer) prediction."""
    start: int
    """Character offset where the answer starts (0 for the null prediction)."""
    end: int
    """Character offset one past the answer's end (0 for the null prediction)."""
    score: float
    """Start logit plus end logit of the chosen span (of [CLS] for the null prediction)."""
    n_best: tuple[tuple[str, int, int, float], ...] = ()
    """Up to ``n_best`` candidates as ``(text, start, end, score)``, best first; the first is this one."""


# ----------------------------------------------------------------------------------------- reading


def read_squad_json(path: str | Path, *, max_rows: int | None = None) -> tuple[list[QAExample], list[dict[str, Any]]]:
    """Read a SQuAD v1.1 or v2.0 JSON file, keeping bad questions aside rather than dropping them.

    Args:
        path: A file shaped ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
            "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}``.
        max_rows: Read only the first this many questions (valid or not), in file order.

    Returns:
        ``(examples, rejected)``: valid examples in file order, and one ``{"id", "reason", "value"}``
        dict (all strings) per rejected question, ``reason`` from :data:`REJECT_REASONS`. A question
        with any bad answer is rejected whole. Impossible (v2) questions keep no answers; their
        ``plausible_answers`` are ignored.

    Raises:
        DataError: The file is missing or not JSON, or a structural key (``data``, ``paragraphs``,
            ``context``, ``qas``) is missing or has the wrong type; the message names the key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file; pass the path of a SQuAD-format JSON file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 JSON ({exc})") from exc
    builder = _Builder()
    for a, article in enumerate(_field(raw, "data", list, path, "top level")):
        title = article.get("title") if isinstance(article, dict) else None
        title = title if isinstance(title, str) and title.strip() else f"article {a}"
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, path, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, path, where)):
                if max_rows is not None and len(builder.good) + len(builder.rejected) >= max_rows:
                    return builder.good, builder.rejected
                if not isinstance(qa, dict):
                    raise DataError(f"{path}: {where}.qas[{q}] must be an object, got {type(qa).__name__}")
                impossible = qa.get("is_impossible", False)
                builder.add(qa.get("id"), qa.get("question"), context, qa.get("answers"), impossible,
                            where=f"{where}.qas[{q}]", group=title)
    return builder.good, builder.rejected


def examples_from_columns(
    ids: Sequence[Any],
    questions: Sequence[Any],
    contexts: Sequence[Any],
    answers: Sequence[Any],
    *,
    allow_impossible: bool = False,
    titles: Sequence[Any] | None = None,
) -> tuple[list[QAExample], list[dict[str, Any]]]:
    """Build examples from table columns under the same rules as :func:`read_squad_json`.

    Args:
        ids: One id per row.
        questions: One question per row.
        contexts: One context per row.
        answers: Per row, a list of ``{"text", "answer_start"}`` dicts or one Hugging Face style
            ``{"text": [...], "answer_start": [...]}`` dict, or either as JSON text (a CSV cell); text that
            is not JSON is rejected as ``"malformed_answer"``.
        allow_impossible: When True a row with no answers is an impossible (SQuAD v2) question;
            when False it is rejected as ``"no_answer"``.
        titles: Optional article title per row, what splits keep together (else the context).

    Returns:
        ``(examples, rejected)`` as in :func:`read_squad_json`; a row without an id is reported
        with id ``"row <i>"``.

    Raises:
        DataError: The columns have different lengths.
    """
    lengths = {"ids": len(ids), "questions": len(questions), "contexts": len(contexts), "answers": len(answers)}
    if len(set(lengths.values())) != 1:
        raise DataError(f"examples_from_columns: all columns must have the same length, got {lengths}")
    builder = _Builder()
    titles = [None] * len(ids) if titles is None else titles
    for i, (id_, question, context, raw, title) in enumerate(zip(ids, questions, contexts, answers, titles)):
        impossible = bool(allow_impossible) and _is_empty_answers(raw)
        builder.add(id_, question, context, raw, impossible, where=f"row {i}", group=title)
    return builder.good, builder.rejected


def split_group(group: Any, context: str) -> str:
    """The key a split keeps together: ``group`` (an article title) if it is a non-blank string, else the context.

    Never by question: questions of one paragraph share its text, so a question-level split would put
    the answer's sentence in both train and test.
    """
    return group.strip() if isinstance(group, str) and group.strip() else context


class _Builder:
    """Collects valid examples and rejected rows; owns id checks so both readers share them."""

    def __init__(self) -> None:
        self.good: list[QAExample] = []
        self.rejected: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def add(self, id_: Any, question: Any, context: Any, raw: Any, impossible: Any, *, where: str,
            group: Any = None) -> None:
        if id_ is None or (isinstance(id_, str) and not id_.strip()):
            return self._reject(where, "missing_id", repr(id_))
        id_ = str(id_)
        if id_ in self._seen:
            return self._reject(id_, "duplicate_id", f"{id_!r} already used ({where})")
        self._seen.add(id_)
        if not isinstance(impossible, (bool, np.bool_)):
            return self._reject(id_, "malformed_is_impossible", f"must be true or false, got {impossible!r}")
        parsed = _parse_answers(raw)
        if isinstance(parsed, str):
            return self._reject(id_, "malformed_answer", parsed)
        answers = () if impossible else parsed
        problem = _problem(question, context, answers, bool(impossible))
        if problem is not None:
            return self._reject(id_, *problem)
        self.good.append(QAExample(id_, str(question), str(context), answers, bool(impossible),
                                   split_group(group, str(context))))
        return None

    def _reject(self, id_: str, reason: str, value: str) -> None:
        self.rejected.append({"id": id_, "reason": reason, "value": value})


def _field(obj: Any, key: str, kind: type, path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where} must be a JSON object holding key '{key}', got {type(obj).__name__}")
    if key not in obj:
        hint = did_you_mean(key, obj)
        raise DataError(f"{path}: {where} has no key '{key}'{hint}; is this SQuAD-format JSON?")
    if not isinstance(obj[key], kind):
        raise DataError(f"{path}: {where}['{key}'] must be a {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def _is_list_like(x: Any) -> bool:
    return not isinstance(x, (str, bytes, Mapping)) and hasattr(x, "__len__") and hasattr(x, "__iter__")


def _decode_json(raw: Any) -> tuple[Any, str | None]:
    """``(answers, problem)``: ``raw`` parsed when it is JSON text (answers from a CSV cell), else ``raw``
    itself; ``problem`` says what is wrong when the text is not JSON. Blank text counts as no answers."""
    if not isinstance(raw, str):
        return raw, None
    if not raw.strip():
        return None, None
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as err:
        return None, f"answers must be JSON text, but {err.msg} at character {err.pos} of {raw[:80]!r}"


def _is_empty_answers(raw: Any) -> bool:
    raw, problem = _decode_json(raw)
    if problem is not None:
        return False
    if raw is None:
        return True
    if isinstance(raw, Mapping):
        return _is_list_like(raw.get("text")) and len(raw["text"]) == 0
    return _is_list_like(raw) and len(raw) == 0


def _parse_answers(raw: Any) -> tuple[Answer, ...] | str:
    """Answers from either layout (or either as JSON text), or a string saying what is malformed."""
    raw, problem = _decode_json(raw)
    if problem is not None:
        return problem
    if raw is None:
        return ()
    if isinstance(raw, Mapping):  # Hugging Face layout: {"text": [...], "answer_start": [...]}
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not (_is_list_like(texts) and _is_list_like(starts) and len(texts) == len(starts)):
            return f"'text' and 'answer_start' must be lists of equal length, got {raw!r}"
        raw = [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]
    if not _is_list_like(raw):
        return f"answers must be a list, got {type(raw).__name__}"
    answers = []
    for item in raw:
        text = item.get("text") if isinstance(item, Mapping) else None
        start = item.get("answer_start") if isinstance(item, Mapping) else None
        if not isinstance(text, str) or not isinstance(start, Integral) or isinstance(start, bool):
            return f"each answer needs a string 'text' and an integer 'answer_start', got {item!r}"
        answers.append(Answer(str(text), int(start)))
    return tuple(answers)


def _problem(
    question: Any, context: Any, answers: tuple[Answer, ...], impossible: bool
) -> tuple[str, str] | None:
    """The first rule the example breaks as ``(reason, value)``, or None when it is valid."""
    if not isinstance(question, str) or not question.strip():
        return "empty_question", repr(question)
    if not isinstance(context, str) or not context.strip():
        return "empty_context", repr(context)
    if impossible:
        if answers:
            return "no_answer", f"an impossible question must have no answers, got {answers}"
        return None
    if not answers:
        return "no_answer", "an answerable question needs at least one answer, got none"
    for ans in answers:
        if not ans.text:
            return "empty_answer", f"answer text must be non-empty, got {ans.text!r} at {ans.start}"
        end = ans.start + len(ans.text)
        found = context[ans.start : end] if ans.start >= 0 else None
        if found != ans.text:
            rule = f"context[{ans.start}:{end}] must equal the answer {ans.text!r}"
            return "answer_offset_mismatch", f"{rule}, got {found!r}"
    return None


# ------------------------------------------------------------------------------------- featurizing


def qa_columns(examples: Sequence[QAExample]) -> dict[str, list[Any]]:
    """Columns for :func:`featurize`: ``id``, ``question``, ``context``, ``answer_start``, ``answer_text``.

    The label is each example's first answer (the SQuAD training convention); an impossible example
    gets ``answer_start = -1`` and ``answer_text = ""``.
    """
    return {
        "id": [ex.id for ex in examples],
        "question": [ex.question for ex in examples],
        "context": [ex.context for ex in examples],
        "answer_start": [ex.answers[0].start if ex.answers else -1 for ex in examples],
        "answer_text": [ex.answers[0].text if ex.answers else "" for ex in examples],
    }


def featurize(
    tokenizer: PreTrainedTokenizerBase,
    examples_or_columns: Sequence[QAExample] | Mapping[str, Sequence[Any]],
    *,
    max_length: int,
    doc_stride: int,
    with_labels: bool,
) -> dict[str, np.ndarray]:
    """Tokenize question/context pairs into overlapping windows over the context.

    Args:
        tokenizer: A Hugging Face fast tokenizer (offset mappings are needed).
        examples_or_columns: A list of :class:`QAExample`, or columns as from :func:`qa_columns`
            (``question``, ``context``; with labels also ``answer_start``, -1 for impossible, and
            ``answer_text``), e.g. one Ray Data batch.
        max_length: Tokens per window, special tokens included.
        doc_stride: Context tokens shared by consecutive windows of the same example.
        with_labels: Also return ``start_positions`` and ``end_positions``.

    Returns:
        Per window, int64 arrays padded to the longest window in this call: ``input_ids``,
        ``token_type_ids``, ``attention_mask`` (``(n, L)``); ``example_index`` (``(n,)``, index into
        the input); ``offsets`` (``(n, L, 2)``, character offsets of context tokens, ``(-1, -1)``
        elsewhere); with labels, ``start_positions``/``end_positions`` (``(n,)``), the first and last
        token of the answer, or :data:`CLS_INDEX` when the answer is not wholly in the window or the
        question is impossible.

    Raises:
        ConfigError: ``max_length``/``doc_stride`` are out of range or the tokenizer is not fast.
        DataError: A column is missing or of another length, a label does not match its context, or
            a question is so long that a window holds no more than ``doc_stride`` context tokens.
    """
    if doc_stride < 0 or max_length <= doc_stride:
        raise ConfigError(
            f"0 <= doc_stride < max_length must hold, got doc_stride={doc_stride}, max_length={max_length}"
        )
    if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token_id is None:
        raise ConfigError(f"featurize needs a fast tokenizer with a pad token, got {type(tokenizer).__name__}")
    cols = examples_or_columns
    if not isinstance(cols, Mapping):
        cols = qa_columns(list(cols))
    needed = ("question", "context") + (("answer_start", "answer_text") if with_labels else ())
    missing = [k for k in needed if k not in cols]
    if missing:
        raise DataError(f"featurize: columns {missing} are missing, got {sorted(cols)}; see qa_columns()")
    lengths = {k: len(cols[k]) for k in needed}
    if len(set(lengths.values())) != 1:
        raise DataError(f"featurize: columns must have the same length, got {lengths}")
    questions = [str(q) for q in cols["question"]]
    contexts = [str(c) for c in cols["context"]]
    if not questions:
        empty = {k: np.zeros((0, 0), np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}
        empty |= {"example_index": np.zeros(0, np.int64), "offsets": np.zeros((0, 0, 2), np.int64)}
        labels = ("start_positions", "end_positions") if with_labels else ()
        return empty | {k: np.zeros(0, np.int64) for k in labels}
    _check_question_room(tokenizer, questions, max_length, doc_stride)

    enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=doc_stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    n, width = len(enc["input_ids"]), max(len(ids) for ids in enc["input_ids"])
    out = {
        "input_ids": np.full((n, width), tokenizer.pad_token_id, np.int64),
        "token_type_ids": np.zeros((n, width), np.int64),
        "attention_mask": np.zeros((n, width), np.int64),
        "example_index": np.asarray(enc["overflow_to_sample_mapping"], np.int64),
        "offsets": np.full((n, width, 2), -1, np.int64),
    }
    for w, ids in enumerate(enc["input_ids"]):
        out["input_ids"][w, : len(ids)] = ids
        out["attention_mask"][w, : len(ids)] = 1
        if "token_type_ids" in enc:
            out["token_type_ids"][w, : len(ids)] = enc["token_type_ids"][w]
        is_context = np.array([s == 1 for s in enc.sequence_ids(w)])
        out["offsets"][w, : len(ids)][is_context] = np.asarray(enc["offset_mapping"][w], np.int64)[is_context]
    if with_labels:
        rows = zip(contexts, cols["answer_start"], cols["answer_text"])
        spans = [_char_span(i, context, start, text) for i, (context, start, text) in enumerate(rows)]
        labels = [_token_span(out["offsets"][w], spans[ex]) for w, ex in enumerate(out["example_index"])]
        out["start_positions"] = np.array([s for s, _ in labels], np.int64).reshape(n)
        out["end_positions"] = np.array([e for _, e in labels], np.int64).reshape(n)
    return out


def context_room(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], *, max_length: int
) -> np.ndarray:
    """Context tokens a window of ``max_length`` tokens holds beside each question (special tokens counted).

    :func:`featurize` needs more than ``doc_stride`` of them for every question; a scorer uses this to flag
    the rows that would not fit rather than fail on the whole batch.

    Returns:
        ``(len(questions),)`` int64; zero or negative for a question that fills the window by itself.
    """
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    ids = tokenizer(list(questions), add_special_tokens=False)["input_ids"] if len(questions) else []
    return np.array([room - len(q) for q in ids], np.int64)


def _check_question_room(
    tokenizer: PreTrainedTokenizerBase, questions: list[str], max_length: int, doc_stride: int
) -> None:
    # The Rust tokenizer panics (no row named) when a window cannot hold more than doc_stride context tokens.
    for i, room in enumerate(context_room(tokenizer, questions, max_length=max_length)):
        if room <= doc_stride:
            raise DataError(
                f"featurize: question {i} has {max_length - tokenizer.num_special_tokens_to_add(pair=True) - room} "
                f"tokens, leaving {room} context tokens per window; that must exceed doc_stride={doc_stride} "
                f"(max_length={max_length}); raise max_length, lower doc_stride or shorten the question"
            )


def _char_span(i: int, context: str, start: Any, text: Any) -> tuple[int, int] | None:
    """The answer's character span with surrounding whitespace trimmed, or None when impossible."""
    start, text = int(start), str(text)
    if start < 0 or not text:
        return None
    if context[start : start + len(text)] != text:
        raise DataError(
            f"featurize: row {i}: context[{start}:{start + len(text)}] must equal answer_text {text!r}, "
            f"got {context[start:start + len(text)]!r}"
        )
    lead = len(text) - len(text.lstrip())
    return start + lead, start + len(text.rstrip())


def _token_span(offsets: np.ndarray, span: tuple[int, int] | None) -> tuple[int, int]:
    """First and last token covering ``span`` in one window (``offsets``: (L, 2)), else CLS."""
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if span is None or span[1] <= span[0] or ctx.size == 0:
        return CLS_INDEX, CLS_INDEX
    start_char, end_char = span
    if offsets[ctx[0], 0] > start_char or offsets[ctx[-1], 1] < end_char:
        return CLS_INDEX, CLS_INDEX
    first = ctx[np.argmax(offsets[ctx, 1] > start_char)]
    last = ctx[np.flatnonzero(offsets[ctx, 0] < end_char)[-1]]
    return int(first), int(last)


# ------------------------------------------------------------------------------------ postprocessing


def postprocess(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    example_index: np.ndarray,
    contexts: Sequence[str],
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    allow_impossible: bool = False,
) -> list[Prediction]:
    """Pick the best answer span per example from the start/end logits of all its windows.

    A span is scored ``start_logit + end_logit``; spans with a token outside the context, ``end <
    start`` or more than ``max_answer_length`` tokens are skipped, and the same character span seen
    in two windows keeps its higher score. The null score of an example is its lowest [CLS] score
    over windows (the window most sure an answer exists).

    Args:
        start_logits: ``(windows, L)`` start scores.
        end_logits: ``(windows, L)`` end scores.
        offsets: ``(windows, L, 2)`` from :func:`featurize`.
        example_index: ``(windows,)`` index of each window's example in ``contexts``.
        contexts: The context of every example, in featurize's input order.
        n_best: Start and end candidates per window, and the length of ``Prediction.n_best``.
        max_answer_length: Longest answer in tokens.
        allow_impossible: SQuAD v2: predict ``""`` when the null score beats the best span.

    Returns:
        One :class:`Prediction` per context. An example with no valid span predicts ``""`` with
        score ``-inf`` (or its null score when ``allow_impossible``).

    Raises:
        ConfigError: ``n_best`` or ``max_answer_length`` is below 1.
        DataError: The arrays' shapes disagree or an ``example_index`` is out of range.
    """
    if n_best < 1 or max_answer_length < 1:
        raise ConfigError(
            f"n_best >= 1 and max_answer_length >= 1 must hold, got n_best={n_best}, "
            f"max_answer_length={max_answer_length}"
        )
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    offsets = np.asarray(offsets, np.int64)
    example_index = np.asarray(example_index, np.int64).reshape(-1)
    n = example_index.shape[0]
    if not (start_logits.shape == end_logits.shape == offsets.shape[:2] and offsets.shape[2:] == (2,)
            and start_logits.shape[:1] == (n,)):
        raise DataError(
            "postprocess: logits must be (windows, L), offsets (windows, L, 2) and example_index (windows,), "
            f"got {start_logits.shape}, {end_logits.shape}, {offsets.shape}, {example_index.shape}"
        )
    if n and (example_index.min() < 0 or example_index.max() >= len(contexts)):
        raise DataError(
            f"postprocess: example_index must lie in [0, {len(contexts)}), "
            f"got values from {example_index.min()} to {example_index.max()}"
        )
    windows_of: list[list[int]] = [[] for _ in contexts]
    for w, ex in enumerate(example_index):
        windows_of[ex].append(w)
    return [
        _best_for_example(str(contexts[ex]), [(start_logits[w], end_logits[w], offsets[w]) for w in windows],
                          n_best, max_answer_length, allow_impossible)
        for ex, windows in enumerate(windows_of)
    ]


def _best_for_example(context: str, windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                      n_best: int, max_answer_length: int, allow_impossible: bool) -> Prediction:
    spans: dict[tuple[int, int], float] = {}
    null_score = float("inf")
    for start, end, offs in windows:  # (L,), (L,), (L, 2)
        null_score = min(null_score, float(start[CLS_INDEX] + end[CLS_INDEX]))
        valid = offs[:, 0] >= 0
        s_idx, e_idx = _top_valid(start, valid, n_best), _top_valid(end, valid, n_best)
        scores = start[s_idx][:, None] + end[e_idx][None, :]  # (starts, ends)
        length = e_idx[None, :] - s_idx[:, None] + 1
        for i, j in zip(*np.nonzero((length >= 1) & (length <= max_answer_length))):
            key = (int(offs[s_idx[i], 0]), int(offs[e_idx[j], 1]))
            if key[1] > key[0] and scores[i, j] > spans.get(key, -np.inf):
                spans[key] = float(scores[i, j])
    # (score, is_null, start, end): best first; ties go to the earlier span, and the null answer
    # loses a tie to any span, since it must *beat* the best span to win.
    ranked = [(score, 0, s, e) for (s, e), score in spans.items()]
    if allow_impossible and windows:
        ranked.append((null_score, 1, 0, 0))
    ranked.sort(key=lambda t: (-t[0], t[1], t[2], t[3]))
    n_best_list = tuple((context[s:e], s, e, score) for score, _, s, e in ranked[:n_best])
    if not n_best_list:
        return Prediction("", 0, 0, float("-inf"), ())
    text, s, e, score = n_best_list[0]
    return Prediction(text, s, e, score, n_best_list)


def _top_valid(logits: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest logits among valid positions, highest first."""
    idx = np.flatnonzero(valid)
    return idx[np.argsort(-logits[idx], kind="stable")[:k]]


# ------------------------------------------------------------------------------------------ metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, and collapse whitespace.

    The rules, in order, of the official SQuAD v1.1 evaluation script.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings; when either is empty, 1.0 if both are, else 0.0 (v2 rule)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """Mean exact match and F1, each the max over an example's gold answers.

    Scores are fractions in [0, 1], not the official script's percentages. An example with no gold
    answers (impossible in v2) is scored against ``""``, as in the v2 script.

    Args:
        predictions: One predicted answer per example.
        references: Per example, its gold answers (a list, never a bare string).

    Returns:
        ``{"exact_match": float, "f1": float, "count": int}``; both means are 0.0 when ``count`` is 0.

    Raises:
        DataError: The lengths differ or a reference is a bare string.
    """
    if len(predictions) != len(references):
        raise DataError(
            "squad_scores: predictions and references must have equal length, "
            f"got {len(predictions)} and {len(references)}"
        )
    em_total = f1_total = 0.0
    for i, (pred, golds) in enumerate(zip(predictions, references)):
        if isinstance(golds, str):
            raise DataError(f"squad_scores: references[{i}] must be a list of answers, got string {golds!r}")
        golds = list(golds) or [""]
        em_total += max(exact_match(pred, g) for g in golds)
        f1_total += max(f1(pred, g) for g in golds)
    count = len(predictions)
    if count == 0:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    return {"exact_match": em_total / count, "f1": f1_total / count, "count": count}
