"""The producer's bound on what awaits the broker's confirms."""

from __future__ import annotations

import asyncio

from mlpulse.pipeline.producer import MESSAGES_IN_FLIGHT, Sender


class Raw:
    """A channel whose publishes are confirmed only once `confirm` is set."""

    def __init__(self) -> None:
        self.confirm = asyncio.Event()
        self.published = 0

    async def basic_publish(self, body: bytes, routing_key: str, properties: object,
                            wait: bool = True) -> None:
        assert not wait, "a publish must not hold the channel until its frame is written"
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


async def test_a_paced_run_wakes_once_per_pace_and_sends_what_is_due_as_single_events(
) -> None:
    """At 2,000 events a second the producer no longer wakes for every event: it sends
    what has come due once per `PACE_SECONDS`, still one message per event, each
    stamped no earlier than it was due and never in the future."""
    import time

    import numpy as np

    from mlpulse.ml.data import Dataset
    from mlpulse.pipeline.producer import PACE_SECONDS, Plan, Progress, _send

    raw = Raw()
    raw.confirm.set()
    data = Dataset(X=np.arange(30.0).reshape(10, 3), y=np.arange(10.0),
                   feature_names=["a", "b", "c"])
    plan = Plan(count=200, batch=1, rate=2000.0)
    flushes = 0
    sent: list[tuple[float, float]] = []  # (event's ts, when it was handed over)
    async with asyncio.TaskGroup() as group:
        sender = Sender(Channel(raw), group)  # type: ignore[arg-type]
        flush = sender.flush

        async def counting_flush() -> None:
            nonlocal flushes
            flushes += bool(sender.chunk)
            now = time.time()
            sent.extend((doc_ts, now) for doc_ts in stamps(sender.chunk))
            await flush()

        sender.flush = counting_flush  # type: ignore[method-assign]
        started = time.time()
        await _send(sender, data, plan, "r", asyncio.Event(), Progress(None))
    # 200 events over 0.1 s: a wake per event would flush ~200 times; a wake per pace
    # at most 0.1 / PACE_SECONDS + a few (fewer when the loop is late, never more).
    assert flushes <= 0.1 / PACE_SECONDS + 5, flushes
    assert raw.published == 400  # features and label, one message per event each
    assert len(sent) == 400
    for i, (ts, handed) in enumerate(sent):
        due = started + (i // 2) / plan.rate
        assert due - 0.002 <= ts <= handed, (i, ts - due, handed - ts)


def stamps(chunk: list[tuple[str, bytes]]) -> list[float]:
    import orjson

    return [float(orjson.loads(body)["ts"]) for _, body in chunk]
