"""What the producer says in a log (not a terminal): the total once, not a line a second."""

from __future__ import annotations

from tests.conftest import Env, produce


def test_a_logged_run_says_its_total_once(env: Env) -> None:
    said = produce(env, "--count", "2500", "--batch", "50", "--rate", "1000")
    sent = [line for line in said.splitlines() if " sent " in f" {line}"]
    assert len(sent) == 1, said
    assert "sent 2500/2500 events" in sent[0]


async def test_the_total_counts_only_events_confirmed_with_all_before_them() -> None:
    """A chunk stuck unconfirmed (the broker went away) holds the count at the events
    before it, though chunks after it were confirmed; a stop then reports the rest as
    handed over but not confirmed."""
    import asyncio

    from mlpulse.pipeline.producer import Sender

    stuck = asyncio.Event()

    class Raw:
        async def basic_publish(self, body: bytes, routing_key: str, properties: object,
                                wait: bool = True) -> None:
            if body == b'"second"':
                await stuck.wait()

    class Channel:
        async def get_underlay_channel(self) -> Raw:
            return Raw()

    async with asyncio.TaskGroup() as group:
        sender = Sender(Channel(), group)  # type: ignore[arg-type]
        for doc, events in (("first", 3), ("second", 4), ("third", 5)):
            sender.add("features", doc)
            sender.events += events
            await sender.flush()
        for _ in range(20):  # the publishes that do not wait finish in a few loop turns
            await asyncio.sleep(0)
        assert (sender.confirmed, sender.handed) == (3, 12)
        assert sender._confirmed_chunks == {2}  # the third, waiting for the second
        stuck.set()
    assert sender.confirmed == 12
