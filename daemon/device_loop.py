"""One audio device kept working for a process: the loop capture and playback share.

Open the PCM at start (once: a missing device must not keep the box from coming up), else keep
trying with backoff (``DeviceKeeper``); run the process's worker thread on it until the thread
ends; reopen it when it failed or when the config names another device. The process supplies
what differs: which device (``spec_of``), the worker (a reader or a writer thread), and what
to do when a run ends (capture: nothing is heard; playback: old speech is dropped). The camera
keeps its own loop inside its thread: its opens block (V4L2, libcamera), ALSA's do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from daemon.alsa_device import DeviceKeeper, Pcm, PcmSpec
from daemon.messages import ProcessState

#: Given to the worker: called once, as its last act, with ALSA's reason if the device failed.
OnEnd = Callable[[str | None], None]


class Owner(Protocol):
    """The process whose state the loop moves (degraded while it waits for the device, else running)."""

    state: ProcessState


class Worker(Protocol):
    """The thread that uses the open device (``threading.Thread`` with a ``stop()``)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def is_alive(self) -> bool: ...


class DeviceLoop:
    def __init__(
        self,
        owner: Owner,
        keeper: DeviceKeeper,
        spec_of: Callable[[], PcmSpec],
        counters: dict[str, float],
        log: logging.Logger,
        opened: Callable[[], None],
    ) -> None:
        self.owner = owner
        self.keeper = keeper
        self.spec_of = spec_of
        self.counters = counters
        self.log = log
        self._opened = opened  # says what was opened, in the process's words
        self.pcm: Pcm | None = None
        #: The worker now using the device, for the process to reach (its pipeline, its state).
        self.worker: Worker | None = None

    def try_open(self) -> bool:
        """One attempt, at start; ``run()`` keeps trying if it fails."""
        self.pcm = self.keeper.try_open(self.spec_of())
        self._count()
        if self.pcm is not None:
            self._opened_now()
        return self.pcm is not None

    async def run(
        self,
        make_worker: Callable[[Pcm, PcmSpec, OnEnd], Worker],
        ended: Callable[[str | None], None],
    ) -> None:
        """Until cancelled: open, work, reopen. ``ended`` hears each run's end (the reason if it failed)."""
        while True:
            if self.pcm is None:
                self.owner.state = "degraded"
                self.pcm = await self.keeper.open(self._next_spec)
                self._opened_now()
            self.owner.state = "running"
            spec = self.spec_of()
            error = await self._work(self.pcm, spec, make_worker)
            self.pcm = None
            ended(error)
            if error is not None:
                self.keeper.lost(spec, error)

    async def _work(self, pcm: Pcm, spec: PcmSpec, make_worker: Callable[[Pcm, PcmSpec, OnEnd], Worker]) -> str | None:
        """Run a worker on ``pcm`` until it stops; ALSA's reason if the device failed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def on_end(error: str | None) -> None:  # on the worker's thread
            with contextlib.suppress(RuntimeError):  # the loop is already closed at exit
                loop.call_soon_threadsafe(_settle, done, error)

        worker = self.worker = make_worker(pcm, spec, on_end)
        worker.start()
        # Cancelled (the process stops): the worker stays recorded for stop() to end it.
        error = await done
        self.worker = None  # on_end is the thread's last act: it is done with the PCM
        return error

    async def stop(self, join_s: float, still_blocked: str) -> None:
        """End the worker (bounded), or close a PCM no worker took."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()
            await asyncio.to_thread(worker.join, join_s)
            if worker.is_alive():
                # A call can block for good in a device that does nothing; closing the PCM under
                # it is not safe, and the daemon thread ends with the process.
                self.log.warning("%s; leaving it to process exit", still_blocked)
        elif self.pcm is not None:
            with contextlib.suppress(Exception):
                self.pcm.close()
        self.pcm = None

    def reopen(self) -> None:
        """The config names another device (or period): end this run, or retry the open now."""
        if self.worker is not None:
            self.worker.stop()
        else:
            self.keeper.retry_now()

    def waiting(self, device: str, state: ProcessState) -> str | None:
        """The status line while no device is open; None while one is."""
        if self.pcm is not None:
            return None
        if self.keeper.waiting_reason is not None:
            return f"waiting for device {device!r}: {self.keeper.waiting_reason}"
        return f"opening {device!r}" if state != "stopped" else "stopped"

    @property
    def retrying(self) -> bool:
        """Waiting for the device: the work the process can do (its watchdog stays petted)."""
        return self.keeper.retrying

    def _next_spec(self) -> PcmSpec:
        self._count()
        return self.spec_of()

    def _opened_now(self) -> None:
        self._count()
        self.counters["reopens"] = max(0, self.keeper.opens - 1)
        self._opened()

    def _count(self) -> None:
        self.counters["open_failures"] = self.keeper.failures


def _settle(fut: asyncio.Future[str | None], error: str | None) -> None:
    if not fut.done():
        fut.set_result(error)
