"""Run toy tunes in a process of their own, with a local Ray of their own, so that a test can SIGKILL
the whole process tree mid-tune: ``python -m tests.tune_child SPEC.json``.

SPEC holds ``runs_dir``, ``space`` (a search-space file), ``session_file`` (where the Ray session
directory is written, for the test to find leftover processes) and ``runs``: a list of
``{"fingerprint", "num_samples", "max_epochs", "out"}``, run one after the other in the same run
directory. After each run, ``out`` receives what the test checks: every record's bytes, each trial's
Train storage listing and snapshot time, and the Optuna study's trials.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def toy_config(runs_dir: str, space: str, *, num_samples: int, max_epochs: int) -> Any:
    """The tune of the kill test: one trial at a time, no early stopping before the last epoch."""
    from hybrid.config import Config, DataConfig, TrainConfig, TuneConfig
    from hybrid.testing import tiny_cnn_config

    return Config(
        name="killed", runs_dir=runs_dir, model_name="cnn", model=tiny_cnn_config(dropout=0.2),
        data=DataConfig(image_size=8, num_classes=3),
        train=TrainConfig(max_epochs=max_epochs, batch_size=32, eval_batch_size=128),
        tune=TuneConfig(search_space=space, num_samples=num_samples, max_concurrent=1, seed=0,
                        n_startup_trials=2, grace_period=max_epochs),
    )


def snapshot(run_dir: Path) -> dict[str, Any]:
    """Records' bytes, each trial's Train storage (entries and snapshot mtime), the study's trials."""
    import optuna

    train = run_dir / "tune" / "train"
    storage = {}
    for trial_dir in sorted(train.glob("t*")) if train.is_dir() else []:
        snap = trial_dir / "checkpoint_manager_snapshot.json"
        storage[trial_dir.name] = {
            "entries": sorted(p.name for p in trial_dir.iterdir() if p.name.startswith("epoch_")),
            "snapshot_mtime_ns": snap.stat().st_mtime_ns if snap.exists() else None,
        }
    records = {p.name: p.read_text() for p in sorted((run_dir / "trials").glob("*.json"))}
    study = []
    db = run_dir / "tune" / "optuna.db"
    if db.exists():
        loaded = optuna.load_study(study_name="hybrid", storage=f"sqlite:///{db}")
        study = [[t.number, t.state.name] for t in loaded.get_trials()]
    return {"records": records, "storage": storage, "study": study}


def main(spec_path: str) -> None:
    import ray

    from hybrid._atomic import write_json
    from hybrid.config import RuntimeConfig
    from hybrid.runtime import running
    from hybrid.tune import tune
    from tests.test_train_ray import toy_datasets

    spec = json.loads(Path(spec_path).read_text())
    with running(RuntimeConfig(num_cpus=2), with_spark=False):
        session = ray._private.worker._global_node.get_session_dir_path()
        write_json(spec["session_file"], {"session_dir": session})
        datasets = toy_datasets(n_train=1200, n_val=150)
        for run in spec["runs"]:
            config = toy_config(spec["runs_dir"], spec["space"], num_samples=run["num_samples"],
                                max_epochs=run["max_epochs"])
            lines: list[str] = []
            result = tune(config, datasets, train_rows=1200, metadata={}, run_dir=config.run_dir,
                          fingerprint=run["fingerprint"], echo=lambda line: (lines.append(line), print(line, flush=True)))
            write_json(run["out"], {**snapshot(config.run_dir), "best": result.best.trial_id, "lines": lines,
                                    "best_checkpoint": str(result.best_checkpoint)})


if __name__ == "__main__":
    main(sys.argv[1])
