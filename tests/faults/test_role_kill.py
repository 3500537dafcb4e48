"""`kill -9` of a role, round after round, while events stream in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Env, wait_until
from tests.faults.harness import FaultRun, Scale, scale

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["model", "metric"])
def test_kill_9_of_a_pipeline_role_loses_and_repeats_nothing(
        fault_run: Callable[[str, Scale], FaultRun], name: str) -> None:
    size = scale(Scale(rounds=3, events=4000), Scale(rounds=15, events=40000, rate=1000))
    run = fault_run(f"kill -9 {name}", size)
    run.start("model", "metric")
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        run.wait_recovered(run.kill_and_restart(name))
    run.finish()


def test_kill_9_of_the_plot_role_leaves_it_drawing(
        env: Env, fault_run: Callable[[str, Scale], FaultRun]) -> None:
    """The plot role holds no messages; what matters is that it comes back and draws."""
    size = scale(Scale(rounds=2, events=3000), Scale(rounds=10, events=20000))
    run = fault_run("kill -9 plot", size)
    run.start("model", "metric", "plot")
    for threshold in run.thresholds():
        run.wait_rows(threshold)
        fault = run.kill_and_restart("plot")
        wait_until(lambda t=fault.at: env.plot_path.exists()
                   and env.plot_path.stat().st_mtime > t,
                   timeout=30, what="the restarted plot role to redraw")
        assert env.plot_path.read_bytes()[:8] == PNG
        # Its output is the picture, not rows: recovery is the first redraw after the kill.
        fault.recovery = env.plot_path.stat().st_mtime - fault.at
    run.finish()
