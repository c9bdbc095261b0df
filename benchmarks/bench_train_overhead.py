"""What Ray Train costs over a plain PyTorch loop: samples/s of hybrid's CNN, both ways, same run.

What is compared
    The same CNN (``hybrid.models.create_model("cnn")`` with its default config), the same synthetic
    data (``--rows`` random 28x28 images, 10 random labels), batch size, optimiser, schedule,
    precision and torch thread count, trained for ``--epochs`` epochs:

    - ``plain``: :func:`hybrid.train.train_epoch` in this (driver) process over in-memory tensors,
      reshuffled each epoch (``drop_last`` like Ray's iterator), ``torch.set_num_threads(--cpus)``;
    - ``ray``: :func:`hybrid.train.build_trainer` (one ``TorchTrainer`` worker with
      ``cpus_per_worker = --cpus``) over materialised Ray datasets with columns ``pixels``
      (float32[784]) and ``label`` (int). ``--pixels-format tensor`` (default) builds them with
      ``from_items`` (Ray's tensor column); ``list`` uses ``list<float>``, the layout RayDP
      delivers from Spark. Both iterate far faster than this CNN trains on CPU.

    Each is run for every ``--precision`` (``fp32``, ``bf16``: CPU autocast).

How to read the numbers
    ``last epoch`` rows are samples/s of the training pass of the last epoch only: for Ray that is
    the ``train_samples_per_s`` metric the loop reports, which excludes worker start-up, the
    validation pass and checkpointing; the plain loop is timed the same way. ``x plain`` is the
    Ray figure divided by the plain one at the same precision: 1.00 means no overhead, 0.80 means
    Ray Train's data path and worker cost 20 %. The ``fit() end-to-end`` row divides
    ``rows * epochs`` by the wall time of ``trainer.fit()``, so it adds Ray Train's start-up, the
    per-epoch validation on ``--val-rows`` rows and checkpoint writes: that is the price of a
    short trial, and it shrinks as runs get longer. The first epoch of either path includes
    one-off costs (allocator, iterator start), hence ``--epochs`` >= 2 for a meaningful last epoch.
    On a shared machine, compare ratios rather than absolute samples/s: on a busy 2-core box a
    single run's ``x plain`` swings by tens of percent either way, so rerun before concluding.

    The defaults take about five minutes on 2 cores (four passes of 20k rows per precision plus
    two Ray Train start-ups). If other Ray instances run on the same host, Ray Train's
    ``PlacementGroupCleaner`` may log a ``ConnectionError: Found multiple active Ray instances``
    traceback; it does not affect these figures (see the README's stack notes).

Example::

    python benchmarks/bench_train_overhead.py --rows 20000 --epochs 2 --cpus 2 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from _table import progress, render_table

if TYPE_CHECKING:
    import numpy as np
    import ray.data
    import torch

PixelsFormat = Literal["tensor", "list"]
NUM_CLASSES = 10
IMAGE_SIZE = 28


@dataclass
class Row:
    """One line of the results table."""

    precision: str
    run: str
    samples_per_s: float
    note: str = ""


log = progress("bench_train")




def synthetic(rows: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (rows, 784) float32, labels (rows,) int64)``, standard-normal pixels, uniform labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((rows, IMAGE_SIZE * IMAGE_SIZE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=rows, dtype=np.int64)
    return pixels, labels


def to_ray_dataset(
    pixels: np.ndarray, labels: np.ndarray, *, blocks: int, pixels_format: PixelsFormat
) -> ray.data.Dataset:
    """A materialised dataset with columns ``pixels`` (float32[784]) and ``label`` (int).

    ``tensor``: ``from_items`` of numpy rows, which Ray stores as its tensor extension type.
    ``list``: ``from_arrow`` with ``pixels: list<float>`` and ``label: int32``, the layout that
    RayDP hands over from Spark's ``array<float>`` in :func:`hybrid.ingest.to_ray`.
    """
    import numpy as np
    import pyarrow as pa
    import ray.data

    if pixels_format == "tensor":
        items = [{"pixels": p, "label": int(y)} for p, y in zip(pixels, labels)]
        return ray.data.from_items(items, override_num_blocks=blocks).materialize()
    width = pixels.shape[1]
    offsets = pa.array(np.arange(0, (len(pixels) + 1) * width, width, dtype=np.int32))
    table = pa.table({
        "pixels": pa.ListArray.from_arrays(offsets, pa.array(pixels.ravel())),
        "label": pa.array(labels.astype(np.int32)),
    })
    step = -(-len(pixels) // blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, len(pixels), step)]).materialize()


def plain_batches(
    pixels: torch.Tensor, labels: torch.Tensor, *, batch_size: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled full batches (``drop_last``), as dicts shaped like Ray's ``iter_torch_batches``."""
    import torch

    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield {"pixels": pixels[idx], "label": labels[idx]}


