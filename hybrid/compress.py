"""The compression search (issue 11): Optuna searches the student and its int8 compression, every candidate is
scored after int8, and a rule picks the shipped one from the candidates' Pareto front.

A mode of the distill stage, not a stage of its own: it reads the same inputs (the teacher, the training split
with the teacher's logits) and writes the same output (``run_dir/student``, the chosen candidate's float
student), so ``quantize`` and ``score`` stay as they are and the stage order, fingerprints and ``--restart``
need no new case. It runs when ``compression.search_space`` is set; the distill fingerprint reads the whole
``compression`` section and the search space's file, so a changed search never reuses stale candidates.

How a candidate runs: one Ray Tune trial (:func:`hybrid._compress_ray.run_candidate`) with the sampled
``distill.*`` and ``quantize.*`` values applied to the config. It trains one student with distill's own loop
(:func:`hybrid.distill.student_config`, :func:`~hybrid.distill.student_train_config`, then
:func:`hybrid.train.build_trainer` with the distillation terms, as :func:`hybrid.distill.distill` does) on the
teacher's logits, which the driver computes once for every candidate (:func:`hybrid.distill.add_teacher_logits`),
then quantizes its best checkpoint with the quantize stage's own :func:`hybrid.quantize.quantize_dir`
(calibrated on the plain training split, scored on the validation split, gated against the teacher) and
reports once: the int8 model's ``val_<headline>``, ``latency_ms`` (at one thread, as tune trials time their
costs: candidates share the machine), ``size_bytes`` (the int8 file) and ``params``.

Optuna: a multi-objective study (one direction per ``compression.objectives``; TPE reseeded per candidate as
the tune's) in SQLite. No ASHA: a candidate is scored once, after int8; its per-epoch metric is the float
student's, which is not what the search ranks, so there is nothing sound to stop early on.

The shipped candidate: :func:`choose` builds the front of the candidates whose int8 passed the accuracy gate
(the others cannot ship as int8: the quantize stage would fall back to the float student) and applies
``compression.select`` (:mod:`hybrid.pareto`). The quantize stage then quantizes the chosen student with the
chosen ``quantize.*`` values (same student, settings and calibration rows), so what ships is the candidate's
int8, measured on the test split like any int8 student; its validation score is recorded beside the
candidate's.

Resume, as the tune does: ``compression/fingerprint`` holds the distill fingerprint of the search; any other
wipes the directory. With the same one, finished candidates are kept as recorded, a candidate in flight when
the search died is run again with its sampled values (its student from scratch: its storage is cleared), and
only the missing candidates are added. Layout under the run directory::

    compression/fingerprint          the fingerprint the files below belong to
    compression/optuna.db            the Optuna study
    compression/candidates/t0003.json  one CandidateRecord per candidate (written atomically when it ends)
    compression/train/t0003/         the candidate's student: Ray Train storage
    compression/int8/t0003/          the candidate's int8 model directory
    compression/ray/                 Ray Tune's own files (scratch)
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybrid import _atomic
from hybrid._dataclass_io import to_dict
from hybrid.errors import TrainingError
from hybrid.pareto import Objective, Selection, SelectionRule, json_safe, select

if TYPE_CHECKING:
    import optuna
    import ray.data

    from hybrid.config import Config

__all__ = ["CandidatePaths", "CandidateRecord", "CompressionResult", "candidate_points", "choose", "search"]

CandidateStatus = Literal["completed", "failed"]
STUDY_NAME = "hybrid-compression"
_TRIAL_MEMORY_BYTES = 512 * 1024**2  # the trial actor waits on its trainer, then quantizes the student


@dataclass(frozen=True)
class CandidatePaths:
    """Where a compression search keeps its files inside ``run_dir`` (see the module docstring)."""

    run_dir: Path

    @property
    def root(self) -> Path:
        return self.run_dir / "compression"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint"

    @property
    def study(self) -> Path:
        return self.root / "optuna.db"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates"

    @property
    def train(self) -> Path:
        """Ray Train storage of the candidates' students (``ResumableOptunaSearch`` clears a new one's)."""
        return self.root / "train"

    @property
    def int8(self) -> Path:
        return self.root / "int8"

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    def record(self, trial_id: str) -> Path:
        return self.candidates / f"{trial_id}.json"

    def wipe(self) -> None:
        """Remove the whole search: the fingerprint first, so a half-wiped search never matches one."""
        self.fingerprint.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class CandidateRecord:
    """One candidate: what was sampled and what its int8 model measured."""

    trial_id: str
    """``t<Optuna trial number>``."""
    params: dict[str, Any]
    """Sampled values by dotted config key (``distill.*``, ``quantize.*``)."""
    status: CandidateStatus
    metrics: dict[str, Any] = field(default_factory=dict)
    """``val_<headline>``, ``latency_ms``, ``size_bytes``, ``params`` of the int8 model; ``passed_gate``,
    ``backend``, ``mode``; the float student's ``float_val_<headline>``."""
    checkpoint_path: str | None = None
    """The student's best checkpoint (a model directory)."""
    int8_path: str | None = None
    """Its int8 model directory."""
    error: str | None = None
    duration_s: float = 0.0


