"""Float vs int8 (torch PT2E, ONNX Runtime): accuracy, size and CPU latency of one Fashion-MNIST CNN.

What is compared
    One float CNN, either trained here (``--epochs`` of :func:`hybrid.train.train_epoch` on the first
    ``--train-rows`` Fashion-MNIST training images, hybrid's default CNN config unless ``--model-config``)
    or read from a model directory (``--model DIR``, e.g. a run's teacher or student). It is quantized by
    :func:`hybrid.quantize.quantize` with both backends (static int8, calibrated on ``--calibration`` training
    rows), and the three models are measured on the first ``--test-rows`` test images:

    - accuracy, top-1 agreement with the float model, largest logit difference;
    - size: the bytes of each model directory (float: safetensors + JSON; int8: ``.pt2`` or ``.onnx`` + JSON);
    - latency in ms per sample for every ``--batch-sizes`` x ``--threads`` (torch intra-op threads, and the
      ONNX Runtime session's intra-op threads), plus the float model run by ONNX Runtime (``float-ort``),
      which separates what int8 buys from what the runtime buys.

How to read the numbers
    Latency is the fastest of ``--repeats`` passes, the models taking turns pass by pass so that a burst of
    load from other processes hits all of them alike; on a shared 2-core box, compare the ``x float`` ratios
    in one run rather than absolute milliseconds across runs. ``x float`` is float latency / int8 latency
    (above 1: int8 is faster) and float size / int8 size. The headline row is batch 256 at the largest
    thread count. The defaults take about two minutes on 2 cores (training one epoch of 6k rows is most of it).

Example::

    python benchmarks/bench_compress.py --train-rows 6000 --test-rows 2048 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid import _quant_onnx
from hybrid.artifacts import load_model, save_model
from hybrid.config import TrainConfig
from hybrid.models import CNN, CNNConfig, model_config
from hybrid.quantize import Int8Model, QuantizeConfig, quantize, save_quantized
from hybrid.schedules import build_scheduler
from hybrid.sources.idx import read_fashion_mnist
from hybrid.train import make_optimizer, train_epoch

MEAN, STD = 72.94, 90.02  # Fashion-MNIST training pixels


def _batches(images: np.ndarray, labels: np.ndarray, size: int) -> list[dict[str, torch.Tensor]]:
    pixels = torch.from_numpy((images.reshape(len(images), -1).astype(np.float32) - MEAN) / STD)
    targets = torch.from_numpy(labels.astype(np.int64))
    return [{"pixels": pixels[i : i + size], "label": targets[i : i + size]} for i in range(0, len(targets), size)]


def _train(config: CNNConfig, batches: list[dict[str, torch.Tensor]], epochs: int) -> CNN:
    torch.manual_seed(0)
    train = TrainConfig(max_epochs=epochs, batch_size=len(batches[0]["label"]))
    model = CNN(config)
    optimizer = make_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch=len(batches))
    for epoch in range(epochs):
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(epoch)).tolist()
        train_epoch(
            model, [batches[i] for i in order], optimizer=optimizer, scheduler=scheduler, config=train,
            columns=("pixels",), device=torch.device("cpu"), epoch=epoch,
        )
    return model.eval()


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def _float_onnx_runner(payload: bytes, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    run = _quant_onnx.runner(payload, input_names=["pixels"], output_name="logits", num_threads=threads)
    return lambda x: run((x,))


def _latency_grid(
    runners: dict[str, Callable[[int], Callable[[torch.Tensor], Any]]],
    pixels: torch.Tensor,
    batch_sizes: list[int],
    threads: list[int],
    repeats: int,
) -> dict[tuple[int, int], dict[str, float]]:
    """``(batch, threads) -> model -> best ms/sample``; ``runners[name](threads)`` builds a callable."""
    grid: dict[tuple[int, int], dict[str, float]] = {}
    previous = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            models = {name: build(n) for name, build in runners.items()}
            for batch in batch_sizes:
                x = pixels[:batch].contiguous()
                best = {name: math.inf for name in models}
                with torch.no_grad():
                    for name, run in models.items():
                        run(x)  # warm-up
                    for _ in range(repeats):
                        for name, run in models.items():
                            start = time.perf_counter()
                            run(x)
                            best[name] = min(best[name], time.perf_counter() - start)
                grid[(batch, n)] = {name: seconds * 1e3 / batch for name, seconds in best.items()}
    finally:
        torch.set_num_threads(previous)
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX directory")
    parser.add_argument("--model", help="float model directory to quantize instead of training one")
    parser.add_argument("--model-config", default="{}", help="JSON of CNNConfig fields for the model trained here")
    parser.add_argument("--train-rows", type=int, default=6000)
    parser.add_argument("--test-rows", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--calibration", type=int, default=1024, help="calibration rows")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--reduce-range", choices=["auto", "on", "off"], default="auto",
                        help="QuantizeConfig.reduce_range: auto (null) reduces where the CPU lacks VNNI")
    parser.add_argument("--save-model", help="write the float model trained here to this directory")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    train_images, train_labels = read_fashion_mnist(args.data, "train")
    test_images, test_labels = read_fashion_mnist(args.data, "test")
    train = _batches(train_images[: args.train_rows], train_labels[: args.train_rows], 64)
    test = _batches(test_images[: args.test_rows], test_labels[: args.test_rows], 256)
    if args.model:
        model, _ = load_model(args.model)
    else:
        model = _train(model_config("cnn", json.loads(args.model_config)), train, args.epochs)
        if args.save_model:
            save_model(args.save_model, model, family="cnn", config=model.config, normalizer={"mean": MEAN, "std": STD})
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    threads = max(args.threads)
    reduce_range = {"auto": None, "on": True, "off": False}[args.reduce_range]
    config = QuantizeConfig(calibration_samples=args.calibration, num_threads=threads, latency_repeats=args.repeats,
                            reduce_range=reduce_range)
    result = quantize(model, train, config, eval_batches=test)
    quantize_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        sizes = {"float": _dir_bytes(save_model(Path(tmp) / "float", model, family="cnn", config=model.config))}
        for name, int8 in result.models.items():
            sizes[name] = _dir_bytes(save_quantized(Path(tmp) / name, int8, family="cnn", config=model.config))

    def int8_runner(int8: Int8Model) -> Callable[[int], Callable[[torch.Tensor], Any]]:
        # A session per thread count for ONNX Runtime; the torch model follows torch.set_num_threads.
        return lambda n: Int8Model(backend=int8.backend, mode=int8.mode, inputs=int8.inputs, payload=int8.payload,
                                   num_threads=n)

    runners: dict[str, Callable[[int], Callable[[torch.Tensor], Any]]] = {"float": lambda n: model}
    runners.update({name: int8_runner(int8) for name, int8 in result.models.items()})
    # The float model in ONNX Runtime too: separates what int8 buys from what the runtime buys.
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        path = str(Path(tmp) / "float.onnx")
        _quant_onnx.export(model, (train[0]["pixels"][:2],), path, input_names=["pixels"], output_name="logits",
                           opset=config.opset)
        float_onnx = Path(path).read_bytes()
    runners["float-ort"] = lambda n: _float_onnx_runner(float_onnx, n)
    pixels = torch.cat([b["pixels"] for b in test])
    grid = _latency_grid(runners, pixels, args.batch_sizes, args.threads, args.repeats)

    names = ["float", *result.models]
    measured = {"float": result.baseline, **result.candidates}
    head = grid[(max(args.batch_sizes), threads)]
    print(f"model: {model.config}")
    print(f"train/load {train_s:.1f} s, quantize (both backends + measuring) {quantize_s:.1f} s; "
          f"torch {torch.__version__}, {threads} threads, reduce_range {args.reduce_range}")
    print(f"\n{'model':<12} {'accuracy':>9} {'agree':>7} {'max|dlogit|':>11} {'size B':>10} {'x float':>8} "
          f"{'ms/sample':>10} {'x float':>8}   (batch {max(args.batch_sizes)}, {threads} threads)")
    for name in names:
        m = measured[name]
        print(f"{name:<12} {m.accuracy:>9.4f} {m.agreement:>7.4f} {m.max_abs_logit_diff:>11.3f} {sizes[name]:>10d} "
              f"{sizes['float'] / sizes[name]:>8.2f} {head[name]:>10.4f} {head['float'] / head[name]:>8.2f}")
    print(f"\nms/sample by batch size and threads ({args.repeats} passes each, fastest kept; "
          "float-ort: the float model in ONNX Runtime):")
    columns = [*names, "float-ort"]
    print(f"{'batch':>6} {'threads':>7} " + " ".join(f"{n:>12}" for n in columns) + "   x float")
    for (batch, n), row in grid.items():
        ratios = " ".join(f"{row['float'] / row[name]:.2f}" for name in columns[1:])
        print(f"{batch:>6} {n:>7} " + " ".join(f"{row[name]:>12.4f}" for name in columns) + f"   {ratios}")
    print(f"\nchosen by quantize(): {result.backend} (gate passed: {result.passed_gate})")
    if args.json:
        figures = {
            "summary": result.summary(),
            "dir_bytes": sizes,
            "latency_ms_per_sample": [{"batch": b, "threads": n, **row} for (b, n), row in grid.items()],
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
