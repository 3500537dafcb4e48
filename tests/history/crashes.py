"""A process killed between two file-system steps, simulated in-process.

`crash_at(k)` lets the first k-1 renames, replaces and unlinks happen and makes the k-th
and every later one raise `Crash`: like a `kill -9` at that moment, nothing a dying
process would have cleaned up is cleaned up (a temporary file stays where it was).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest


class Crash(BaseException):
    """The simulated kill."""


@contextlib.contextmanager
def crash_at(monkeypatch: pytest.MonkeyPatch, k: int) -> Iterator[list[str]]:
    """Yield the list of steps taken (the crashing one last)."""
    steps: list[str] = []

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            steps.append(f"{name} {args[0]}")
            if len(steps) >= k:
                raise Crash(steps[-1])
            return real(*args, **kwargs)
        return step

    with monkeypatch.context() as m:
        for name in ("replace", "rename", "unlink", "rmdir"):
            m.setattr(os, name, wrap(name, getattr(os, name)))
        m.setattr(shutil, "rmtree", wrap("rmtree", shutil.rmtree))
        yield steps


def steps_of(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> int:
    """How many file-system steps `action` takes when nothing goes wrong."""
    with crash_at(monkeypatch, 10**9) as steps:
        action()
    return len(steps)
