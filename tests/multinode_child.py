"""Driver for tests/test_multinode.py: 1 vs 2 DDP training workers on a multi-node cluster (RAY_ADDRESS).

Prints one JSON line: each fit's validation accuracy and the nodes its
training workers ran on (from Ray's state API, by node id).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile

import numpy as np


def main(address: str, storage: str) -> None:
    import ray
    import ray.data

    from hybrid.config import TrainConfig
    from hybrid.placement import StagePlacement
    from hybrid.testing import tiny_cnn_config, toy_images
    from hybrid.train import LoopSpec, build_trainer

    ray.init(address=address, logging_level="ERROR",
             runtime_env={"env_vars": {"RAY_ADDRESS": address, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    datasets = {}
    for name, n, seed in (("train", 1200, 0), ("val", 300, 1)):
        images, labels = toy_images(n, seed=seed, noise=0.6)
        datasets[name] = ray.data.from_items(
            [{"pixels": img.astype(np.float32), "label": int(lbl)} for img, lbl in zip(images, labels)]
        ).materialize()
    out = {}
    for workers in (1, 2):
        # train.batch_size is per worker: 2 workers at 16 take the same global batch of 32, and so the same
        # steps per epoch, as 1 worker at 32 (at 32 each they would take half the steps: 0.77 vs 0.85 seen).
        train = TrainConfig(max_epochs=3, batch_size=32 // workers, lr=3e-3, eval_batch_size=64, schedule="constant",
                            num_workers=workers, seed=0)
        spec = LoopSpec(model_name="cnn", model=dataclasses.asdict(tiny_cnn_config()), train=dataclasses.asdict(train),
                        num_classes=3, train_rows=1200, metadata={})
        where = StagePlacement()
        where.start()
        result = build_trainer(spec, datasets, storage_path=storage, name=f"ddp{workers}").fit()
        placed = where.stop()
        out[workers] = {"val_accuracy": result.metrics["val_accuracy"],
                        "train_workers": (placed["actors"] or {}).get("train_workers", {})}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp())
