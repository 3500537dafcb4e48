"""Inspect and replay the dead-letter queue `mlpulse.dead`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from mlpulse.broker import connect, declare_topology, persistent
from mlpulse.config import Settings
from mlpulse.wire import CODE_HEADER, DATA_QUEUES, DEAD_QUEUE, QUEUE_HEADER, REASON_HEADER


@dataclass(slots=True)
class DeadLetter:
    """One dead-lettered message, as people need to see it."""

    id: str
    queue: str
    code: str
    reason: str
    size: int
    preview: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"id": self.id, "queue": self.queue, "code": self.code, "reason": self.reason,
                "size": self.size, "preview": self.preview}


def _describe(msg: AbstractIncomingMessage, preview: int) -> DeadLetter:
    headers = msg.headers or {}
    text = msg.body[:preview].decode("utf-8", "replace")
    if len(msg.body) > preview:
        text += "…"
    return DeadLetter(
        id=msg.message_id or f"tag-{msg.delivery_tag}",
        queue=str(headers.get(QUEUE_HEADER, "?")),
        code=str(headers.get(CODE_HEADER, "?")),
        reason=str(headers.get(REASON_HEADER, "?")),
        size=len(msg.body),
        preview=text,
    )


async def _walk(settings: Settings, limit: int | None,
                act: Callable[[AbstractIncomingMessage, DeadLetter], Any]) -> list[DeadLetter]:
    """Visit dead letters without losing any: whatever `act` does not ack goes back."""
    connection = await connect(settings, "dead")
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel)
        queue = await channel.declare_queue(DEAD_QUEUE, durable=True, passive=True)
        # Only what is there now: a replayed letter that fails again comes back to the
        # tail of the queue and must not be replayed again by this same walk.
        there = int(queue.declaration_result.message_count or 0)
        limit = there if limit is None else min(limit, there)
        seen: list[DeadLetter] = []
        while len(seen) < limit:
            msg = await queue.get(no_ack=False, fail=False)
            if msg is None:
                break
            letter = _describe(msg, 120)
            seen.append(letter)
            await act(msg, letter)
        # Closing the channel returns every message that was not acked to the queue.
        await channel.close()
        return seen
    finally:
        await connection.close()


async def list_dead(settings: Settings, limit: int) -> list[DeadLetter]:
    """The first `limit` dead letters; the queue is left as it was."""

    async def keep(msg: AbstractIncomingMessage, letter: DeadLetter) -> None:
        return None

    return await _walk(settings, limit, keep)


async def replay(settings: Settings, ids: Iterable[str] | None,
                 to: str | None = None) -> list[DeadLetter]:
    """Send chosen dead letters (all when `ids` is None) back to their queue."""
    wanted = None if ids is None else set(ids)
    replayed: list[DeadLetter] = []

    async def send_back(msg: AbstractIncomingMessage, letter: DeadLetter) -> None:
        if wanted is not None and letter.id not in wanted:
            return
        target = to or letter.queue
        if target not in DATA_QUEUES:
            return
        await msg.channel.basic_publish(
            msg.body, routing_key=target,
            properties=persistent(msg.body).properties,
        )
        await msg.ack()
        replayed.append(letter)

    await _walk(settings, None, send_back)
    return replayed


async def purge(settings: Settings) -> int:
    """Drop every dead letter; returns how many there were."""
    connection = await connect(settings, "dead")
    try:
        channel = await connection.channel()
        await declare_topology(channel)
        queue = await channel.get_queue(DEAD_QUEUE)
        result = await queue.purge()
        return int(result.message_count or 0)
    finally:
        await connection.close()
