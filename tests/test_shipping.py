"""hybrid.shipping: directories carried to Ray workers through the object store (see test_no_shared_disk for
the multi-node proof)."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid.errors import ConfigError
from hybrid.shipping import ShippedDir, cache_root, local_path, ship_dir


def test_a_missing_directory_fails_on_the_driver_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.pretrained_dir: '.*nowhere' must be a local directory"):
        ship_dir(tmp_path / "nowhere", what="model.pretrained_dir")


def test_a_plain_path_is_opened_where_it_is_and_a_handle_pickles_without_its_files() -> None:
    assert local_path("/models/minilm") == "/models/minilm"
    handle = ShippedDir(name="minilm", source="/models/minilm", digest="ab" * 32, ref="a-ref", size_bytes=3)
    copy = pickle.loads(pickle.dumps(handle))
    assert (copy.name, copy.source, copy.digest, copy.ref, copy.size_bytes) == ("minilm", "/models/minilm",
                                                                                "ab" * 32, "a-ref", 3)
    assert len(pickle.dumps(handle)) < 400


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.mark.ray
def test_workers_materialise_one_copy_per_node_named_as_the_original(local_ray: None, tmp_path: Path) -> None:
    import ray

    source = tmp_path / "my-model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 1000)
    (source / "empty").write_bytes(b"")
    shipped = ship_dir(source)
    try:
        assert ship_dir(source) is shipped  # unchanged: put once
        assert shipped.size_bytes == 8 + 256_000

        @ray.remote(num_cpus=0)
        def open_it(handle: ShippedDir) -> tuple[str, dict[str, bytes]]:
            path = Path(handle.local())
            return str(path), {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}

        # Several workers at once: one copy wins the rename, every worker reads the same complete files.
        results = ray.get([open_it.remote(shipped) for _ in range(4)])
        paths = {path for path, _ in results}
        assert len(paths) == 1
        path = Path(paths.pop())
        assert path.name == "my-model" and path.parent.parent == cache_root() and path != source
        expected = {"config.json": b'{"a": 1}', "sub/weights.bin": bytes(range(256)) * 1000, "empty": b""}
        assert all(files == expected for _, files in results)
        assert not [p for p in cache_root().iterdir() if p.name.startswith(".tmp-")
                    and shipped.digest[:32] in p.name]  # no half-written copy left behind

        (source / "config.json").write_text('{"a": 2}')  # a changed directory is shipped anew
        changed = ship_dir(source)
        assert changed.digest != shipped.digest
        assert ray.get(open_it.remote(changed))[1]["config.json"] == b'{"a": 2}'
    finally:
        for digest in {shipped.digest, ship_dir(source).digest}:
            shutil.rmtree(cache_root() / digest[:32], ignore_errors=True)
