"""The speaker's signal as the echo canceller needs it: 16 kHz, on the microphone's timeline.

Playback publishes what it hands the device (``RenderedAudio``: 24 kHz, stamped with the
moment its first sample plays, from the device's delay). Here it is resampled to 16 kHz with
soxr and laid on a timeline of sample positions, position = monotonic time x 16 kHz. Capture
reads it back period by period at the microphone's own position.

Both sides keep a stretch sample-continuous: a canceller's adaptive filter models the room
as a fixed delay and response, so the reference must not jitter against the microphone by
even a sample. A chunk whose stamp lies within ``SNAP_MS`` of where the previous one ended
is taken as its continuation (stamps jitter with scheduling; the audio itself is contiguous);
further away, a new stretch starts at its own stamp.

Written on the event loop, read on the capture thread: one lock around a small ring.
"""

from __future__ import annotations

import threading

import numpy as np
import soxr

RATE = 16000
#: The ring holds this much: the speaker's delay plus the capture side's, with room to spare.
RING_S = 2.0
#: A chunk stamped this close to the end of the previous one continues it.
SNAP_MS = 15


def position(t_ns: int) -> int:
    """The 16 kHz sample position of a monotonic time."""
    return t_ns * RATE // 1_000_000_000


class RenderReference:
    def __init__(self, source_rate: int = 24000, ring_s: float = RING_S) -> None:
        self.source_rate = source_rate
        self._ring = np.zeros(int(ring_s * RATE), dtype=np.int16)
        self._lock = threading.Lock()
        #: Everything before this position has been read (or skipped) by capture.
        self._read_pos: int | None = None
        # The current stretch: where it starts, how much went in (at the source rate) and came
        # out (at 16 kHz; soxr holds back a few ms until more input comes or it is flushed).
        self._stretch_at = 0
        self._taken = 0
        self._made = 0
        self._resampler: soxr.ResampleStream | None = None
        self._ended = False  # the stretch was ended (``add`` with no samples): the next starts anew
        self.stretches = 0
        self.late_samples = 0  # arrived after capture had passed their position

    def add(self, pcm: bytes, plays_ns: int, rate: int) -> None:
        """Playback handed ``pcm`` (S16 mono at ``rate``) to the device; it plays from ``plays_ns``.

        Empty ``pcm`` ends the stretch: what the resampler still holds goes in now, while the
        device is still playing it, rather than when the next answer starts.
        """
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        if not samples.size:
            self._flush()
            return
        start = position(plays_ns)
        continues = self._stretch_at + self._taken * RATE // self.source_rate
        jumped = abs(start - continues) > SNAP_MS * RATE // 1000
        if not self.stretches or self._ended or jumped or rate != self.source_rate:
            self._new_stretch(start, rate)
        self._taken += len(samples)
        self._write(self._resampler.resample_chunk(samples) if self._resampler is not None else samples)

    def read(self, start: int, count: int) -> np.ndarray:
        """The reference for ``count`` samples from position ``start``; zeros where nothing played.

        Reading consumes: the ring space is cleared for what comes after it.
        """
        ring = self._ring
        size = len(ring)
        with self._lock:
            if self._read_pos is None or start - self._read_pos >= size or start < self._read_pos - size:
                ring[:] = 0  # a jump (capture restarted, or stalled): whatever the ring held is stale
            elif start > self._read_pos:
                self._clear(self._read_pos, start - self._read_pos)  # positions skipped over
            out = self._take(start, count)
            self._clear(start, count)
            self._read_pos = start + count
        return out

    # --- the ring (under the lock) -----------------------------------------------------------

    def _flush(self) -> None:
        if self._resampler is not None:
            self._write(self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True))
            self._resampler = None
        self._ended = True

    def _new_stretch(self, start: int, rate: int) -> None:
        self._flush()
        self._ended = False
        self.stretches += 1
        self.source_rate = rate
        self._stretch_at, self._taken, self._made = start, 0, 0
        # soxr keeps the output aligned with the input (its filter delay is compensated), so
        # output sample k of a stretch plays at the stretch's start plus k / 16 kHz.
        self._resampler = soxr.ResampleStream(rate, RATE, 1, dtype="int16", quality="HQ") if rate != RATE else None

    def _write(self, samples: np.ndarray) -> None:
        with self._lock:
            self._put(self._stretch_at + self._made, samples)
        self._made += len(samples)

    def _put(self, start: int, samples: np.ndarray) -> None:
        size = len(self._ring)
        if self._read_pos is not None:
            if start < self._read_pos:  # capture has passed these already
                cut = min(len(samples), self._read_pos - start)
                self.late_samples += cut
                samples, start = samples[cut:], start + cut
            ahead = start + len(samples) - (self._read_pos + size)
            if ahead > 0:  # too far ahead of capture to hold: keep the part that fits
                samples = samples[: max(0, len(samples) - ahead)]
        if len(samples) > size:
            samples, start = samples[-size:], start + len(samples) - size
        idx = np.arange(start, start + len(samples)) % size
        self._ring[idx] = samples

    def _take(self, start: int, count: int) -> np.ndarray:
        return self._ring[np.arange(start, start + count) % len(self._ring)].copy()

    def _clear(self, start: int, count: int) -> None:
        count = min(count, len(self._ring))
        self._ring[np.arange(start, start + count) % len(self._ring)] = 0
