"""The playback thread: a jitter buffer in front of one ALSA PCM.

Per stretch of speech: wait for ``playback_start_ms`` of audio (or the response's end), play
period by period (``started`` as the first sample is handed over), fill a late delta's gap with
silence rather than let the device underrun, and after the end marker say ``drained`` once the
device has played everything. A flush (barge-in) drops what is queued. docs/audio.md.
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

from daemon.alsa_device import BYTES_PER_FRAME, Pcm, PcmSpec, alsa_reason
from daemon.audio_format import Converter, DeviceFormat, FormatError, device_format, scaled
from services.playback.clock import DeviceClock
from services.playback.queue import Chunk, ChunkQueue

log = logging.getLogger("tolk.playback")

#: Refill with silence when the device holds less than this and no audio is queued.
LOW_WATER_S = 0.04
#: Silence written for one gap before the stretch is ended anyway (no end marker came).
MAX_FILL_S = 0.5
#: How many recent chunks the latency median covers.
LATENCY_WINDOW = 200
#: A run's start is re-read over its first half second, moved earlier by at least a little
#: (finer is scheduling noise) and at most a period and a half (more is a device fault).
REFINE_S = 0.5
MIN_REFINE_NS = 500_000
MAX_REFINE_NS = 30_000_000
#: Counters this thread keeps (created before it starts; it only updates existing keys).
COUNTERS = (
    "chunks_played",
    "bytes_played",
    "underruns",
    "gap_fills",
    "silence_ms_inserted",
    "latency_ms_p50",
    "start_wait_ms",
    "reference_refined",
)

StateCallback = Callable[[str, str, int, int], None]  # state, response_id, frames, t
#: What was handed to the device (24 kHz mono, volume applied), when its first sample plays
#: (monotonic ns), and how much the device held before it (s): the echo canceller's reference.
RenderedCallback = Callable[[bytes, int, float], None]


class Writer(threading.Thread):
    def __init__(
        self,
        pcm: Pcm,
        spec: PcmSpec,
        queue: ChunkQueue,
        start_ms: Callable[[], int],
        volume: Callable[[], float],
        counters: dict[str, float],
        on_state: StateCallback,
        on_written: Callable[[], None],
        on_end: Callable[[str | None], None],
        on_rendered: RenderedCallback | None = None,
    ) -> None:
        super().__init__(name="playback-writer", daemon=True)
        self.pcm = pcm
        self.spec = spec
        self.queue = queue
        self.start_ms = start_ms
        self.volume = volume
        self.counters = counters
        self.on_state = on_state
        self.on_written = on_written
        self.on_end = on_end
        self.on_rendered = on_rendered
        self.stopping = threading.Event()
        self.flushing = threading.Event()
        #: When the thread entered a device call (0 outside one): a write stuck in the
        #: device is the one thing that makes playback stale; waiting for audio is by design.
        self.in_device_since_ns = 0
        self.playing = False
        self._response_id = ""
        self._frames = 0
        # The reference's running count (``_publish_rendered``): when the run's first frame
        # plays (0: no run yet), what the device held then, frames handed since.
        self._run_at_ns = 0
        self._run_held_s = 0.0
        self._run_frames = 0
        self._run_device_frames = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def stop(self) -> None:
        self.stopping.set()
        self.queue.wake()

    def flush(self) -> None:
        """Barge-in: stop what is playing (the caller empties the queue)."""
        if self.playing:
            self.flushing.set()
            self.queue.wake()

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        error: str | None = None
        try:
            self._setup()
            while not self.stopping.is_set():
                first = self.queue.get(None, self.stopping)
                if first is not None:
                    self._play_stretch(first)
        except alsaaudio.ALSAAudioError as exc:
            error = alsa_reason(exc)
        except FormatError as exc:
            error = str(exc)
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

    def _setup(self) -> None:
        info = self.pcm.info()
        got = device_format(info, self.spec.device)
        self.converter = Converter(DeviceFormat(self.spec.rate, self.spec.channels), got)
        if not self.converter.identity:
            log.info("%s takes %d Hz x%d: converting from 24 kHz mono", self.spec.describe(), got.rate, got.channels)
        self.device_period_bytes = got.rate * self.spec.period_ms // 1000 * got.frame_bytes
        self.frame_bytes = got.frame_bytes
        buffer_frames = int(info.get("buffer_size") or got.rate * self.spec.period_ms * self.spec.periods // 1000)
        self.clock = DeviceClock(self.pcm, got.rate, buffer_frames, self.stopping)

    def _play_stretch(self, first: Chunk) -> None:
        self.flushing.clear()
        pending, ended = self._prebuffer(first)
        if not pending:
            return
        self.clock.begin()
        self._run_at_ns = 0
        for chunk in pending:
            self._write(chunk)
        filled_s = 0.0
        while not ended and not self.stopping.is_set() and not self.flushing.is_set():
            more = self.queue.get(max(0.0, self.clock.held_s() - LOW_WATER_S), self.stopping)
            if more is not None:
                if more.end:
                    break
                filled_s = 0.0
                self._write(more)
            elif not self.stopping.is_set() and not self.flushing.is_set():
                if filled_s >= MAX_FILL_S:
                    break  # the response's end marker never came
                if filled_s == 0.0:
                    self.counters["gap_fills"] += 1
                filled_s += self._write_silence()
        self._end_run()
        if self.stopping.is_set():
            return  # run() drops what is left and says drained
        self._wait_played()
        self._drained()

    def _prebuffer(self, first: Chunk) -> tuple[list[Chunk], bool]:
        """The jitter buffer's start: collect until enough is queued, the response ended (True), or time is up."""
        if first.end:
            return [], True
        pending = [first]
        start_ms = self.start_ms()
        want = self.spec.rate * BYTES_PER_FRAME * start_ms // 1000
        have = len(first.pcm)
        ended = False
        deadline = time.monotonic() + start_ms / 1000
        while have < want and not self.stopping.is_set() and not self.flushing.is_set():
            chunk = self.queue.get(max(0.0, deadline - time.monotonic()), self.stopping)
            if chunk is None:
                break  # the wait is over: play what there is
            if chunk.end:
                ended = True
                break
            pending.append(chunk)
            have += len(chunk.pcm)
        self.counters["start_wait_ms"] = round((time.monotonic_ns() - first.t) / 1e6, 1)
        return pending, ended

    # --- the device --------------------------------------------------------------------------

    def _write(self, chunk: Chunk) -> None:
        pcm = chunk.pcm
        volume = self.volume()
        if volume < 1.0:
            pcm = scaled(pcm, volume)
        data = self.converter.convert(pcm)
        handed = self._write_device(data, chunk.response_id, pcm)
        if handed:
            self._latencies.append((handed - chunk.t) / 1e6)
            self.counters["latency_ms_p50"] = round(statistics.median(self._latencies), 2)
        self._frames += len(chunk.pcm) // BYTES_PER_FRAME
        self.counters["chunks_played"] += 1
        self.counters["bytes_played"] += len(chunk.pcm)
        self._response_id = chunk.response_id or self._response_id

    def _write_silence(self) -> float:
        silence = bytes(self.spec.rate * self.spec.period_ms // 1000 * BYTES_PER_FRAME)
        self._write_device(bytes(self.device_period_bytes), self._response_id, silence)
        self.counters["silence_ms_inserted"] += self.spec.period_ms
        return self.spec.period_ms / 1000

    def _write_device(self, data: bytes, response_id: str, source: bytes) -> int:
        """Write in periods; returns when the first one was handed to the device (0 if none).

        ``source`` is the same audio at 24 kHz mono. Each period's share of it goes to
        ``on_rendered`` stamped with the moment it will play: *before* the period is written
        (the echo canceller must have the reference before the microphone hears it, and a write
        into a full device blocks for a period or more), except the first of a run, which goes
        right after its write, whose moment only the write tells (``_start_run``).
        """
        view = memoryview(data)
        first_ns = 0
        source_frames = len(source) // BYTES_PER_FRAME
        for offset in range(0, len(view), self.device_period_bytes):
            if self.flushing.is_set() or self.stopping.is_set():
                break
            piece = view[offset : offset + self.device_period_bytes]
            if self.clock.before_write():
                self._underrun()
            share, published = b"", False
            if self.on_rendered is not None:
                a = source_frames * offset // len(data)
                b = source_frames * (offset + len(piece)) // len(data)
                share = source[a * BYTES_PER_FRAME : b * BYTES_PER_FRAME]
                if self._run_at_ns:
                    self._publish_rendered(share)
                    published = True
            if not self.playing:
                # Said as the first sample is handed over, before the write: half duplex mutes
                # the microphone on it, and the box's voice must not reach the room first.
                self.playing = True
                self._frames = 0
                self._response_id = response_id
                self.on_state("started", response_id, 0, time.monotonic_ns())
            self._write_piece(piece)
            if share and not published:
                self._start_run(len(piece) // self.frame_bytes)
                self._publish_rendered(share)
            elif published:
                self._refine_run(len(piece) // self.frame_bytes)
            first_ns = first_ns or time.monotonic_ns()
            self.on_written()
        return first_ns

    def _start_run(self, written_frames: int) -> None:
        """The stopped device has just taken a run's first period: its first frame played that
        period less what the device still holds, counted back from when it said so.

        Counted from the reading, never from the write: how long the write took (a round trip
        to the sound server, 1-25 ms on a busy machine) says nothing of when the device
        started, and anchoring on the write's start laid answers up to 11 ms apart (measured
        against the sink's recording; counted back from the reading they lie within 1 ms). It
        can hold no more than that period (PulseAudio's plugin, just restarted, was seen to say
        a period more: a stamp 20 ms late)."""
        period_s = written_frames / self.clock.rate
        self._run_held_s = min(self.clock.held_s(), period_s)
        read_ns = time.monotonic_ns()
        self._run_at_ns = read_ns - int((period_s - self._run_held_s) * 1e9)
        self._run_frames = 0
        self._run_device_frames = written_frames

    def _refine_run(self, written_frames: int) -> None:
        """Each later write tells again when the run began: now, less what the device has played.
        A reading can only be late (the thread kept from the CPU or the GIL between the write and
        the reading, or the device reporting its progress in steps), never early, so the run
        begins at the earliest of them. On a busy core the first reading was seen 5-20 ms late;
        a few periods on, the earliest lies within a millisecond of the sound."""
        self._run_device_frames += written_frames
        if not self.clock.clocked or self._run_device_frames > self.clock.rate * REFINE_S:
            return
        played_s = self._run_device_frames / self.clock.rate - self.clock.held_s()
        began_ns = time.monotonic_ns() - int(played_s * 1e9)
        if self._run_at_ns - MAX_REFINE_NS < began_ns < self._run_at_ns - MIN_REFINE_NS:
            self._run_at_ns = began_ns
            self.counters["reference_refined"] += 1

    def _publish_rendered(self, share: bytes) -> None:
        """The reference for one period, stamped with when it plays.

        While the device plays without a break, the stamp is counted, not measured: the moment
        the run's first sample plays (``_start_run``) plus the frames handed since. Stamps read
        afresh jitter with scheduling and with the steps in which a sound server reports what it
        holds (10-25 ms behind PulseAudio), and a canceller's filter cannot follow a reference
        that jumps by a few milliseconds. A new stretch or an underrun starts a new run.
        """
        at_ns = self._run_position_ns()
        self._run_frames += len(share) // BYTES_PER_FRAME
        assert self.on_rendered is not None
        self.on_rendered(share, at_ns, self._run_held_s)

    def _run_position_ns(self) -> int:
        """When the next frame of the current run plays."""
        return self._run_at_ns + self._run_frames * 1_000_000_000 // self.spec.rate

    def _end_run(self) -> None:
        """Nothing more follows this run: an empty reference says so, and capture's resampler
        lets out the few milliseconds it holds back while the device still plays them."""
        if self._run_at_ns and self.on_rendered is not None:
            self.on_rendered(b"", self._run_position_ns(), 0.0)
        self._run_at_ns = 0

    def _write_piece(self, piece: memoryview) -> None:
        frames = len(piece) // self.frame_bytes
        done = 0
        refused = 0
        while done < frames and not self.stopping.is_set():
            written = self._device_call(self.pcm.write, piece[done * self.frame_bytes :])
            if written < 0:
                # -EPIPE: the device ran dry before this write; pyalsaaudio has prepared it
                # again, so the same data goes out on the next call.
                refused += 1
                if refused > 3:
                    raise alsaaudio.ALSAAudioError(f"the device keeps refusing writes (error {written})")
                self._underrun()
                continue
            done += written
            self.clock.wrote(written)

    def _device_call(self, call: Callable[..., int], *args: object) -> int:
        self.in_device_since_ns = time.monotonic_ns()
        try:
            return call(*args)
        finally:
            self.in_device_since_ns = 0

    def _underrun(self) -> None:
        self._end_run()  # the device stopped and started again: the reference's count too
        self.counters["underruns"] += 1
        count = int(self.counters["underruns"])
        if count <= 5 or count % 100 == 0:
            log.warning("playback underrun #%d: the speaker ran dry mid-sentence", count)

    def _wait_played(self) -> None:
        """Until the device has played what it was given (frames written minus its delay)."""
        deadline = time.monotonic() + 5.0
        while (held := self.clock.held_s()) > 0.001 and time.monotonic() < deadline:
            if self.stopping.wait(held):
                return
        # Nothing is left to play, so drain() returns at once: it stops the device on purpose
        # (the next stretch starts cleanly rather than with an underrun), and makes a file PCM
        # write out the frames it still holds.
        try:
            self._device_call(self.pcm.drain)
        except alsaaudio.ALSAAudioError:
            with contextlib.suppress(alsaaudio.ALSAAudioError):
                self.pcm.drop()

    def _drained(self) -> None:
        self.playing = False
        self.flushing.clear()
        self.on_state("drained", self._response_id, self._frames, time.monotonic_ns())
