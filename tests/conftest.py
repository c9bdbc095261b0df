"""Shared pytest settings for hybrid's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_single_thread() -> Iterator[None]:
    """Run each test's torch ops on one thread.

    Unit tests use tensors of a few kilobytes, where intra-op threads only add synchronisation; on a
    busy 2-core machine a second thread made a tiny CNN's forward pass 100x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
