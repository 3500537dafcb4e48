"""The producer's bound on what awaits the broker's confirms."""

from __future__ import annotations

import asyncio

from mlpulse.pipeline.producer import MESSAGES_IN_FLIGHT, Sender


class Raw:
    """A channel whose publishes are confirmed only once `confirm` is set."""

    def __init__(self) -> None:
        self.confirm = asyncio.Event()
        self.published = 0

    async def basic_publish(self, body: bytes, routing_key: str, properties: object) -> None:
        self.published += 1
        await self.confirm.wait()


class Channel:
    def __init__(self, raw: Raw) -> None:
        self.raw = raw

    async def get_underlay_channel(self) -> Raw:
        return self.raw


async def test_chunks_of_one_event_go_out_while_those_before_are_unconfirmed() -> None:
    """A paced run flushes one event at a time. Every event goes out at once until the
    messages awaiting confirms reach the bound, and only the chunk past it waits for a
    confirm: a bound counted in chunks held the fifth event back until the first one's
    confirm came."""
    raw = Raw()
    events = MESSAGES_IN_FLIGHT // 2  # two messages each, features and label
    async with asyncio.TaskGroup() as group:
        sender = Sender(Channel(raw), group)  # type: ignore[arg-type]

        async def send_paced() -> None:
            for i in range(events):
                sender.add("features", i)
                sender.add("y_true", i)
                sender.events += 1
                await sender.flush()

        sending = asyncio.create_task(send_paced())
        for _ in range(20):  # the publish tasks start in a few loop turns
            await asyncio.sleep(0)
        if not sending.done():  # let the group end, and fail
            sending.cancel()
            raw.confirm.set()
        assert sending.done(), "a flush waited for a confirm below the bound"
        assert raw.published == MESSAGES_IN_FLIGHT
        assert sender.unconfirmed == MESSAGES_IN_FLIGHT
        sender.add("features", "past the bound")
        sender.events += 1
        past = asyncio.create_task(sender.flush())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not past.done()
        assert raw.published == MESSAGES_IN_FLIGHT
        raw.confirm.set()
        await past
    assert sender.confirmed == events + 1
    assert sender.unconfirmed == 0


async def test_a_chunk_bigger_than_the_bound_goes_alone() -> None:
    raw = Raw()
    raw.confirm.set()
    async with asyncio.TaskGroup() as group:
        sender = Sender(Channel(raw), group)  # type: ignore[arg-type]
        for i in range(MESSAGES_IN_FLIGHT + 1):
            sender.add("features", i)
        sender.events += MESSAGES_IN_FLIGHT + 1
        await sender.flush()
    assert raw.published == MESSAGES_IN_FLIGHT + 1
    assert sender.confirmed == MESSAGES_IN_FLIGHT + 1
