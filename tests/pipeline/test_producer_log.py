"""What the producer says in a log (not a terminal): the total once, not a line a second."""

from __future__ import annotations

from tests.conftest import Env, produce


def test_a_logged_run_says_its_total_once(env: Env) -> None:
    said = produce(env, "--count", "2500", "--batch", "50", "--rate", "1000")
    sent = [line for line in said.splitlines() if " sent " in f" {line}"]
    assert len(sent) == 1, said
    assert "sent 2500/2500 events" in sent[0]
