"""What a pipeline role does with the heap its start-up built."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from mlpulse.pipeline.heap import freeze_startup


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_startup_garbage_is_freed_and_what_lives_is_frozen() -> None:
    dead, alive = Node(), Node()
    gone = weakref.ref(dead)
    del dead
    freeze_startup()
    assert gone() is None  # collected first, not frozen with the rest
    assert gc.get_freeze_count() > 0
    # A full collection no longer walks what start-up left.
    assert not any(obj is alive for obj in gc.get_objects())
