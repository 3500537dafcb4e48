from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest


@pytest.fixture
def opened() -> Iterator[Callable[[Path], IO[bytes]]]:
    """Open metric logs for reading, closed after the test."""
    handles: list[IO[bytes]] = []

    def open_(path: Path) -> IO[bytes]:
        handle = path.open("rb")
        handles.append(handle)
        return handle

    yield open_
    for handle in handles:
        handle.close()
