"""The capture thread: wait for the device in poll(), read what it has, hand on 20 ms periods.

It owns the PCM and (through the pipeline) the bus's bulk publisher: ZeroMQ sockets belong to
one thread. It never exits the process: a failed or silent device is closed and the event loop
told why. On the way it converts to 16 kHz mono, holds a clockless device (alsa-lib's
``file``/``null``) to real time, and drops a backlog after an overrun; docs/audio.md says why.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable

import alsaaudio

from daemon.alsa_device import Pcm, PcmSpec, alsa_reason
from daemon.audio_format import Converter, DeviceFormat, FormatError, device_format
from services.capture.pipeline import CapturePipeline

log = logging.getLogger("tolk.capture")

#: A device this far ahead of the wall clock has no clock of its own (see ``Pacer``).
AHEAD_LIMIT_NS = 100_000_000
#: Behind by this much a clockless device stalled (a paused FIFO): start afresh.
STALL_NS = 1_000_000_000
#: Forget accumulated clock drift between the device and CLOCK_MONOTONIC this often.
REANCHOR_NS = 60_000_000_000
#: A device that delivers nothing for this long is reported and reopened.
STALL_S = 3.0
#: How often the thread looks up from poll() to see whether it should stop.
POLL_MS = 200
#: At most this much backlog is read away in one overrun recovery.
MAX_DISCARD_S = 10.0

#: While the probe decides, audio read this far ahead of the wall clock is held back, not sent.
PROBE_AHEAD_NS = 100_000_000
#: A device still full after handing out this much more than real time has no clock.
PROBE_CLOCKLESS_NS = 2_000_000_000

#: Counters this thread keeps (created before it starts; it only updates existing keys).
COUNTERS = ("overruns", "overrun_ms_dropped")


class Stalled(Exception):
    pass


class Pacer:
    """Holds a device without a clock to real time; a device with one never waits here."""

    def __init__(self, period_ns: int, stopping: threading.Event) -> None:
        self.period_ns = period_ns
        self.stopping = stopping
        self.anchor_ns: int | None = None
        self.periods = 0

    def after_read(self, now_ns: int, periods: int = 1) -> None:
        if self.anchor_ns is None or now_ns - self.anchor_ns > REANCHOR_NS:
            self.anchor_ns, self.periods = now_ns, 0
            return
        self.periods += periods
        ahead = self.anchor_ns + self.periods * self.period_ns - now_ns
        if ahead > AHEAD_LIMIT_NS:
            self.stopping.wait(ahead / 1e9)
        elif -ahead > STALL_NS:
            self.anchor_ns, self.periods = now_ns, 0


class ClockProbe:
    """Decides from the first reads whether the device has a clock that ALSA's avail() shows.

    - avail() below a full buffer after a read: a clock (a sound card, a sound server). What was
      read ahead of real time before that was a backlog kept from before the first read: stale.
    - full after every read, and a read had to wait: the source paces itself (a FIFO fed in real
      time behind a ``file`` PCM); what was held goes out at once, so the stream starts current.
    - full after every read, never waiting, ``PROBE_CLOCKLESS_NS`` ahead: no clock at all.
    """

    def __init__(self) -> None:
        self.first_ns: int | None = None
        self.read_ns = 0
        self.held: list[tuple[bytes, int]] = []
        self.waited = False  # the last read had to wait for audio

    def ahead_ns(self, t: int) -> int:
        return self.read_ns - (t - (self.first_ns or t))

    def after_read(self, duration_ns: int, t: int, full: bool, waited: bool) -> bool | None:
        """The verdict (True: clocked, False: not), or None while undecided."""
        if self.first_ns is None:
            self.first_ns = t - duration_ns
        self.read_ns += duration_ns
        self.waited = waited
        if not full:
            return True
        if waited or self.ahead_ns(t) > PROBE_CLOCKLESS_NS:
            return False
        return None

    def release(self) -> tuple[list[tuple[bytes, int]], int]:
        """What was held back, and its size in bytes."""
        held, self.held = self.held, []
        return held, sum(len(pcm) for pcm, _ in held)


class Reader(threading.Thread):
    def __init__(
        self,
        pcm: Pcm,
        spec: PcmSpec,
        pipeline: CapturePipeline,
        counters: dict[str, float],
        on_chunk: Callable[[int], None],
        on_end: Callable[[str | None], None],
    ) -> None:
        # Daemon: a read blocked in a device that never delivers must not keep the process alive.
        super().__init__(name="capture-reader", daemon=True)
        self.pcm = pcm
        self.spec = spec
        self.pipeline = pipeline
        self.counters = counters
        self.on_chunk = on_chunk
        self.on_end = on_end
        self.stopping = threading.Event()
        self.clocked: bool | None = None  # decided at the first read
        self._pending = bytearray()
        self._pacer: Pacer | None = None

    def stop(self) -> None:
        """Ask the thread to end; it looks up from the device at least every POLL_MS."""
        self.stopping.set()

    def run(self) -> None:
        error: str | None = None
        try:
            self._read_until_stopped()
        except alsaaudio.ALSAAudioError as exc:
            error = alsa_reason(exc)
        except (Stalled, FormatError) as exc:
            error = str(exc)
        except Exception as exc:
            # Anything else is a bug, but still not a reason to lose the microphone for good.
            log.exception("capture thread failed")
            error = f"unexpected error: {exc!r}"
        finally:
            with contextlib.suppress(Exception):
                self.pcm.close()
            self.on_end(None if self.stopping.is_set() else error)

    # --- the loop ----------------------------------------------------------------------------

    def _read_until_stopped(self) -> None:
        spec = self.spec
        info = self.pcm.info()
        got = device_format(info, spec.device)
        converter = Converter(got, DeviceFormat(spec.rate, spec.channels))
        if not converter.identity:
            log.info("%s gives %d Hz x%d: converting to %d Hz mono", spec.describe(), got.rate, got.channels, spec.rate)
        buffer_frames = int(info.get("buffer_size") or spec.period_frames * spec.periods)
        period_frames = int(info.get("period_size") or spec.period_frames)
        period_ns = spec.period_ms * 1_000_000
        pacer = self._pacer = Pacer(period_ns, self.stopping)
        poller = select.poll()
        for fd, events in self.pcm.polldescriptors():
            poller.register(fd, events)
        last_audio = time.monotonic()
        probe = ClockProbe()
        while not self.stopping.is_set():
            asked = time.monotonic_ns()
            if not poller.poll(POLL_MS):
                if time.monotonic() - last_audio > STALL_S:
                    raise Stalled(f"no audio for {STALL_S:.0f} s")
                continue
            frames, data = self.pcm.read()
            t = time.monotonic_ns()
            if frames < 0:
                # -EPIPE: the ring buffer overflowed while we were late; pyalsaaudio has
                # prepared the device again. The lost audio is gone: count it, go on.
                self._overrun(buffer_frames / got.rate)
                continue
            if not data:
                if time.monotonic() - last_audio > STALL_S:
                    raise Stalled(f"no audio for {STALL_S:.0f} s")
                continue
            last_audio = time.monotonic()
            # A full ring buffer right after a read: from the first read on, a PCM without a
            # clock (it always has everything ready); later, on a device with one, a backlog.
            full = self.pcm.avail() >= buffer_frames - period_frames // 2
            pcm = converter.convert(data)
            if self.clocked is None:
                if self._probe(probe, pcm, t, frames * 1_000_000_000 // got.rate, full, t - asked, period_ns):
                    continue
            elif self.clocked and full:
                self._discard_backlog(got, period_frames)
                continue
            emitted = self._emit(pcm, t, period_ns)
            if emitted:
                self.on_chunk(t)
                if not self.clocked:
                    pacer.after_read(t, emitted)

    def _probe(
        self, probe: ClockProbe, pcm: bytes, t: int, duration_ns: int, full: bool, waited_ns: int, period_ns: int
    ) -> bool:
        """One read while the clock is undecided; True if its audio was held back or dropped."""
        self.clocked = probe.after_read(duration_ns, t, full, waited_ns >= period_ns // 2)
        if self.clocked is None:
            if probe.ahead_ns(t) <= PROBE_AHEAD_NS:
                return False
            probe.held.append((pcm, t))
            return True
        held, held_bytes = probe.release()
        held_ms = held_bytes * period_ns / self.spec.period_bytes / 1e6
        if self.clocked:
            if held:
                log.info("%.0f ms of audio kept for us before the first read: stale, dropped", held_ms)
            return False
        # The source paced its reads (it made us wait): what it had queued goes out at once, to
        # catch up. No clock at all: the same audio goes out in real time, like the rest.
        paced = self._pacer if not probe.waited else None
        if held:
            how = "in real time" if paced else "at once"
            log.info("no clock in ALSA's view: %.0f ms read ahead go out %s", held_ms, how)
        for stale, stamp in held:
            emitted = self._emit(stale, stamp, period_ns)
            if paced is not None and emitted:
                paced.after_read(time.monotonic_ns(), emitted)
        return False

    def _emit(self, pcm: bytes, t: int, period_ns: int) -> int:
        """Cut into whole periods, each stamped with its own end; returns how many went out."""
        self._pending += pcm
        size = self.spec.period_bytes
        count = len(self._pending) // size
        ns_per_byte = period_ns / size
        for k in range(count):
            after = len(self._pending) - (k + 1) * size  # bytes read after this period's end
            end_ns = t - int(after * ns_per_byte)
            self.pipeline.period(bytes(self._pending[k * size : (k + 1) * size]), end_ns, period_ns)
        del self._pending[: count * size]
        return count

    def _discard_backlog(self, got: DeviceFormat, period_frames: int) -> None:
        """The device holds a full buffer: we fell behind (a stall, a busy CPU). Read it away."""
        dropped = 0
        limit = int(MAX_DISCARD_S * got.rate)
        while dropped < limit and not self.stopping.is_set():
            frames, _ = self.pcm.read()
            if frames <= 0:
                break
            dropped += frames
            if self.pcm.avail() < period_frames:
                break
        self._pending.clear()
        self._overrun(dropped / got.rate)

    def _overrun(self, lost_s: float) -> None:
        self.counters["overruns"] += 1
        self.counters["overrun_ms_dropped"] += round(lost_s * 1000)
        overruns = int(self.counters["overruns"])
        if overruns <= 5 or overruns % 100 == 0:
            log.warning("capture overrun #%d: %.0f ms of audio dropped to catch up", overruns, lost_s * 1000)
