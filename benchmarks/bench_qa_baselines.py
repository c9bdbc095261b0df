"""Simple extractive-QA baselines on a QA config's own test split, to give the tuned model's F1 context.

The split is the pipeline's: read from a run's hand-off (``--run runs/qa_xquad``, written by ``hybrid run``
or ``hybrid tune``), or made here by hybrid's own ingest (Spark on a local Ray) when no run is given. Printed
side by side, SQuAD exact match and F1 (max over the gold answers):

- ``sentence``: the context sentence sharing the most question words (stop words dropped);
- ``ngram``: in that sentence, the span of 1-4 words, none of them a question word, closest to the question's
  words and of the kind its wh-word asks for (the sliding-window idea of Richardson et al. 2013 / Rajpurkar
  et al. 2016, with a number/name rule);
- ``first_4``: the context's first four words (a floor);
- ``untuned_encoder``: the config's pretrained encoder with a freshly initialised span head (seed 0), decoded
  with the same windows and n-best search as the tuned model: what fine-tuning starts from.

    .venv/bin/python benchmarks/bench_qa_baselines.py --config configs/qa_xquad.yaml [--run runs/qa_xquad]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import render_table  # noqa: E402

from hybrid.config import Config, load_config  # noqa: E402
from hybrid.qa import normalize_answer, squad_scores  # noqa: E402

STOP = frozenset(
    "a an the of in on at to for by with from and or is are was were be been being do does did what which who whom "
    "whose when where why how that this these those it its as into than then there their they he she his her him "
    "i you we our your not no many much".split()
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\S+")


def question_words(question: str) -> set[str]:
    """The question's normalised words without stop words."""
    return {w for w in normalize_answer(question).split() if w not in STOP}


def best_sentence(question: str, context: str) -> str:
    """The context sentence sharing the most question words (the first on a tie)."""
    words = question_words(question)
    sentences = [s for s in _SENTENCE.split(context) if s.strip()] or [context]
    return max(sentences, key=lambda s: len(words & set(normalize_answer(s).split())))


_NUMBERS = frozenset("one two three four five six seven eight nine ten eleven twelve hundred thousand million "
                     "billion first second third half".split())


def _wants(question: str) -> str | None:
    """The kind of answer a question's wh-word asks for: ``number``, ``name`` or None."""
    q = question.lower()
    if re.search(r"\bhow (many|much|long|old|far|large|big)\b|\bwhat (year|percentage|percent)\b|\bwhen\b", q):
        return "number"
    if re.search(r"\b(who|whom|whose|where|which)\b", q):
        return "name"
    return None


def _kind_bonus(span: Sequence[str], wants: str | None) -> float:
    if wants == "number":
        return 1.0 if any(any(ch.isdigit() for ch in t) or t.lower().strip(".,") in _NUMBERS for t in span) else 0.0
    if wants == "name":
        return 1.0 if all(t[:1].isupper() for t in span) else 0.0
    return 0.0


def best_ngram(question: str, context: str, *, longest: int = 4, reach: int = 4) -> str:
    """In :func:`best_sentence`, the 1..``longest``-word span free of question words scored by the question
    words within ``reach`` words of it (each counting 1/distance) plus one if it looks like what the
    wh-word asks for (a number for "how many"/"when", capitalised words for "who"/"where"/"which");
    shorter and earlier spans first on a tie."""
    words = question_words(question)
    wants = _wants(question)
    tokens = _WORD.findall(best_sentence(question, context))
    norm = [normalize_answer(t) for t in tokens]
    hit = [n in words for n in norm]
    best, best_score = tokens[:1], -1.0
    for n in range(1, longest + 1):
        for i in range(0, len(tokens) - n + 1):
            if any(hit[i:i + n]) or not any(norm[i:i + n]):
                continue
            near = sum(1.0 / (i - j) for j in range(max(0, i - reach), i) if hit[j])
            near += sum(1.0 / (j - (i + n - 1)) for j in range(i + n, min(len(tokens), i + n + reach)) if hit[j])
            score = near + _kind_bonus(tokens[i:i + n], wants)
            if score > best_score + 1e-9:
                best, best_score = tokens[i:i + n], score
    return " ".join(best).strip(".,;:!?\"'()")


def first_words(context: str, n: int = 4) -> str:
    """The context's first ``n`` words."""
    return " ".join(_WORD.findall(context)[:n])


def test_split(config: Config, run: Path | None) -> tuple[dict[str, list], str]:
    """The test split's columns, and where they came from."""
    import pyarrow.parquet as pq

    if run is None:
        run = Path(tempfile.mkdtemp(prefix="qa-baselines-"))
        from hybrid.ingest import ingest
        from hybrid.runtime import running

        with running(config.runtime) as runtime:
            ingest(runtime.start_spark(), config.data, run_dir=run)
    folder = run / "data" / "handoff" / "test"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no test split handed off there; run `hybrid tune CONFIG` first or drop --run")
    table = pq.read_table(folder)
    return {c: table.column(c).to_pylist() for c in ("question", "context", "answers", "group")}, str(folder)


def untuned_encoder(config: Config, columns: dict[str, list], batch_size: int = 16) -> tuple[float, float]:
    """EM and F1 of the pretrained encoder with a fresh span head (seed 0), through the family's own decoding."""
    import torch

    from hybrid.models import get_family

    family = get_family(config.model_name)
    torch.manual_seed(0)
    model = family.build(config.model).eval()
    collate = family.collate(config.model)
    batches = []
    n = len(columns["question"])
    for start in range(0, n, batch_size):
        part = {k: np.asarray(v[start:start + batch_size], dtype=object) for k, v in columns.items()}
        part["answer_start"] = np.full(len(part["question"]), -1)
        part["answer_text"] = np.array([a[0] if len(a) else "" for a in part["answers"]], dtype=object)
        batches.append(collate(part))
    with torch.inference_mode():
        sums = family.evaluation.evaluate(model, batches, columns=family.input_columns, device=torch.device("cpu"),
                                          num_classes=0, model_config=config.model)
    scores = family.evaluation.summarize(sums, 0).scores
    return scores["exact_match"], scores["f1"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/qa_xquad.yaml")
    parser.add_argument("--run", type=Path, default=None, help="a run directory whose test split to score")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="config override KEY=VALUE")
    parser.add_argument("--skip-encoder", action="store_true", help="text baselines only (no model)")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    columns, source = test_split(config, args.run)
    answers = [list(a) for a in columns["answers"]]
    print(f"test split: {len(answers)} questions from {len(set(columns['group']))} articles ({source})", flush=True)
    rows = []
    for name, guess in (("sentence", best_sentence), ("ngram", best_ngram),
                        ("first_4", lambda q, c: first_words(c))):
        t0 = time.perf_counter()
        predictions = [guess(q, c) for q, c in zip(columns["question"], columns["context"])]
        scores = squad_scores(predictions, answers)
        rows.append([name, f"{scores['exact_match']:.4f}", f"{scores['f1']:.4f}", f"{time.perf_counter() - t0:.1f}"])
    if not args.skip_encoder:
        t0 = time.perf_counter()
        em, f1 = untuned_encoder(config, columns)
        rows.append(["untuned_encoder", f"{em:.4f}", f"{f1:.4f}", f"{time.perf_counter() - t0:.1f}"])
    print(render_table(["baseline", "exact_match", "f1", "seconds"], rows))
    print(f"words of the most common gold answers: {Counter(len(a[0].split()) for a in answers).most_common(4)}")


if __name__ == "__main__":
    main()
