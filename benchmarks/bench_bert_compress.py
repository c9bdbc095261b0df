"""Teacher vs distilled student vs int8 student of a text run: size, and latency at batch 1, 32 and 256.

Reads the three model directories of a finished ``hybrid run`` (default ``runs/sentiment``) and times
each on the same real test sentences, round robin (teacher, student, int8, teacher, ...) so that load
changes on a shared machine hit every model alike; the best of ``--repeats`` rounds is reported. Batches
are padded to their own longest row, as in training and scoring.

    .venv/bin/python benchmarks/bench_bert_compress.py --run-dir runs/sentiment
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import render_table  # noqa: E402

from hybrid.artifacts import load_model, model_collate  # noqa: E402
from hybrid.models import get_family  # noqa: E402
from hybrid.text import INPUT_IDS, load_tokenizer, tokenize  # noqa: E402

MODELS = ("teacher", "student", "student_int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default="runs/sentiment")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--compare-backends", action="store_true",
                        help="also quantize the float student with both int8 backends (torchao PT2E, ONNX Runtime)")
    args = parser.parse_args()

    run = Path(args.run_dir)
    torch.set_num_threads(args.threads)
    loaded = {}
    for name in MODELS:
        model, meta = load_model(run / name)
        if hasattr(model, "eval"):
            model.eval()
        size = sum(p.stat().st_size for p in (run / name).iterdir() if p.suffix in (".safetensors", ".onnx", ".pt2"))
        loaded[name] = (model, model_collate(run / name, meta), get_family(meta["family"]).input_columns, size)
    texts = pq.read_table(run / "data" / "test.parquet").column("text").to_pylist()
    rng = np.random.default_rng(0)
    tokenizer = load_tokenizer(str(run / "teacher" / "encoder"))
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}

    best: dict[tuple[str, int], float] = {}
    for batch_size in args.batch_sizes:
        rows = [texts[i] for i in rng.choice(len(texts), batch_size, replace=batch_size > len(texts))]
        ids = np.array(tokenize(tokenizer, rows, max_length=128) + [None], dtype=object)[:-1]
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, (model, collate, columns, _) in loaded.items():
                batch = collate({INPUT_IDS: ids})
                inputs = [batch[c] for c in columns]
                # at batch 1 one call is too short to time alone: average over calls worth ~0.2 s
                calls = max(1, 64 // batch_size)
                with torch.inference_mode():
                    start = time.perf_counter()
                    for _ in range(calls):
                        model(*inputs)
                    ms = (time.perf_counter() - start) * 1e3 / calls / batch_size
                key = (name, batch_size)
                best[key] = min(best.get(key, float("inf")), ms)

    teacher_size = loaded["teacher"][3]
    header = ["model", "size MB", "smaller", "test acc"] + [f"ms/sample @{b}" for b in args.batch_sizes] + [
        f"faster @{b}" for b in args.batch_sizes]
    table = []
    for name, (_, _, _, size) in loaded.items():
        acc = summary.get("models", {}).get(name, {}).get("test", {}).get("accuracy", float("nan"))
        table.append([name, f"{size / 1e6:.1f}", f"{teacher_size / size:.1f}x", f"{acc:.4f}"]
                     + [f"{best[(name, b)]:.3f}" for b in args.batch_sizes]
                     + [f"{best[('teacher', b)] / best[(name, b)]:.1f}x" for b in args.batch_sizes])
    print(f"{run}: {len(texts)} test sentences, {args.threads} threads, best of {args.repeats} round-robin rounds")
    print(render_table([header, *table]))
    if args.compare_backends:
        compare_backends(run, loaded["student"], tokenizer)


def compare_backends(run: Path, student: tuple, tokenizer: object) -> None:
    """Dynamic int8 of the float student with each backend, measured by :func:`hybrid.quantize.quantize`
    on the test sentences (accuracy, agreement with float, latency at batch 256, file size)."""
    from hybrid.quantize import QuantizeConfig, quantize

    model, collate, columns, _ = student
    table = pq.read_table(run / "data" / "test.parquet")
    texts, labels = table.column("text").to_pylist(), np.asarray(table.column("label").to_pylist())
    ids = tokenize(tokenizer, texts, max_length=128)
    batches = []
    for start in range(0, len(ids), 256):
        chunk = np.array(ids[start : start + 256] + [None], dtype=object)[:-1]
        batches.append(collate({INPUT_IDS: chunk, "label": labels[start : start + 256]}))
    config = QuantizeConfig(backend="auto", mode="dynamic", calibration_samples=256, latency_repeats=3)
    result = quantize(model, batches[:1], config, eval_batches=batches, input_columns=columns)
    rows = [["float student", f"{result.baseline.accuracy:.4f}", "1.000",
             f"{result.baseline.latency_ms_per_sample:.3f}", f"{result.baseline.size_bytes / 1e6:.1f}"]]
    for name, m in result.candidates.items():
        rows.append([f"int8 {name}", f"{m.accuracy:.4f}", f"{m.agreement:.3f}", f"{m.latency_ms_per_sample:.3f}",
                     f"{m.size_bytes / 1e6:.1f}"])
    print("\ndynamic int8 of the float student, both backends (test sentences, batch 256):")
    print(render_table([["model", "accuracy", "agreement", "ms/sample", "size MB"], *rows]))
    for name, error in result.failures.items():
        print(f"  {name} failed: {error[:300]}")


if __name__ == "__main__":
    main()
