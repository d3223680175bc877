"""The capture thread: one blocking ``pcm.read()`` per period, one ``AudioIn`` per read.

It owns the PCM it was given and the bus's bulk publisher (ZeroMQ sockets belong to one
thread). pyalsaaudio releases the GIL inside ``snd_pcm_readi``, so the event loop keeps
running while this thread waits for the device. It never exits the process: when the device
fails it closes the PCM and tells the event loop why, which reopens it with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import alsaaudio

from daemon.bus import Publisher
from daemon.messages import AudioIn
from services.alsa_device import Pcm, PcmSpec, alsa_reason
from services.capture.mute import MuteGate

log = logging.getLogger("tolk.capture")

#: A device this far ahead of the wall clock has no clock of its own (ALSA's ``null``, a
#: plain file): it would hand out audio as fast as we read it, flood the bus, and bill the
#: service for hours of silence per minute. Real devices never get this far ahead.
AHEAD_LIMIT_NS = 100_000_000
#: Behind by this much the device stalled (a paused FIFO, a suspended host): start afresh.
STALL_NS = 1_000_000_000
#: Forget accumulated clock drift between the device and CLOCK_MONOTONIC this often.
REANCHOR_NS = 60_000_000_000


class Pacer:
    """Holds a device without a clock to real time; a device with one never waits here."""

    def __init__(self, period_ns: int, stopping: threading.Event) -> None:
        self.period_ns = period_ns
        self.stopping = stopping
        self.anchor_ns: int | None = None
        self.periods = 0

    def after_read(self, now_ns: int) -> None:
        if self.anchor_ns is None or now_ns - self.anchor_ns > REANCHOR_NS:
            self.anchor_ns, self.periods = now_ns, 0
            return
        self.periods += 1
        ahead = self.anchor_ns + self.periods * self.period_ns - now_ns
        if ahead > AHEAD_LIMIT_NS:
            self.stopping.wait(ahead / 1e9)
        elif -ahead > STALL_NS:
            self.anchor_ns, self.periods = now_ns, 0


#: The service's counters this thread keeps. They exist before the thread starts, so it only
#: ever updates existing keys while the event loop copies the dict for heartbeats.
COUNTERS = ("chunks", "bytes", "overruns", "muted_chunks")


class Reader(threading.Thread):
    def __init__(
        self,
        pcm: Pcm,
        spec: PcmSpec,
        publisher: Publisher,
        gate: MuteGate,
        counters: dict[str, float],
        on_chunk: Callable[[int], None],
        on_end: Callable[[str | None], None],
    ) -> None:
        # Daemon: a read blocked on a device that never delivers must not keep the process alive.
        super().__init__(name="capture-reader", daemon=True)
        self.pcm = pcm
        self.spec = spec
        self.publisher = publisher
        self.gate = gate
        self.counters = counters
        self.on_chunk = on_chunk
        self.on_end = on_end
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the thread to end after the read in progress (it checks after every period)."""
        self.stopping.set()

    def run(self) -> None:
        error: str | None = None
        try:
            self._read_until_stopped()
        except alsaaudio.ALSAAudioError as exc:
            error = alsa_reason(exc)
        except Exception as exc:
            # Anything else is a bug, but still not a reason to lose the microphone for good.
            log.exception("capture thread failed")
            error = f"unexpected error: {exc!r}"
        finally:
            with contextlib.suppress(Exception):
                self.pcm.close()
            self.on_end(None if self.stopping.is_set() else error)

    def _read_until_stopped(self) -> None:
        period_ns = self.spec.period_ms * 1_000_000
        rate = self.spec.rate
        pacer = Pacer(period_ns, self.stopping)
        counters = self.counters
        while not self.stopping.is_set():
            frames, data = self.pcm.read()
            t = time.monotonic_ns()
            if frames < 0:
                # -EPIPE: the device overran (we were late) and a period was lost;
                # pyalsaaudio prepares the PCM again before the next read.
                counters["overruns"] += 1
                overruns = int(counters["overruns"])
                if overruns <= 5 or overruns % 100 == 0:
                    log.warning("capture overrun #%d: audio was lost", overruns)
                continue
            if not data or self.stopping.is_set():
                continue
            muted = self.gate.muted(t - period_ns)
            pcm = bytes(len(data)) if muted else data
            self.publisher.publish(AudioIn(pcm=pcm, t=t, rate=rate, muted=muted))
            counters["chunks"] += 1
            counters["bytes"] += len(data)
            counters["muted_chunks"] += muted
            self.on_chunk(t)
            pacer.after_read(t)
