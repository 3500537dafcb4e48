"""A role that leaves a worker thread of its loop blocked when it stops, as a DNS lookup of
a host that has gone does: `python -m tests.stuck_role` (tests/test_runtime.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from mlpulse.config import Settings
from mlpulse.runtime import run_role


async def body(settings: Settings, stop: asyncio.Event) -> None:
    asyncio.get_running_loop().run_in_executor(None, time.sleep, 60)
    logging.getLogger("tests.stuck_role").info("ready: a worker thread is busy for 60 s")
    await stop.wait()


if __name__ == "__main__":
    run_role("stuck", body, Settings())
