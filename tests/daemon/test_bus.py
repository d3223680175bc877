"""The bus itself: real ZeroMQ ipc sockets between two ``Bus`` objects, read from asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.bus import Bus, Subscriber
from daemon.messages import Heartbeat, Message, SpeechActivity

#: Long enough for ZeroMQ's ipc connect to finish before the first message (a SUB that has not
#: connected yet misses what is published: "slow joiner").
JOIN_S = 0.3


@pytest.fixture
def buses(tmp_path: Path) -> Iterator[tuple[Bus, Bus]]:
    publisher, reader = Bus("capture", tmp_path), Bus("session", tmp_path)
    yield publisher, reader
    reader.close()
    publisher.close()


def _beat(n: int) -> Heartbeat:
    return Heartbeat(service="capture", state="ready", status=f"beat {n}", pid=1)


async def _next_beat(sub: Subscriber) -> str:
    """The status line of the next message, which must be a heartbeat."""
    msg = await asyncio.wait_for(sub.recv(), 5)
    assert isinstance(msg, Heartbeat), msg
    return msg.status


async def _joined(sub: Subscriber, publisher: Bus) -> None:
    """Until a probe message gets through (the subscription is live), then no probe left behind."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        publisher.publish(SpeechActivity(speaking=False, t=0))
        try:
            await asyncio.wait_for(sub.recv(), 0.2)
        except TimeoutError:
            continue
        with contextlib.suppress(TimeoutError):
            while True:  # an earlier probe that arrived late
                await asyncio.wait_for(sub.recv(), 0.3)
        return
    raise AssertionError("the subscriber never joined")


async def _subscribed(buses: tuple[Bus, Bus]) -> tuple[Bus, Subscriber]:
    """The publishing bus, and a reader's subscription to its heartbeats, live."""
    publisher, reader = buses
    sub = reader.subscribe(["capture"], Heartbeat, SpeechActivity)
    await _joined(sub, publisher)
    return publisher, sub


async def test_every_message_arrives_in_order_at_the_pace_it_is_sent(buses: tuple[Bus, Bus]) -> None:
    publisher, reader = buses
    sub = reader.subscribe(["capture"], Heartbeat)
    await asyncio.sleep(JOIN_S)

    async def read(n: int) -> list[str]:
        return [msg.status for msg in [await sub.recv() for _ in range(n)] if isinstance(msg, Heartbeat)]

    task = asyncio.create_task(read(50))
    for n in range(50):
        publisher.publish(_beat(n))
        await asyncio.sleep(0.002)  # the reader waits between messages: each one wakes it
    assert await asyncio.wait_for(task, 10) == [f"beat {n}" for n in range(50)]
    assert sub.received == 50 and sub.rejected == 0


async def test_what_arrived_while_the_reader_was_busy_is_all_read_and_the_loop_stays_idle(
    buses: tuple[Bus, Bus],
) -> None:
    publisher, sub = await _subscribed(buses)
    for n in range(20):
        publisher.publish(_beat(n))
    # The reader is away (a service awaiting something else): the messages wait in ZeroMQ, and
    # the event loop must not turn on the socket's signal meanwhile (it would burn a core).
    cpu = time.process_time()
    await asyncio.sleep(1.0)
    spent = time.process_time() - cpu
    assert spent < 0.3, f"the loop spun while messages waited: {spent:.2f} s of CPU in 1 s"
    got = [await asyncio.wait_for(sub.recv(), 5) for _ in range(20)]
    assert [m.status for m in got if isinstance(m, Heartbeat)] == [f"beat {n}" for n in range(20)]
    # And the reader still wakes for what comes next.
    publisher.publish(_beat(20))
    assert await _next_beat(sub) == "beat 20"


async def test_a_reader_cancelled_while_waiting_can_read_again(buses: tuple[Bus, Bus]) -> None:
    publisher, sub = await _subscribed(buses)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.recv(), 0.2)  # nothing sent: the wait is cancelled
    publisher.publish(_beat(1))
    assert await _next_beat(sub) == "beat 1"


async def test_undecodable_frames_are_counted_and_skipped(buses: tuple[Bus, Bus]) -> None:
    publisher, sub = await _subscribed(buses)
    # A peer speaking another version of the protocol, then a good message.
    publisher.state._sock.send_multipart([b"heartbeat", b'{"v": 999}'])
    publisher.publish(_beat(2))
    assert await _next_beat(sub) == "beat 2"
    assert sub.rejected == 1 and "protocol version" in sub.last_error


def test_a_subscriber_follows_its_reader_to_a_new_event_loop(tmp_path: Path) -> None:
    """A service's loop can end and another start (tests do, a restart in-process would): the
    socket is watched from whichever loop reads it."""
    publisher, reader = Bus("capture", tmp_path), Bus("session", tmp_path)
    try:
        sub = reader.subscribe(["capture"], Heartbeat, SpeechActivity)

        async def one(n: int) -> Message:
            await _joined(sub, publisher)
            publisher.publish(_beat(n))
            return await asyncio.wait_for(sub.recv(), 5)

        first, second = asyncio.run(one(1)), asyncio.run(one(2))
        assert isinstance(first, Heartbeat) and first.status == "beat 1"
        assert isinstance(second, Heartbeat) and second.status == "beat 2"
    finally:
        reader.close()
        publisher.close()
