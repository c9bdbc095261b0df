"""Chaos: kill ``hybrid run`` with SIGKILL at random moments across every stage, re-run it, count what survived.

What it does (figures only, no pass/fail)
    1. An uninterrupted reference run of the config (Fashion-MNIST on a slice by default) in its own
       run directory.
    2. The same config in a second run directory, started again and again: each attempt is killed
       (SIGKILL to the driver and every process below it, all at once) at a random moment inside one
       target stage, until ``--kills`` kills landed; then one last run to the end. The targets cycle
       through ingest, tune (several times: it is where the hours go), distill, quantize and score;
       the moment is a random delay after the stage's ``[run] <stage>: started`` line, at most its
       duration in the reference run (so the kill lands inside it).
    3. Before each kill the trial records are snapshotted. It prints, per kill: the stage it landed in,
       the trials finished at that moment, how many of them were retrained later (goal 0: their records
       must stay byte-identical), the trial-epochs recorded at that moment that were later recomputed
       (goal 0: a resumed trial keeps its recorded epochs, losing only the epoch in flight), the trials
       in flight (each loses at most its epoch in flight), and Ray/Java processes left over.
    4. Finally whether the final ``summary.json`` equals the reference's on every count: rows in,
       quarantined, train/val/test, trials (completed, pruned, failed), and the teacher's config.

Example::

    python benchmarks/chaos_run.py --kills 8 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import progress, render_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("ingest", "tune", "tune", "tune", "ingest", "distill", "quantize", "score")
NUM_SAMPLES = 4
SLICE = [
    "data.max_train_rows=3000", "data.max_test_rows=1000", f"tune.num_samples={NUM_SAMPLES}", "tune.max_concurrent=1",
    "tune.n_startup_trials=2", "tune.time_budget_s=null", "train.max_epochs=3", "distill.max_epochs=2",
    "quantize.backend=onnxruntime",
]
log = progress("chaos")
LEFTOVER_GRACE_S = 15.0


def _cmd(config: str, runs_dir: Path, name: str, extra: list[str]) -> list[str]:
    sets = [*SLICE, f"runs_dir={runs_dir}", f"name={name}", *extra]
    return [sys.executable, "-m", "hybrid", "run", config, *[a for s in sets for a in ("--set", s)]]


def _kill_tree(pid: int) -> tuple[list[Any], set[str]]:
    """SIGKILL ``pid`` and every process below it at once; returns them and the Ray sessions they served."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [], set()
    sessions = set()
    for proc in procs:
        try:
            sessions.update(re.findall(r"session_\d{4}-\d\d-\d\d_[\d_-]+", " ".join(proc.cmdline())))
        except psutil.Error:
            pass
    for proc in procs:  # all at once, the way a node's death or an OOM killer takes a process group
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
    return procs, sessions


