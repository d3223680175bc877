"""The demo's microphone: a FIFO fed at real time, which must never hold up the box's stopping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import pytest

from daemon.app.demo import CHUNK, PERIOD_MS, _feed


async def test_the_feed_keeps_time_while_capture_reads(tmp_path: Path) -> None:
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    speech = bytes(range(256)) * 50  # 12800 bytes: 20 periods of recognisable samples
    task = asyncio.create_task(_feed(fd, speech))
    try:
        await asyncio.sleep(1.2)
        got = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(reader, 65536):
                got += chunk
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(reader)
        os.close(fd)
    periods = len(got) // CHUNK
    # 0.5 s of silence, then the speech, in order, at about one period per 20 ms.
    assert 1.0 * 1000 / PERIOD_MS <= periods <= 1.4 * 1000 / PERIOD_MS, periods
    lead = 500 // PERIOD_MS * CHUNK
    assert got[:lead] == bytes(lead) and got[lead : lead + len(speech)] == speech


async def test_a_fifo_nobody_reads_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """Capture has stopped: the FIFO's 64 KB fill in about two seconds, and the loop (the
    supervisor stopping the processes) must keep running past that."""
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)
    task = asyncio.create_task(_feed(fd, b""))
    loop = asyncio.get_running_loop()
    done, rescued = threading.Event(), threading.Event()

    def rescue() -> None:
        # Were the loop stuck in a write, this test would hang rather than fail: past the
        # deadline a thread empties the FIFO, which frees the write, and says so.
        if not done.wait(6.0):
            rescued.set()
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            with contextlib.suppress(BlockingIOError):
                while os.read(reader, 65536):
                    pass
            os.close(reader)

    rescuer = threading.Thread(target=rescue, name="rescue")
    rescuer.start()
    try:
        ticks, start = 0, loop.time()
        while loop.time() - start < 3.5:  # well past the pipe's capacity
            await asyncio.sleep(0.1)
            ticks += 1
        assert not rescued.is_set(), "the event loop was held by a write to a FIFO nobody reads"
        assert ticks >= 25, f"the event loop was held: {ticks} ticks of 0.1 s in 3.5 s"
        assert not task.done(), task
    finally:
        done.set()
        rescuer.join()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(fd)
    with pytest.raises(asyncio.CancelledError):
        await task