def write_candidate(paths: CandidatePaths, record: CandidateRecord) -> Path:
    """Write ``candidates/<id>.json`` atomically."""
    return _atomic.write_json(paths.record(record.trial_id), to_dict(record))


def read_candidates(paths: CandidatePaths) -> dict[str, CandidateRecord]:
    """Every readable candidate record, by trial id (an unreadable one counts as absent)."""
    if not paths.candidates.is_dir():
        return {}
    _atomic.remove_debris(paths.candidates)
    names = {f.name for f in dataclasses.fields(CandidateRecord)}
    out = {}
    for path in sorted(paths.candidates.glob("t*.json")):
        data = _atomic.read_json(path, what="candidate record")
        if isinstance(data, dict) and {"trial_id", "params", "status"} <= set(data):
            try:
                record = CandidateRecord(**{k: v for k, v in data.items() if k in names})
            except TypeError:
                continue
            out[record.trial_id] = record
    return out


# ---------------------------------------------------------------- choosing (pure)


def candidate_points(records: Sequence[CandidateRecord], objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """One :mod:`hybrid.pareto` point per candidate: its id, objective values, gate and sampled values.

    A failed candidate has no objective values (it lands among the front's excluded, with its error).
    """
    extra = ("passed_gate", "backend", "mode")
    out = []
    for r in records:
        point: dict[str, Any] = {"id": r.trial_id, **{o.metric: r.metrics.get(o.metric) for o in objectives}}
        point.update({k: r.metrics[k] for k in extra if k in r.metrics})
        point["params"] = dict(r.params)
        if r.error:
            point["error"] = r.error
        out.append(point)
    return out


def choose(
    records: Sequence[CandidateRecord], objectives: Sequence[Objective], rule: SelectionRule
) -> tuple[Selection, dict[str, Any]]:
    """The shipped candidate and the ``compression.pareto`` record.

    The front is built over the candidates whose int8 passed the accuracy gate; those that failed it are
    listed among the excluded with that reason. If none passed, every candidate competes (and the chosen
    one's record says so: the quantize stage will then ship the float student, as without a search).

    Raises:
        SelectionError: If no candidate has every objective's value, or none meets ``rule``'s constraints.
    """
    points = candidate_points(records, objectives)
    passing = [p for p in points if p.get("passed_gate") is True]
    failing = [p for p in points if p.get("passed_gate") is False]
    pool = [p for p in points if p.get("passed_gate") is not False] if passing else points  # failed ones: excluded
    selection = select(pool, objectives, rule)
    record = selection.front.record()
    if passing:
        record["excluded"] += [{"point": json_safe(p), "reasons": ["its int8 model failed the accuracy gate "
                                                                "(quantize.max_accuracy_drop)"]} for p in failing]
    return selection, record


@dataclass
class CompressionResult:
    """Every candidate, the front and the chosen one."""

    candidates: list[CandidateRecord]
    objectives: tuple[Objective, ...]
    selection: Selection
    pareto: dict[str, Any]
    """``compression.pareto`` (:meth:`hybrid.pareto.ParetoFront.record` plus the gate's exclusions)."""

    @property
    def chosen(self) -> CandidateRecord:
        chosen_id = self.selection.point["id"]
        return next(c for c in self.candidates if c.trial_id == chosen_id)

    @property
    def chosen_checkpoint(self) -> Path:
        """The chosen student's best checkpoint.

        Raises:
            TrainingError: If it is missing from disk.
        """
        path = self.chosen.checkpoint_path
        if path is None or not Path(path).is_dir():
            raise TrainingError(f"compression candidate {self.chosen.trial_id}: its student's checkpoint is missing "
                                f"at {path}; re-run with --restart")
        return Path(path)

    def summary(self) -> dict[str, Any]:
        """The ``compression`` block of ``summary.json``: ``pareto``, ``chosen`` and the candidates' counts."""
        failed = sum(c.status == "failed" for c in self.candidates)
        return {
            "pareto": self.pareto,
            "chosen": {**self.selection.record(), "params": dict(self.chosen.params)},
            "candidates": len(self.candidates), "completed": len(self.candidates) - failed, "failed": failed,
        }


def chosen_params(compression: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled ``distill.*`` / ``quantize.*`` values of the chosen candidate, from a ``compression`` block."""
    return dict(compression.get("chosen", {}).get("params") or {})


# ---------------------------------------------------------------- the search (Ray)


def search(
    config: Config,
    datasets: dict[str, ray.data.Dataset],
    *,
    teacher_dir: Path,
    train_rows: int,
    metadata: dict[str, Any],
    run_dir: Path,
    fingerprint: str,
    echo: Callable[[str], None] = print,
) -> CompressionResult:
    """Run (or resume) the compression search of ``config.compression`` and choose the shipped candidate.

    Args:
        config: The whole run config (``distill`` and ``quantize`` give the values not searched).
        datasets: ``train`` and ``val`` Ray datasets (without teacher logits: added here once).
        teacher_dir: The tuned teacher's model directory.
        train_rows: Rows of the training split.
        metadata: Extra fields for every checkpoint (normaliser, label names...).
        run_dir: The run directory (absolute: trials run in other working directories).
        fingerprint: The distill stage's fingerprint; equal ones mean the search on disk may be resumed.
        echo: Where progress lines go.

    Raises:
        TrainingError: If every candidate failed.
        SelectionError: If ``compression.select`` can choose none.
    """
    import optuna
    from ray import tune as rt

    from hybrid import _compress_ray, _tune_ray, cluster, shipping
    from hybrid.artifacts import read_metadata
    from hybrid.distill import add_teacher_logits, student_train_config
    from hybrid.models import get_family
    from hybrid.placement import HEAD_RESOURCE
    from hybrid.quantize import teacher_reference
    from hybrid.runtime import quiet_ray_data
    from hybrid.search_space import check_compression_space, load_search_space
    from hybrid.tune import default_concurrency
    from hybrid.tune_records import trial_name

    quiet_ray_data()
    cc = config.compression
    space = load_search_space(str(cc.search_space), key="compression.search_space")
    check_compression_space(space, config)
    teacher = read_metadata(teacher_dir)
    family = get_family(teacher["family"])
    objectives = cc.resolved_objectives(family.headline)
    paths = CandidatePaths(Path(run_dir).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, storage = _open_study(paths, fingerprint, objectives, cc.seed, cc.n_startup_trials, echo)
    kept, resume = _plan(study, paths, objectives)
    to_run = cc.num_samples - len(kept)
    train_cfg = student_train_config(teacher, config)
    nodes = cluster.inventory()
    worker = cluster.worker_request(cpus=train_cfg.cpus_per_worker, use_gpu=train_cfg.use_gpu)
    cluster.check_workers_fit("distill", train_cfg, nodes=nodes, what="each candidate's training worker")
    concurrency = cc.max_concurrent or default_concurrency(worker, workers=train_cfg.num_workers, nodes=nodes)
    echo(f"[compress] {cc.num_samples} candidates, {concurrency} at a time: each a student distilled, quantized to "
         f"int8 and scored on {', '.join(f'{o.metric} ({o.mode})' for o in objectives)}"
         + (f"; resuming: {len(kept)} kept, {len(resume)} re-run" if kept or resume else ""))
    if to_run > 0:
        logits_cpus = max(1, cluster.cpus_per_node_free(nodes))
        train = add_teacher_logits(datasets["train"], teacher_dir, input_columns=family.input_columns,
                                   batch_size=config.train.eval_batch_size, num_cpus=logits_cpus)
        reference = teacher_reference(teacher_dir, datasets["val"], num_classes=config.data.num_classes,
                                      eval_batch_size=config.train.eval_batch_size)
        searcher = _tune_ray.ResumableOptunaSearch(
            space=space, metric=[o.metric for o in objectives], mode=[o.mode for o in objectives], storage=storage,
            study_name=STUDY_NAME, sampler=_tune_ray.SeededTPESampler(seed=cc.seed, n_startup_trials=cc.n_startup_trials),
            resume=resume, paths=paths,
        )
        trainable = rt.with_resources(
            rt.with_parameters(
                _compress_ray.run_candidate,
                config=config,
                teacher={"config": teacher["config"], "params": teacher.get("params", {}),
                         "family": teacher["family"], "dir": shipping.ship_dir(teacher_dir, what="the teacher")},
                spec_fields={"num_classes": config.data.num_classes, "train_rows": train_rows, "metadata": metadata},
                datasets={"train": train, "val": datasets["val"], "calibration": datasets["train"]},
                paths=paths,
                reference=reference,
            ),
            # As a tune trial: no CPU of its own (its student's worker has one); it sits on the head.
            {"cpu": 0, "memory": _TRIAL_MEMORY_BYTES, HEAD_RESOURCE: 0.001},
        )
        shutil.rmtree(paths.ray, ignore_errors=True)
        rt.Tuner(
            trainable,
            tune_config=rt.TuneConfig(search_alg=searcher, num_samples=to_run, max_concurrent_trials=concurrency,
                                      time_budget_s=cc.time_budget_s),
            run_config=rt.RunConfig(name="search", storage_path=str(paths.ray), verbose=0,
                                    callbacks=[_compress_ray.CandidateRecorder(paths=paths, total=cc.num_samples,
                                                                               done=len(kept), echo=echo)],
                                    failure_config=rt.FailureConfig(max_failures=0)),
        ).fit()
    records = read_candidates(paths)
    numbers = sorted(t.number for t in study.get_trials(deepcopy=False))
    candidates = [records[trial_name(n)] for n in numbers if trial_name(n) in records]
    if not any(c.status == "completed" for c in candidates):
        errors = "; ".join(f"{c.trial_id}: {c.error}" for c in candidates if c.error)[:2000]
        raise TrainingError(f"compression search: all {len(candidates)} candidates failed; first errors: {errors}")
    rule = cc.rule(objectives[0])
    selection, pareto = choose(candidates, objectives, rule)
    result = CompressionResult(candidates=candidates, objectives=objectives, selection=selection, pareto=pareto)
    echo(f"[compress] {len(pareto['front'])} candidates on the front; chose {result.chosen.trial_id} "
         f"({selection.detail})")
    return result


def _open_study(
    paths: CandidatePaths, fingerprint: str, objectives: Sequence[Objective], seed: int, n_startup_trials: int,
    echo: Callable[[str], None],
) -> tuple[optuna.Study, Any]:
    """The study of the search with ``fingerprint`` (see :func:`hybrid._tune_ray.open_study`)."""
    from hybrid._tune_ray import open_study

    return open_study(paths, fingerprint=fingerprint,
                      directions=["maximize" if o.mode == "max" else "minimize" for o in objectives],
                      study_name=STUDY_NAME, seed=seed, n_startup_trials=n_startup_trials, where=paths.root,
                      records=paths.candidates, objectives_key="compression.objectives", echo=echo, stage="compress")


def plan_candidates(
    trials: Sequence[tuple[int, str, int]], records: Mapping[str, CandidateRecord]
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """Sort a study's trials (``(number, state, storage id)``; state ``RUNNING`` or a finished one) into kept,
    to run again, and to tell Optuna (a final record whose end Optuna never heard of). Pure.

    Returns:
        ``(kept ids, [(id, storage id) to re-run], ids whose record must be told to Optuna)``.
    """
    from hybrid.tune_records import trial_name

    kept, rerun, tell = [], [], []
    for number, state, storage_id in sorted(trials):
        tid = trial_name(number)
        if state != "RUNNING":
            kept.append(tid)
        elif tid in records:  # killed between writing the record and telling Optuna
            tell.append(tid)
            kept.append(tid)
        else:
            rerun.append((tid, storage_id))
    return kept, rerun, tell


def _plan(study: optuna.Study, paths: CandidatePaths, objectives: Sequence[Objective]) -> tuple[list[str], list[int]]:
    """Apply :func:`plan_candidates`: mend what a kill left, clear the storage of candidates to re-run."""
    from optuna.trial import TrialState

    from hybrid.tune_records import trial_name

    records = read_candidates(paths)
    trials = study.get_trials(deepcopy=False)
    kept, rerun, tell = plan_candidates([(t.number, t.state.name, t._trial_id) for t in trials], records)
    for trial in trials:
        tid = trial_name(trial.number)
        if trial.state.is_finished() and tid not in records:  # killed as it failed, before its record
            write_candidate(paths, CandidateRecord(tid, dict(trial.params), "failed",
                                                   error="not recorded: the search was killed as it ended"))
        if tid in tell:
            record = records[tid]
            values = [record.metrics.get(o.metric) for o in objectives]
            if record.status == "failed" or any(not isinstance(v, int | float) or not math.isfinite(v) for v in values):
                study.tell(trial.number, state=TrialState.FAIL)
            else:
                study.tell(trial.number, values, state=TrialState.COMPLETE)
    for tid, _ in rerun:
        shutil.rmtree(paths.train / tid, ignore_errors=True)
        shutil.rmtree(paths.int8 / tid, ignore_errors=True)
    return kept, [storage_id for _, storage_id in rerun]

