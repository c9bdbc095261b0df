"""A dynamic int8 text model run row by row (hybrid's way) vs in padded batches: speed and batch-invariance.

Dynamic quantization takes one activation range per input tensor at run time. Run in a padded batch, a row's
logits depend on its batch mates and their padding; hybrid therefore runs each row alone, cut to its length
(:class:`hybrid.quantize.Int8Model`). This prints, side by side on the same real sentences and threads, each
way's ms/sample and how many predictions change when the same rows come in batches of 1, 64 or 256, or
shuffled into other batches of 64.

    .venv/bin/python benchmarks/bench_int8_rows.py --model runs/sentiment/student_int8 --rows 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import render_table  # noqa: E402

from hybrid.artifacts import model_collate  # noqa: E402
from hybrid.quantize import load_quantized  # noqa: E402
from hybrid.sources.polarity import read_sentence_polarity  # noqa: E402
from hybrid.text import INPUT_IDS, load_tokenizer, tokenize  # noqa: E402

POLARITY = Path(__file__).resolve().parents[1] / "data" / "sentence_polarity" / "movieReviewSnippets_GroundTruth.txt"


def predictions(run: Callable[..., torch.Tensor], collate: Callable, columns: list[str], ids: list[np.ndarray],
                order: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Predicted class of every row (in the original order) with rows fed in ``order``; and the seconds taken."""
    out = np.zeros(len(ids), np.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            batch = collate({INPUT_IDS: np.array([ids[i] for i in rows] + [None], dtype=object)[:-1]})
            out[rows] = run(*(batch[c] for c in columns)).argmax(dim=1).numpy()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an int8 text model directory (dynamic mode)")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    model, meta = load_quantized(args.model, num_threads=args.threads)
    if model.mode != "dynamic" or model.padding_mask is None:
        raise SystemExit(f"{args.model}: needs a dynamic int8 text model, but it is {model!r}")
    torch.set_num_threads(args.threads)
    directory = Path(args.model)
    collate = model_collate(directory, meta)
    columns = [spec.name for spec in model.inputs]
    max_length = int(meta["config"]["max_length"])
    texts = [t for t in read_sentence_polarity(POLARITY).table.column("text").to_pylist() if t][: args.rows]
    ids = tokenize(load_tokenizer(str(directory / meta["config"]["pretrained_dir"])), texts, max_length=max_length)
    by_length = np.argsort([len(x) for x in ids], kind="stable")  # as the Spark UDF batches them
    shuffled = np.random.default_rng(0).permutation(len(ids))

    ways = {"row by row (hybrid)": model, "padded batch": lambda *x: model._run(tuple(x))}
    rows = []
    for name, run in ways.items():
        base, _ = predictions(run, collate, columns, ids, by_length, 1)
        timed = {}
        changed = {}
        for size in (64, 256):
            got, seconds = predictions(run, collate, columns, ids, by_length, size)
            timed[size], changed[size] = seconds, int((got != base).sum())
        got, _ = predictions(run, collate, columns, ids, shuffled, 64)
        rows.append([name, f"{1000 * timed[64] / len(ids):.3f}", f"{1000 * timed[256] / len(ids):.3f}",
                     str(changed[64]), str(changed[256]), str(int((got != base).sum()))])
        print(f"[bench] {name}: done", flush=True)
    print(f"\n{args.model}: {len(ids)} sentences, max_length {max_length}, {args.threads} thread(s)\n")
    header = ["way", "ms/sample b64", "ms/sample b256", "changed b64 vs b1", "changed b256 vs b1",
              "changed shuffled b64 vs b1"]
    print(render_table([header, *rows]))


if __name__ == "__main__":
    main()
