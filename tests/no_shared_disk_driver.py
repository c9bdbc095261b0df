"""Driver for tests/test_no_shared_disk.py: run inside a private mount namespace, where only it sees ``--private``.

Usage: ``python no_shared_disk_driver.py --address A --private DIR --storage DIR --minilm DIR --out FILE
[--no-ship]``. It copies the pretrained MiniLM into ``--private``, saves a 1-layer BERT teacher there, then
through hybrid's real API (a cluster's Ray, no mocks): trains a 1-layer BERT from the private
``pretrained_dir`` with ``build_trainer(...).fit()``, adds the teacher's logits with ``add_teacher_logits``
and trains a student that starts from the teacher's layers (``student_config(..., teacher_dir=...)``).
Each step's outcome (error text or node id) goes to ``--out`` as JSON. ``--no-ship`` turns shipping off
(``ship_dir`` hands workers the driver's path, as hybrid did before), so the test can show the bug it guards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray


def _step(out: dict[str, Any], name: str, fn: Any) -> Any:
    try:
        value = fn()
        out[name] = {"ok": True, **(value if isinstance(value, dict) else {})}
        return value
    except Exception as err:  # recorded for the test to judge, with the whole chain of causes
        out[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-6000:]}
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--address", "--private", "--storage", "--minilm", "--out"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--no-ship", action="store_true")
    args = parser.parse_args()

    private = Path(args.private)
    minilm = private / f"minilm-{uuid.uuid4().hex[:8]}"  # a unique name: its own cache entry on the nodes
    shutil.copytree(args.minilm, minilm)
    ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)

    from hybrid import shipping
    from hybrid._dataclass_io import to_dict
    from hybrid.artifacts import save_model
    from hybrid.config import TrainConfig
    from hybrid.distill import TEACHER_LOGITS, add_teacher_logits, student_config
    from hybrid.models import create_model, model_config
    from hybrid.train import LoopSpec, build_trainer

    if args.no_ship:
        shipping.ship_dir = lambda path, what="": str(path)  # type: ignore[assignment]

    out: dict[str, Any] = {"driver_node_id": ray.get_runtime_context().get_node_id(), "minilm": str(minilm),
                           "driver_sees_minilm": (minilm / "config.json").is_file()}

    @ray.remote(num_cpus=1)
    def seen_by_a_worker(path: str) -> dict[str, Any]:
        import os

        return {"exists": os.path.exists(path), "node_id": ray.get_runtime_context().get_node_id()}

    out["worker_view"] = ray.get(seen_by_a_worker.remote(str(minilm)))

    teacher_dir = private / "teacher"
    arch = model_config("bert", {"pretrained_dir": str(minilm), "num_layers": 1, "max_length": 16})
    save_model(teacher_dir, create_model("bert", config=arch), family="bert", config=arch,
               label_names=["negative", "positive"])

    rng = np.random.default_rng(0)
    rows = [{"input_ids": np.concatenate([[101], rng.integers(1000, 5000, 6), [102]]).astype(np.int32),
             "label": i % 2} for i in range(32)]
    data = ray.data.from_items(rows).materialize()
    train = to_dict(TrainConfig(max_epochs=1, batch_size=8, eval_batch_size=16, schedule="constant", lr=1e-4))

    def fit(name: str, model: dict[str, Any], dataset: Any, **extra: Any) -> dict[str, Any]:
        spec = LoopSpec(model_name="bert", model=model, train=train, num_classes=2, train_rows=len(rows),
                        metadata={"label_names": ["negative", "positive"]}, **extra)
        result = build_trainer(spec, {"train": dataset, "val": dataset}, storage_path=args.storage, name=name).fit()
        if result.error is not None:
            raise result.error
        return {"node_id": result.metrics["node_id"], "val_accuracy": result.metrics["val_accuracy"]}

    _step(out, "train", lambda: fit("bert", to_dict(arch), data))

    datasets: dict[str, Any] = {}

    def logits() -> dict[str, Any]:
        ds = add_teacher_logits(data, teacher_dir, input_columns=("input_ids", "attention_mask"), batch_size=16)
        datasets["logits"] = ds
        batch = ds.take_batch(64, batch_format="numpy")
        return {"rows": len(batch[TEACHER_LOGITS]), "shape": list(np.stack(batch[TEACHER_LOGITS]).shape)}

    _step(out, "teacher_logits", logits)

    student = student_config("bert", to_dict(arch), {}, width_multiplier=1.0, teacher_dir=teacher_dir)
    out["student_config"] = {"pretrained_dir": student.pretrained_dir, "init_from": student.init_from}
    # Without the teacher's logits (the step failed), zeros stand in: the student must still fail on its own.
    with_logits = datasets["logits"] if "logits" in datasets else data.map_batches(
        lambda b: {**b, TEACHER_LOGITS: np.zeros((len(b["label"]), 2), np.float32)}, batch_format="numpy"
    ).materialize()
    _step(out, "student", lambda: fit("student", to_dict(student), with_logits,
                                      distill={"alpha": 0.5, "temperature": 2.0}))
    out["shipped_digests"] = [s.digest for s in shipping._SHIPPED.values()]
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
