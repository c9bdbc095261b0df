"""deploy/ kept in step with the project: the KubeRay manifest, the Dockerfile, pyproject.toml and setup.sh.

Each check is a way the cluster recipe silently rots when something else is edited: a Ray pin bumped
in pyproject.toml but not in the manifest (KubeRay then runs a Ray the image does not hold), an image
renamed in one pod only, an install command changed in setup.sh but not in the image, the head given
CPUs (trials then land on it), or a pod that writes runs_dir to its own disk.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "deploy" / "raycluster.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SETUP = ROOT / "scripts" / "setup.sh"
RUNS_VOLUME_CLAIM = "hybrid-runs"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin(pyproject: dict[str, Any] | None = None) -> str:
    """X of the ``ray[...]==X`` dependency of ``pyproject`` (default: the repository's pyproject.toml)."""
    deps = (pyproject or _pyproject())["project"]["dependencies"]
    pins = [re.fullmatch(r"ray\[[\w,]+\]==([\w.]+)", d.replace(" ", "")) for d in deps]
    found = [m.group(1) for m in pins if m]
    assert len(found) == 1, f"expected one `ray[...]==X` pin in pyproject.toml, found {found}"
    return found[0]


def _documents() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def _cluster() -> dict[str, Any]:
    return _documents()["RayCluster"]


def _pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template of the cluster, by group: ``head`` and each worker group's name."""
    spec = _cluster()["spec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    for group in spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def _dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return [" ".join(i.split()) for i in "\n".join(lines).replace("\\\n", " ").split("\n") if i.strip()]


def _intended_tag() -> str:
    tags = re.findall(r"^# image: (\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert len(tags) == 1, f"deploy/Dockerfile must name its tag once in a '# image: NAME:TAG' comment, found {tags}"
    return tags[0]


def _setup_install_args() -> list[str]:
    """The arguments scripts/setup.sh passes to ``pip install`` for hybrid (the project's install command)."""
    found = re.findall(r'^\s*"\$PY" -m pip install (.+)$', SETUP.read_text(), flags=re.M)
    assert len(found) == 1, f"expected one '\"$PY\" -m pip install ...' line in scripts/setup.sh, found {found}"
    return shlex.split(found[0])


def test_ray_version_is_the_pyproject_pin() -> None:
    assert _cluster()["spec"]["rayVersion"] == _ray_pin()


def test_every_pod_runs_the_dockerfiles_image() -> None:
    tag = _intended_tag()
    images = {f"{group}/{c['name']}": c["image"] for group, pod in _pod_specs().items() for c in pod["containers"]}
    assert images and set(images.values()) == {tag}, f"every container must run {tag}, but got {images}"
    # The tag follows hybrid's version: a new release is a new image, never a changed one under an old tag.
    assert tag.rsplit(":", 1)[1] == _pyproject()["project"]["version"]
    assert f"-t {tag} " in DOCKERFILE.read_text(), "the build command in the Dockerfile's comment must use its tag"


def test_head_takes_no_work_and_every_group_is_a_real_pool() -> None:
    spec = _cluster()["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # KubeRay wants strings here
    assert spec["workerGroupSpecs"], "a cluster without a worker group has nowhere to run trials"
    for group in spec["workerGroupSpecs"]:
        assert group["replicas"] >= 1 and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group
        assert "num-cpus" not in group["rayStartParams"] or group["rayStartParams"]["num-cpus"] != "0", group
    for name, pod in _pod_specs().items():
        for container in pod["containers"]:
            res = container["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), (name, res)


def test_every_pod_mounts_the_shared_runs_volume_at_one_path() -> None:
    claim = _documents()["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == RUNS_VOLUME_CLAIM
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every pod mounts it at once"
    paths = {}
    for name, pod in _pod_specs().items():
        runs = [v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == RUNS_VOLUME_CLAIM]
        assert len(runs) == 1, f"pod {name} must have one volume of claim {RUNS_VOLUME_CLAIM}, got {runs}"
        for container in pod["containers"]:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] == runs[0]]
            assert len(mounts) == 1, f"{name}/{container['name']} must mount the runs volume once, got {mounts}"
            paths[f"{name}/{container['name']}"] = mounts[0]
    assert len(set(paths.values())) == 1, f"the runs volume must be at the same path everywhere, but got {paths}"
    # Each submit line in the manifest's comment writes runs there and joins the cluster instead of starting one.
    (mount,) = set(paths.values())
    submit = [ln for ln in MANIFEST.read_text().splitlines() if ln.startswith("#") and "hybrid run " in ln]
    assert submit, "the manifest's comment must show how to submit `hybrid run`"
    for line in submit:
        assert f"--set runs_dir={mount}" in line and "--set runtime.ray_address=auto" in line, line


def test_dockerfile_installs_jdk17_and_hybrid_as_setup_sh_does() -> None:
    instructions = _dockerfile_instructions()
    base = [i for i in instructions if i.startswith("FROM ")]
    assert len(base) == 1 and re.fullmatch(r"FROM python:3\.11[-.\w]*", base[0]), base
    assert _pyproject()["project"]["requires-python"] == ">=3.11,<3.12", "update the base image with the Python range"
    runs = [i for i in instructions if i.startswith("RUN ")]
    assert any("apt-get install" in r and "openjdk-17-jre-headless" in r.split() for r in runs), runs
    assert any(re.fullmatch(r"ENV JAVA_HOME=\S+.*", i) for i in instructions), "JAVA_HOME must be set for Spark"

    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1, f"hybrid is installed by exactly one command, as in scripts/setup.sh; got {installs}"
    args = shlex.split(installs[0].split("pip install", 1)[1])
    assert args == _setup_install_args(), "deploy/Dockerfile must install hybrid with scripts/setup.sh's command"
    assert re.search(r"\bpython -m pip install\b", installs[0]), installs[0]
    copy = instructions.index(next(i for i in instructions if i.startswith("COPY ")))
    assert copy < instructions.index(installs[0]), "the source must be in the image before it is installed"


def test_a_pin_bumped_without_the_manifest_fails_the_check() -> None:
    """The manifest is compared with pyproject's pin as it stands, not with a number copied into this test."""
    text = (ROOT / "pyproject.toml").read_text()
    bumped = re.sub(r"(ray\[[\w,]+\]==)([\w.]+)", lambda m: m.group(1) + m.group(2) + ".post1", text)
    assert _ray_pin(tomllib.loads(bumped)) == _ray_pin() + ".post1" != _cluster()["spec"]["rayVersion"]


def test_the_repository_tracks_no_symlinks_and_none_of_what_setup_installs() -> None:
    """A fresh clone must hold only the project: a tracked link (a worktree's ``data -> /work/main/data``
    once landed this way) makes setup.sh's ``mkdir -p data`` loop on it, and CI fails before one test runs."""
    import subprocess

    if not (ROOT / ".git").exists():
        return  # an sdist or copied tree: nothing tracked to check
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s"], capture_output=True, text=True, check=True)
    links = [line.split("\t", 1)[1] for line in listing.stdout.splitlines() if line.startswith("120000 ")]
    assert links == [], f"tracked symlinks (check them out as plain files or ignore them): {links}"
    tracked = {line.split("\t", 1)[1].split("/", 1)[0] for line in listing.stdout.splitlines()}
    assert not tracked & {"data", "runs", ".venv"}, f"setup/run outputs are tracked: {sorted(tracked & {'data', 'runs', '.venv'})}"
