"""Fault runs use the session's private RabbitMQ node and Redis, never the machine's."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Env, Role
from tests.faults.harness import SOAK, SUMMARIES, FaultRun, Scale
from tests.nodes import RabbitNode


@pytest.fixture
def env(private_env: Env) -> Env:
    return private_env


@pytest.fixture
def fault_run(env: Env, start_role: Callable[..., Role],
              rabbit_node: RabbitNode) -> Iterator[Callable[[str, Scale], FaultRun]]:
    """Make the test's `FaultRun`; its stream is stopped however the test ends."""
    runs: list[FaultRun] = []

    def make(title: str, size: Scale) -> FaultRun:
        run = FaultRun(env, start_role, title, size, broker=rabbit_node)
        runs.append(run)
        return run

    yield make
    for run in runs:
        if run.publisher is not None:
            run.publisher.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every fault run's one-line figures, at the end of the report."""
    if SUMMARIES:
        terminalreporter.section("fault runs" + (" (soak)" if SOAK else ""))
        for line in SUMMARIES:
            terminalreporter.write_line(line)