def run_plain(
    train_config: Any, model_config: Any, pixels: np.ndarray, labels: np.ndarray
) -> list[float]:
    """Train in this process; return samples/s of each epoch's training pass."""
    import torch

    from hybrid.models import create_model, get_family
    from hybrid.schedules import build_scheduler
    from hybrid.train import make_optimizer, train_epoch

    torch.set_num_threads(train_config.cpus_per_worker)
    torch.manual_seed(train_config.seed)
    model = create_model("cnn", config=model_config)
    optimizer = make_optimizer(model, train_config)
    steps = max(1, len(labels) // train_config.batch_size // train_config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, train_config, steps_per_epoch=steps)
    x, y = torch.from_numpy(pixels), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(train_config.seed)
    rates = []
    for epoch in range(train_config.max_epochs):
        t0 = time.perf_counter()
        loss, seen = train_epoch(
            model,
            plain_batches(x, y, batch_size=train_config.batch_size, generator=generator),
            optimizer=optimizer,
            scheduler=scheduler,
            config=train_config,
            columns=get_family("cnn").input_columns,
            device=torch.device("cpu"),
            epoch=epoch,
        )
        seconds = time.perf_counter() - t0
        rates.append(seen / seconds)
        log(f"  plain epoch {epoch + 1}: {seen:,} samples in {seconds:.1f} s ({seen / seconds:,.0f}/s), loss {loss:.3f}")
    return rates


def run_ray(
    train_config: Any, model_config: Any, datasets: dict[str, ray.data.Dataset], *, rows: int, storage: str
) -> tuple[dict[str, Any], float]:
    """Fit one ``TorchTrainer``; return its last reported metrics and the wall time of ``fit()``."""
    import ray.train

    from hybrid.train import LoopSpec, build_trainer

    class EpochLog(ray.train.UserCallback):
        """Prints each epoch's figures (runs in the Train controller; its stdout reaches the driver)."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            m = metrics[0]
            print(
                f"[bench_train] ray epoch {m.get('epoch')}: train {m.get('train_samples_per_s', 0):,.0f} samples/s, "
                f"epoch incl. validation {m.get('epoch_time_s', 0):.1f} s, loss {m.get('train_loss', 0):.3f}",
                flush=True,
            )

    spec = LoopSpec(
        model_name="cnn",
        model=dataclasses.asdict(model_config),
        train=dataclasses.asdict(train_config),
        num_classes=NUM_CLASSES,
        train_rows=rows,
        metadata={},
    )
    trainer = build_trainer(
        spec, datasets, storage_path=storage, name=f"bench_{train_config.precision}", callbacks=[EpochLog()]
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed: {result.error}") from result.error
    return dict(result.metrics or {}), fit_s


def machine_info() -> list[str]:
    """Lines describing the machine, the CPU's bf16 support and the versions that matter."""
    import ray
    import torch

    flags = set()
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    bf16 = ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16")) if flags else "?"
    resources = ray.cluster_resources()
    return [
        f"machine: {platform.machine()}, cores: {os.cpu_count()}, "
        f"Ray CPUs: {resources.get('CPU', 0):g}, CPU bf16 support: {bf16}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}",
    ]


def format_table(rows: list[Row]) -> str:
    """Fixed-width table; ``x plain`` divides by the plain loop's last-epoch rate at the same precision."""
    plain = {r.precision: r.samples_per_s for r in rows if r.run.startswith("plain")}
    header = ("precision", "run", "samples/s", "x plain", "note")
    lines = [header]
    for r in rows:
        ratio = r.samples_per_s / plain[r.precision] if plain.get(r.precision) else float("nan")
        lines.append((r.precision, r.run, f"{r.samples_per_s:,.0f}", f"{ratio:.2f}", r.note))
    return render_table(lines, left=(0, 1, 4))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="training rows (28x28 images)")
    parser.add_argument("--val-rows", type=int, default=1_000,
                        help="validation rows for Ray Train's per-epoch evaluation (in fit() time only)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is reported")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per optimiser step")
    parser.add_argument("--cpus", type=int, default=2,
                        help="torch threads of the plain loop = cpus_per_worker of the Ray Train worker")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--blocks", type=int, default=8, help="Ray blocks of the training dataset")
    parser.add_argument("--pixels-format", choices=("tensor", "list"), default="tensor",
                        help="Ray column type of pixels: tensor (from_items) or list<float> (as RayDP delivers)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("rows", "val_rows", "epochs", "batch_size", "cpus", "blocks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    if args.rows < args.batch_size:
        parser.error(f"--rows must be >= --batch-size={args.batch_size} (full batches only), but got {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the plain loop and Ray Train for each precision and print the comparison."""
    args = parse_args(argv)
    import ray

    from hybrid.config import RuntimeConfig, TrainConfig
    from hybrid.models import CNNConfig
    from hybrid.runtime import running

    model_config = CNNConfig(image_size=IMAGE_SIZE, num_classes=NUM_CLASSES)
    t_start = time.perf_counter()
    log(f"synthetic data: {args.rows:,} training + {args.val_rows:,} validation rows of {IMAGE_SIZE}x{IMAGE_SIZE}")
    pixels, labels = synthetic(args.rows, seed=args.seed)
    val_pixels, val_labels = synthetic(args.val_rows, seed=args.seed + 1)
    results: list[Row] = []
    log("starting Ray (no Spark)...")
    with running(RuntimeConfig(), with_spark=False), tempfile.TemporaryDirectory(prefix="bench_train_") as storage:
        log(f"Ray up after {time.perf_counter() - t_start:.1f} s")
        ray_cpus = ray.cluster_resources().get("CPU", 0)
        if args.cpus > ray_cpus:
            raise SystemExit(f"--cpus must be <= the Ray cluster's CPUs ({ray_cpus:g}), but got {args.cpus}")
        info = machine_info()
        for line in info:
            log(line)
        t0 = time.perf_counter()
        datasets = {
            "train": to_ray_dataset(pixels, labels, blocks=args.blocks, pixels_format=args.pixels_format),
            "val": to_ray_dataset(val_pixels, val_labels, blocks=1, pixels_format=args.pixels_format),
        }
        schema = datasets["train"].schema()
        columns = ", ".join(f"{n}: {t}" for n, t in zip(schema.names, schema.types))
        log(f"Ray datasets materialised in {time.perf_counter() - t0:.1f} s ({columns})")
        for precision in args.precision:
            train_config = TrainConfig(
                max_epochs=args.epochs,
                batch_size=args.batch_size,
                precision=precision,
                num_workers=1,
                cpus_per_worker=args.cpus,
                seed=args.seed,
            )
            log(f"{precision}: plain PyTorch loop in the driver, {args.cpus} threads")
            plain = run_plain(train_config, model_config, pixels, labels)
            results.append(Row(precision, "plain loop, last epoch", plain[-1]))
            log(f"{precision}: Ray Train, 1 worker x {args.cpus} CPUs")
            metrics, fit_s = run_ray(train_config, model_config, datasets, rows=args.rows, storage=storage)
            results.append(Row(precision, "Ray Train, last epoch", float(metrics.get("train_samples_per_s", "nan"))))
            results.append(
                Row(precision, "Ray Train fit() end-to-end", args.rows * args.epochs / fit_s,
                    note=f"fit() {fit_s:.1f} s for {args.epochs} epoch(s), start-up + validation included")
            )
            log(f"{precision}: fit() took {fit_s:.1f} s")
    print()
    print(f"One training epoch of hybrid's CNN: {args.rows:,} rows, batch {args.batch_size}, "
          f"{args.cpus} CPU threads, {args.epochs} epoch(s) per run, Ray pixels as {args.pixels_format}")
    for line in info:
        print(line)
    print()
    print(format_table(results))
    print("\nx plain = samples/s relative to the plain loop's last epoch at the same precision (1.00 = no overhead).")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