def _leftovers(procs: list[Any], sessions: set[str]) -> list[str]:
    """Processes of the killed tree, or of its Ray sessions, still alive (orphans the kill did not reach)."""
    import psutil

    out = {p.pid: p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(name in " ".join(proc.info["cmdline"] or ()) for name in sessions):
                out[proc.pid] = proc
        except psutil.Error:
            continue
    return [f"{pid}:{proc.name()}" for pid, proc in out.items() if proc.is_running()]


def _trials(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted((run_dir / "trials").glob("*.json")):
        try:
            out[path.stem] = {"text": path.read_text(), "record": json.loads(path.read_text())}
        except (OSError, ValueError):
            continue
    return out


def _attempt(cmd: list[str], *, target: str | None, max_delay_s: float, rng: random.Random,
             run_dir: Path) -> dict[str, Any]:
    """Run once; kill inside ``target`` (None: run to the end). Returns what was seen."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    started: dict[str, float] = {}
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            if line.startswith("[run] ") and line.rstrip().endswith(": started"):
                started[line.split()[1].rstrip(":")] = time.monotonic()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: dict[str, Any] = {"target": target, "killed": False}
    if target is not None:
        delay = None
        while proc.poll() is None:
            if target in started and delay is None:
                delay = rng.uniform(0.5, max(1.0, max_delay_s))
                seen["delay_s"] = round(delay, 1)
            if delay is not None and time.monotonic() - started[target] >= delay:
                seen["trials"] = _trials(run_dir)
                killed, sessions = _kill_tree(proc.pid)
                seen["killed"] = True
                break
            time.sleep(0.1)
    proc.wait()
    reader.join(timeout=10)
    if seen["killed"]:
        # A process forked in the instant of the kill (a Ray worker starting up) escapes the tree's
        # snapshot; it counts only if it is still alive once its raylet has been gone for a while.
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while True:
            seen["leftovers"] = _leftovers(killed, sessions)
            if not seen["leftovers"] or time.monotonic() >= deadline:
                break
            time.sleep(1)
    else:
        seen["leftovers"] = []
    seen["rc"] = proc.returncode
    seen["stages_started"] = list(started)
    seen["tail"] = lines[-5:]
    return seen


def _done(run_dir: Path, stage: str) -> bool:
    """Whether ``stage`` will not run again (ingest runs while any stage that needs the data is pending)."""
    if stage == "ingest":
        return all((run_dir / "stages" / f"{s}.json").is_file() for s in ("tune", "distill", "quantize"))
    return (run_dir / "stages" / f"{stage}.json").is_file()


def _counts(summary: dict[str, Any]) -> dict[str, Any]:
    data, tune = summary.get("data") or {}, summary.get("tune") or {}
    return {
        "rows_in": data.get("rows_in"), "quarantined": data.get("quarantined"),
        "split": [data.get("train"), data.get("val"), data.get("test")],
        "trials": [tune.get(k) for k in ("trials", "completed", "pruned", "failed")],
        "teacher_config": tune.get("best_config"),
        "teacher_test_accuracy": (summary.get("models", {}).get("teacher", {}).get("test") or {}).get("accuracy"),
    }


def _show(value: Any) -> str:
    """A value for the table: short ones as JSON, long ones (the teacher's config) by a digest."""
    import hashlib

    text = json.dumps(value, sort_keys=True)
    if len(text) <= 60:
        return text
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:12]} ({len(value)} keys)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default="/tmp/hybrid-chaos")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for both runs")
    parser.add_argument("--reuse-reference", action="store_true", help="keep a finished reference run in --runs-dir")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runs = Path(args.runs_dir)
    shutil.rmtree(runs / "chaos", ignore_errors=True)
    reference_file = runs / "reference" / "summary.json"
    if not (args.reuse_reference and reference_file.is_file()):
        shutil.rmtree(runs, ignore_errors=True)
        log("reference: one uninterrupted run")
        ref = _attempt(_cmd(args.config, runs, "reference", args.set), target=None, max_delay_s=0, rng=rng,
                       run_dir=runs / "reference")
        if ref["rc"] != 0:
            raise SystemExit("the reference run failed:\n" + "\n".join(ref["tail"]))
    reference = json.loads(reference_file.read_text())
    ref_s = reference["durations_s"]["total"]
    durations = reference["durations_s"]
    log(f"reference done in {ref_s:.0f} s: " + ", ".join(f"{s} {durations.get(s, 0):.0f}s" for s in
                                                         ("ingest", "tune", "distill", "quantize", "score")))

    chaos_dir = runs / "chaos"
    cmd = _cmd(args.config, runs, "chaos", args.set)
    kills: list[dict[str, Any]] = []
    attempts = 0
    target_index = 0
    t0 = time.perf_counter()
    while len(kills) < args.kills and attempts < args.kills * 3:
        target = TARGETS[target_index % len(TARGETS)]
        if _done(chaos_dir, target):  # a kill can only land in a stage that still runs
            target_index += 1
            if all(_done(chaos_dir, t) for t in TARGETS):
                break
            continue
        attempts += 1
        max_delay = 0.8 * float(durations.get(target, 10))
        if target == "tune":  # a resumed tune only has its unfinished trials left: aim inside what remains
            finished = sum(1 for t in _trials(chaos_dir).values() if t["record"].get("status") != "running")
            max_delay *= max(1, NUM_SAMPLES - finished) / NUM_SAMPLES
        seen = _attempt(cmd, target=target, max_delay_s=max_delay, rng=rng, run_dir=chaos_dir)
        if seen["killed"]:
            kills.append(seen)
            log(f"kill {len(kills)}: in {target} after {seen['delay_s']} s; "
                f"{sum(1 for t in seen['trials'].values() if t['record'].get('status') != 'running')} trials finished, "
                f"leftover processes: {len(seen['leftovers'])}")
            target_index += 1
        elif seen["rc"] == 0:  # the stage was already done or ended first: the run finished; start over there
            log(f"attempt {attempts}: {target} ended before the kill; the run completed")
            break
        else:
            log(f"attempt {attempts} failed on its own (rc {seen['rc']}): " + " | ".join(seen["tail"][-2:]))
            target_index += 1
    final = _attempt(cmd, target=None, max_delay_s=0, rng=rng, run_dir=chaos_dir)
    chaos_s = time.perf_counter() - t0
    if final["rc"] != 0:
        raise SystemExit("the final re-run failed:\n" + "\n".join(final["tail"]))
    summary = json.loads((chaos_dir / "summary.json").read_text())
    after = _trials(chaos_dir)

    rows = [["kill", "stage", "after s", "trials done", "retrained", "epochs recorded", "epochs recomputed",
             "in flight", "leftover procs"]]
    total_retrained = total_lost = 0
    for n, kill in enumerate(kills, 1):
        done = {k: v for k, v in kill["trials"].items() if v["record"].get("status") != "running"}
        retrained = sum(1 for k, v in done.items() if after.get(k, {}).get("text") != v["text"])
        recorded = recomputed = 0
        in_flight = 0
        for key, trial in kill["trials"].items():
            history = trial["record"].get("history", [])
            recorded += len(history)
            final_history = after.get(key, {}).get("record", {}).get("history", [])
            recomputed += sum(1 for i, epoch in enumerate(history)
                              if i >= len(final_history) or final_history[i] != epoch)
            in_flight += trial["record"].get("status") == "running"
        total_retrained += retrained
        total_lost += recomputed
        rows.append([str(n), kill["target"], str(kill["delay_s"]), str(len(done)), str(retrained), str(recorded),
                     str(recomputed), str(in_flight), str(len(kill["leftovers"]))])
    print()
    print(render_table(rows, left=(0, 1)))
    mine, theirs = _counts(summary), _counts(reference)
    print()
    print(render_table([["count", "reference", "after kills", "equal"]]
                       + [[k, _show(theirs[k]), _show(mine[k]), str(theirs[k] == mine[k])] for k in mine],
                       left=(0, 1, 2)))
    print()
    print(f"kills survived: {len(kills)} of {len(kills)} (attempts {attempts}); finished trials retrained: "
          f"{total_retrained}; recorded trial-epochs recomputed: {total_lost}; final run rc {final['rc']}")
    print(f"wall: reference {ref_s:.0f} s, chaos (all attempts + final) {chaos_s:.0f} s")
    equal = all(theirs[k] == mine[k] for k in mine if k != "teacher_test_accuracy")
    print(f"final summary equals the uninterrupted run's on every count: {equal}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
