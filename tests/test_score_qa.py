"""Scoring question answering tables in Spark with a real span model.

The model is all-MiniLM-L6-v2's bottom layer with an untrained span head: its answers are poor, but they are
fixed by its weights, which is all that equality with the in-process decoder needs. Windows of 64 tokens
with a 16-token stride cut the fixture's contexts (up to 1,800 characters) into many windows each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from hybrid.artifacts import load_model, save_model
from hybrid.errors import ConfigError, DataError
from hybrid.models import create_model, model_config
from hybrid.qa import featurize, postprocess, squad_scores
from hybrid.testing import minilm_dir

# Plain local Spark, as tests/test_score.py (or Spark on Ray when an earlier module started it): the scorer
# assumes neither, and a Ray start beside other jobs on 2 cores costs more than this module's tests.
pytestmark = pytest.mark.spark
MODEL = minilm_dir()
if MODEL is None:
    pytest.skip("all-MiniLM-L6-v2 not installed (scripts/setup.sh)", allow_module_level=True)

FIXTURE = Path(__file__).parent / "fixtures" / "squad_fixture.json"
MAX_LENGTH, DOC_STRIDE = 64, 16
SCHEMA = "id string, question string, context string, answers array<string>, topic string"
# (question, context, the rule the row must be flagged under)
BAD = [
    (None, "Ann baked bread.", "question_null"),
    ("", "Ann baked bread.", "question_empty"),
    (" \t\u00a0", "Ann baked bread.", "question_empty"),
    ("Who baked?", None, "context_null"),
    ("Who baked?", "\n \u2003", "context_empty"),
    (None, None, "question_null"),  # two rules broken: the first input's rule wins
    (" ".join(["why"] * 60), "Ann baked bread.", "question_too_long"),  # leaves no room for context
]


@pytest.fixture(scope="module")
def span_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    config = model_config("bert_qa", {"pretrained_dir": str(MODEL), "num_layers": 1, "max_length": MAX_LENGTH,
                                      "doc_stride": DOC_STRIDE, "dropout": 0.0})
    torch.manual_seed(0)
    directory = save_model(tmp_path_factory.mktemp("qa") / "span", create_model("bert_qa", config=config).eval(),
                           family="bert_qa", config=config)
    model, _ = load_model(directory)
    return directory, model


@pytest.fixture(scope="module")
def rows() -> list[tuple[Any, ...]]:
    """One question of every fixture paragraph (the long ones need several windows), then the bad rows."""
    good = []
    for article in json.loads(FIXTURE.read_text())["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"][:1]:
                good.append((qa["id"], qa["question"], paragraph["context"], [a["text"] for a in qa["answers"]],
                             article["title"]))
    bad = [(f"bad-{i}", q, c, ["bread"], "none") for i, (q, c, _) in enumerate(BAD)]
    return good + bad


def _in_process(model: Any, questions: list[str], contexts: list[str]) -> list[Any]:
    """The reference: featurize, one forward pass over every window, postprocess (not through hybrid.score)."""
    from hybrid.text import load_tokenizer

    feats = featurize(load_tokenizer(str(MODEL)), {"question": questions, "context": contexts},
                      max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_labels=False)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(feats[c]) for c in ("input_ids", "token_type_ids", "attention_mask")))
    logits = logits.numpy()
    return postprocess(logits[..., 0], logits[..., 1], feats["offsets"], feats["example_index"], contexts,
                       max_answer_length=30)


def test_spark_answers_equal_the_in_process_decoder_and_bad_rows_are_flagged(local_spark, span_model, rows):  # noqa: ANN001
    from hybrid.score import score

    directory, model = span_model
    df = local_spark.createDataFrame(rows, SCHEMA).repartition(2)
    scored = score(df, directory, batch_size=24)
    assert scored.columns == [*df.columns, "answer", "answer_start", "score", "error"]  # every input column kept
    out = {r["id"]: r for r in scored.collect()}
    assert len(out) == len(rows)
    for i, (_, _, reason) in enumerate(BAD):
        row = out[f"bad-{i}"]
        assert row["error"] == reason, row
        assert row["answer"] is None and row["answer_start"] is None and row["score"] is None
        assert row["topic"] == "none" and row["answers"] == ["bread"]

    good = [r for r in rows if not r[0].startswith("bad-")]
    expected = _in_process(model, [r[1] for r in good], [r[2] for r in good])
    for (id_, _, context, _, topic), want in zip(good, expected):
        row = out[id_]
        assert row["error"] is None and row["topic"] == topic
        assert (row["answer"], row["answer_start"]) == (want.text, want.start), id_
        assert row["answer"] == context[row["answer_start"] : row["answer_start"] + len(row["answer"])]
        assert row["score"] == pytest.approx(want.score, abs=1e-4)
    # Long contexts are windowed: answers come from beyond the first window's context.
    from hybrid.text import load_tokenizer

    first = featurize(load_tokenizer(str(MODEL)), {"question": [r[1] for r in good], "context": [r[2] for r in good]},
                      max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, with_labels=False)
    first_window_end = {}
    for w, ex in enumerate(first["example_index"]):
        first_window_end.setdefault(int(ex), int(first["offsets"][w, :, 1].max()))
    beyond = [r[0] for i, r in enumerate(good) if out[r[0]]["answer_start"] >= first_window_end[i]]
    assert len(beyond) >= len(good) // 4, beyond


def test_exact_match_and_f1_from_the_written_parquet_equal_squad_scores(local_spark, span_model, rows, tmp_path):  # noqa: ANN001
    from hybrid.score import score_to_parquet

    directory, model = span_model
    source = tmp_path / "questions.parquet"
    local_spark.createDataFrame(rows, SCHEMA).write.parquet(str(source))
    result = score_to_parquet(local_spark, source, directory, tmp_path / "scores.parquet", batch_size=32)
    assert result.rows == len(rows) and result.scored == len(rows) - len(BAD)
    expected_rejected = {r: 0 for r in ("question_null", "question_empty", "context_null", "context_empty",
                                        "question_too_long", "context_no_span")}
    for _, _, reason in BAD:
        expected_rejected[reason] += 1
    assert result.rejected == expected_rejected
    good = [r for r in rows if not r[0].startswith("bad-")]
    want = squad_scores([p.text for p in _in_process(model, [r[1] for r in good], [r[2] for r in good])],
                        [r[3] for r in good])
    assert result.metrics == pytest.approx({"exact_match": want["exact_match"], "f1": want["f1"]}, abs=1e-12)
    assert result.summary()["f1_in_spark"] == result.metrics["f1"] and result.accuracy is None
    # the written table itself: the same answers, read back without Spark
    written = pq.read_table(str(tmp_path / "scores.parquet")).to_pylist()
    assert {r["id"] for r in written} == {r[0] for r in rows}
    assert squad_scores([r["answer"] for r in written if r["error"] is None],
                        [r["answers"] for r in written if r["error"] is None])["f1"] == pytest.approx(want["f1"])


def test_a_classifier_and_a_span_model_each_refuse_the_others_table(local_spark, span_model, tmp_path):  # noqa: ANN001
    from hybrid.score import score

    config = model_config("bert", {"pretrained_dir": str(MODEL), "num_layers": 1, "max_length": 32})
    classifier = save_model(tmp_path / "classifier", create_model("bert", config=config).eval(), family="bert",
                            config=config, label_names=["neg", "pos"])
    qa_table = local_spark.createDataFrame([("1", "Who baked?", "Ann baked.")], "id string, question string, context string")
    text_table = local_spark.createDataFrame([("1", "a fine film")], "id string, text string")
    with pytest.raises(DataError, match=r"column 'text' to score is required \(a bert model reads 'text'\)"):
        score(qa_table, classifier)
    with pytest.raises(DataError, match=r"column 'question' to score is required \(a bert_qa model reads "
                                        r"'question', 'context'\)"):
        score(text_table, span_model[0])
    wrong_type = local_spark.createDataFrame([("1", 7, "Ann baked.")], "id string, question int, context string")
    with pytest.raises(DataError, match=r"'question' must hold strings .* but has type int"):
        score(wrong_type, span_model[0])
    with pytest.raises(ConfigError, match=r"prediction_col='p' rename a classifier's output"):
        score(qa_table, span_model[0], prediction_col="p")
    with pytest.raises(ConfigError, match=r"input_col names the one column of a one-input model"):
        score(qa_table, span_model[0], input_col="question")
    renamed = qa_table.withColumnRenamed("context", "passage")
    out = score(renamed, span_model[0], input_cols={"context": "passage"}).collect()
    assert out[0]["error"] is None and out[0]["answer"] in "Ann baked."

