"""The playback thread: a small jitter buffer in front of one ALSA PCM.

Per stretch of speech: wait until ``playback_start_ms`` of audio is queued (or the first
chunk has waited that long, or the response ended, so a short reply still plays), write it
period by period, keep writing while audio keeps coming, then ``drain()`` (which returns once
the device has played everything) and say ``drained``. Between stretches the thread sleeps on
the queue: no silence is written while idle (a device without a clock would take it endlessly).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable

import alsaaudio

from services.alsa_device import BYTES_PER_FRAME, Pcm, PcmSpec, alsa_reason
from services.playback.queue import Chunk, ChunkQueue

log = logging.getLogger("tolk.playback")

#: Beyond what the device still holds, how long to wait for more audio before draining.
GAP_SLACK_S = 0.03
#: How many recent chunks the latency median covers.
LATENCY_WINDOW = 200
#: Counters this thread keeps (created before it starts; it only updates existing keys).
COUNTERS = ("chunks_played", "bytes_played", "underruns", "latency_ms_p50")

StateCallback = Callable[[str, str, int, int], None]  # state, response_id, frames, t


class Writer(threading.Thread):
    def __init__(
        self,
        pcm: Pcm,
        spec: PcmSpec,
        queue: ChunkQueue,
        start_ms: Callable[[], int],
        counters: dict[str, float],
        on_state: StateCallback,
        on_written: Callable[[], None],
        on_end: Callable[[str | None], None],
    ) -> None:
        super().__init__(name="playback-writer", daemon=True)
        self.pcm = pcm
        self.spec = spec
        self.queue = queue
        self.start_ms = start_ms
        self.counters = counters
        self.on_state = on_state
        self.on_written = on_written
        self.on_end = on_end
        self.stopping = threading.Event()
        #: When the thread entered a device call (0 outside one): a write stuck in the
        #: device is the one thing that makes playback stale; waiting for audio is by design.
        self.in_device_since_ns = 0
        self.playing = False
        self._response_id = ""
        self._frames = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._buffer_frames = self._device_buffer_frames()

    def stop(self) -> None:
        self.stopping.set()
        self.queue.wake()

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        error: str | None = None
        try:
            while not self.stopping.is_set():
                first = self.queue.get(None, self.stopping)
                if first is not None:
                    self._play_stretch(first)
        except alsaaudio.ALSAAudioError as exc:
            error = alsa_reason(exc)
        except Exception as exc:
            log.exception("playback thread failed")
            error = f"unexpected error: {exc!r}"
        finally:
            if self.playing:
                with contextlib.suppress(Exception):
                    self.pcm.drop()
                self._drained()
            with contextlib.suppress(Exception):
                self.pcm.close()
            self.on_end(None if self.stopping.is_set() else error)

    def _play_stretch(self, first: Chunk) -> None:
        pending = self._prebuffer(first)
        if not pending:
            return
        for chunk in pending:
            self._write(chunk)
        while not self.stopping.is_set():
            more = self.queue.get(self._gap_wait_s(), self.stopping)
            if more is None:
                break
            if not more.end:
                self._write(more)
        if self.stopping.is_set():
            return  # run() drops what is left and says drained
        self._device_call(self.pcm.drain)
        self._drained()

    def _prebuffer(self, first: Chunk) -> list[Chunk]:
        """The jitter buffer: collect until enough is queued, the response ended, or time is up."""
        if first.end:
            return []
        pending = [first]
        start_ms = self.start_ms()
        want = self.spec.rate * BYTES_PER_FRAME * start_ms // 1000
        have = len(first.pcm)
        deadline = time.monotonic() + start_ms / 1000
        while have < want and not self.stopping.is_set():
            chunk = self.queue.get(max(0.0, deadline - time.monotonic()), self.stopping)
            if chunk is None:
                break  # the wait is over: play what there is
            if chunk.end:
                break
            pending.append(chunk)
            have += len(chunk.pcm)
        return pending

    # --- the device --------------------------------------------------------------------------

    def _write(self, chunk: Chunk) -> None:
        period = self.spec.period_bytes
        view = memoryview(chunk.pcm)
        for offset in range(0, len(view), period):
            piece = view[offset : offset + period]
            if self.pcm.state() == alsaaudio.PCM_STATE_XRUN:
                self._underrun()
            self._write_piece(piece)
            handed = time.monotonic_ns()
            if offset == 0:
                self._latencies.append((handed - chunk.t) / 1e6)
                self.counters["latency_ms_p50"] = round(statistics.median(self._latencies), 2)
            if not self.playing:
                self.playing = True
                self._frames = 0
                self._response_id = chunk.response_id
                self.on_state("started", chunk.response_id, 0, handed)
            self._frames += len(piece) // BYTES_PER_FRAME
            self.on_written()
        self.counters["chunks_played"] += 1
        self.counters["bytes_played"] += len(chunk.pcm)
        self._response_id = chunk.response_id or self._response_id

    def _write_piece(self, piece: memoryview) -> None:
        frames = len(piece) // BYTES_PER_FRAME
        done = 0
        retried = False
        while done < frames:
            try:
                written = self._device_call(self.pcm.write, piece[done * BYTES_PER_FRAME :])
            except alsaaudio.ALSAAudioError as exc:
                # EPIPE: the device ran dry during this write; pyalsaaudio prepares it again on
                # the next call. Anything else (the device went away) ends this thread.
                if alsa_reason(exc) != "Broken pipe" or retried:
                    raise
                self._underrun()
                retried = True
                continue
            done += max(0, written)

    def _device_call(self, call: Callable[..., int], *args: object) -> int:
        self.in_device_since_ns = time.monotonic_ns()
        try:
            return call(*args)
        finally:
            self.in_device_since_ns = 0

    def _underrun(self) -> None:
        self.counters["underruns"] += 1
        count = int(self.counters["underruns"])
        if count <= 5 or count % 100 == 0:
            log.warning("playback underrun #%d: the speaker ran dry mid-sentence", count)

    def _gap_wait_s(self) -> float:
        """How long more audio may take: what the device still holds, plus a little."""
        try:
            held = max(0, self._buffer_frames - self.pcm.avail())
        except alsaaudio.ALSAAudioError:
            held = 0
        return held / self.spec.rate + GAP_SLACK_S

    def _device_buffer_frames(self) -> int:
        try:
            return int(self.pcm.info()["buffer_size"])
        except (alsaaudio.ALSAAudioError, KeyError, TypeError, ValueError):
            return self.spec.period_frames * self.spec.periods

    def _drained(self) -> None:
        self.playing = False
        self.on_state("drained", self._response_id, self._frames, time.monotonic_ns())
