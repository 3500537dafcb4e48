"""The hub's streams, positions, recovery and writes in-process, with stand-ins for sockets.

tests/gateway/test_hub.py covers the same edges end to end, through a real gateway.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mlpulse.gateway import hub as hub_module
from mlpulse.gateway.auth import User
from mlpulse.gateway.hub import IDLE_STREAM_SECONDS, Hub, Position


def frames_of(data: bytes) -> list[dict[str, Any]]:
    """The JSON documents in a run of unmasked server text frames."""
    docs, i = [], 0
    while i < len(data):
        assert data[i] == 0x81, "a final text frame"
        length, i = data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        docs.append(json.loads(data[i:i + length]))
        i += length
    return docs


class FakeSocket:
    """Stands in for a connection: keeps every write."""

    def __init__(self, name: str) -> None:
        self.user = User(name)
        self.writes: list[bytes] = []
        self.open = True

    def write(self, data: bytes, messages: int) -> bool:
        assert len(frames_of(data)) == messages
        self.writes.append(data)
        return self.open

    def docs(self) -> list[dict[str, Any]]:
        return [d for w in self.writes for d in frames_of(w)]


def message(n: int) -> str:
    """One payload, serialised once for every receiver, as the relay does."""
    return json.dumps({"type": "note", "data": {"n": n}})


def snapshot() -> str:
    return json.dumps({"type": "snapshot", "data": {"full": True}})


def join(hub: Hub, name: str, broadcast_at: Position | None = None,
         user_at: Position | None = None, history: tuple[str, ...] = ()) -> FakeSocket:
    sock = FakeSocket(name)
    hub.welcome(sock, broadcast_at, user_at, snapshot, history)
    return sock


async def tick() -> None:
    """Let the hub write what was published in this turn of the loop."""
    await asyncio.sleep(0)


async def test_a_broadcast_is_framed_once_and_every_socket_gets_the_same_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub(outbox_limit=8)
    socks = [join(hub, name) for name in ("alice", "alice", "bob")]
    for s in socks:
        s.writes.clear()
    framed: list[bytes] = []
    real = hub_module.text_frame

    def counting(payload: bytes) -> bytes:
        framed.append(payload)
        return real(payload)

    monkeypatch.setattr(hub_module, "text_frame", counting)
    for n in range(5):
        assert hub.broadcast(message(n)) == 3
    assert hub.broadcast("{}") == 3
    await tick()
    assert len(framed) == 6, "one frame a message, whatever the number of sockets"
    for s in socks:
        assert s.writes == socks[0].writes, "the same bytes for every socket"
        assert len(s.writes) == 1, "one write a tick for everything published in it"
        got = s.docs()
        assert [(m["stream"], m["offset"]) for m in got] == [("broadcast", i)
                                                            for i in range(1, 7)]
        assert [m["data"]["n"] for m in got[:5]] == list(range(5))
        assert got[5] == {"stream": "broadcast", "offset": 6}


async def test_send_to_reaches_only_that_users_sockets_in_its_own_stream() -> None:
    hub = Hub(outbox_limit=8)
    a1, a2, b = (join(hub, n) for n in ("alice", "alice", "bob"))
    for s in (a1, a2, b):
        s.writes.clear()
    assert hub.send_to("alice", message(1)) == 2
    assert hub.send_to("nobody", message(2)) == 0
    await tick()
    assert hub.broadcast(message(3)) == 3
    await tick()
    for s in (a1, a2):
        got = s.docs()
        assert [(m["stream"], m["offset"], m["data"]["n"]) for m in got] == [
            ("user", 1, 1), ("broadcast", 1, 3)]
    # Bob's only frame is the broadcast: Alice's message never reached him.
    assert [(m["stream"], m["data"]["n"]) for m in b.docs()] == [("broadcast", 3)]
    assert "nobody" not in hub.streams, "no stream is made for a user nobody watches"


async def test_broadcasts_and_own_messages_of_one_tick_go_out_in_one_write() -> None:
    hub = Hub(outbox_limit=8)
    alice, bob = join(hub, "alice"), join(hub, "bob")
    for s in (alice, bob):
        s.writes.clear()
    hub.broadcast(message(1))
    hub.send_to("alice", message(2))
    hub.broadcast(message(3))
    await tick()
    assert len(alice.writes) == len(bob.writes) == 1
    assert [m["data"]["n"] for m in alice.docs()] == [1, 3, 2]
    assert [m["data"]["n"] for m in bob.docs()] == [1, 3]


async def test_a_new_socket_starts_with_hello_and_a_snapshot_and_history_then_live() -> None:
    hub = Hub(outbox_limit=8)
    hub.broadcast(message(1))  # published before it joins: not its to get
    sock = join(hub, "alice", history=(message(7),))
    hub.broadcast(message(2))
    await tick()
    hello, snap, old, live = sock.docs()
    assert hello["type"] == "hello"
    assert hello["streams"]["broadcast"]["offset"] == 1
    assert hello["streams"]["broadcast"]["recovered"] is False
    assert hello["streams"]["user"]["offset"] == 0
    assert snap == {"type": "snapshot", "data": {"full": True}}
    assert old["data"]["n"] == 7
    assert "offset" not in old
    assert (live["stream"], live["offset"], live["data"]["n"]) == ("broadcast", 2, 2)


async def test_a_reconnect_resumes_each_stream_from_where_it_was() -> None:
    hub = Hub(outbox_limit=8)
    first = join(hub, "alice")
    hello = first.docs()[0]["streams"]
    b_epoch, u_epoch = hello["broadcast"]["epoch"], hello["user"]["epoch"]
    hub.broadcast(message(1))
    hub.send_to("alice", message(2))
    await tick()
    hub.remove(first)
    # Gone for a while: one broadcast and one own message it did not see.
    hub.broadcast(message(3))
    hub.send_to("alice", message(4))
    await tick()
    again = join(hub, "alice", Position(b_epoch, 1), Position(u_epoch, 1),
                 history=(message(99),))
    docs = again.docs()
    assert docs[0]["streams"]["broadcast"] == {"epoch": b_epoch, "offset": 1,
                                               "recovered": True}
    assert docs[0]["streams"]["user"] == {"epoch": u_epoch, "offset": 1, "recovered": True}
    assert [(m["stream"], m["offset"], m["data"]["n"]) for m in docs[1:]] == [
        ("broadcast", 2, 3), ("user", 2, 4)], "what it missed, and no snapshot or history"


async def test_what_is_published_while_the_history_is_read_still_reaches_the_new_socket(
        ) -> None:
    """A second tab reads the history while the first gets a message the history does not
    hold yet: the new tab gets it after the history, numbered, rather than never."""
    hub = Hub(outbox_limit=8)
    join(hub, "alice")
    stream = hub.hold("alice")
    read_at = Position(stream.epoch, stream.offset)
    hub.send_to("alice", message(1))  # while the history read is under way
    await tick()
    tab = FakeSocket("alice")
    hub.welcome(tab, None, None, snapshot, (message(0),), read_at)
    hello, _, old, late = tab.docs()
    assert hello["streams"]["user"]["offset"] == 0
    assert hello["streams"]["user"]["recovered"] is False
    assert old["data"]["n"] == 0
    assert (late["stream"], late["offset"], late["data"]["n"]) == ("user", 1, 1)


@pytest.mark.parametrize("where", ["too_old", "other_epoch", "ahead"])
async def test_a_position_that_cannot_be_resumed_gets_a_fresh_snapshot(where: str) -> None:
    hub = Hub(outbox_limit=8)
    first = join(hub, "alice")
    epoch = first.docs()[0]["streams"]["broadcast"]["epoch"]
    for n in range(hub_module.BROADCAST_KEEP + 5):
        hub.broadcast(message(n))
    await tick()
    at = {"too_old": Position(epoch, 1), "other_epoch": Position("elsewhere-0", 1030),
          "ahead": Position(epoch, 10**6)}[where]
    again = join(hub, "bob", at)
    hello, snap = again.docs()
    assert hello["streams"]["broadcast"]["recovered"] is False
    assert hello["streams"]["broadcast"]["offset"] == hub_module.BROADCAST_KEEP + 5
    assert snap["data"] == {"full": True}


async def test_an_idle_users_stream_is_kept_for_a_reconnect_and_then_forgotten() -> None:
    hub = Hub(outbox_limit=8)
    sock = join(hub, "alice")
    hub.remove(sock)
    assert hub.send_to("alice", message(1)) == 0
    assert hub.streams["alice"].offset == 1, "kept: a reconnect soon gets it"
    hub.sweep(now=hub.idle["alice"] + IDLE_STREAM_SECONDS + 1)
    assert "alice" not in hub.streams
    hub.send_to("alice", message(2))
    assert "alice" not in hub.streams, "and not made again by a message"


async def test_idle_streams_past_the_cap_go_longest_idle_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "IDLE_STREAMS_MAX", 3)
    hub = Hub(outbox_limit=8)
    socks = {name: join(hub, name) for name in "abcdef"}
    for name in "bcaed":
        hub.remove(socks[name])
    assert sorted(hub.streams) == ["a", "d", "e", "f"], "b and c idled first and went"
    hub.remove(socks["f"])
    assert sorted(hub.streams) == ["d", "e", "f"]
    join(hub, "d")
    hub.remove(socks["d"])  # a user back and gone again idles anew
    assert sorted(hub.streams) == ["d", "e", "f"]


def test_positions_parse_only_what_a_client_sends() -> None:
    assert Position.parse("ab12-3:17") == Position("ab12-3", 17)
    for bad in (None, "", "17", ":17", "e:", "e:-1", "e:1.5", "e:" + "9" * 100, "e:\u00b2"):
        assert Position.parse(bad) is None, bad


async def test_a_socket_that_is_closing_is_not_counted_as_delivered() -> None:
    hub = Hub(outbox_limit=8)
    gone = join(hub, "alice")
    gone.open = False
    before = hub_module.DELIVERIES._value.get()
    hub.broadcast(message(1))
    await tick()
    assert hub_module.DELIVERIES._value.get() == before
