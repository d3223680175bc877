"""How much the speaker still has to play, from ALSA and from the wall clock.

A real device says what it holds (``buffer_size - avail``); alsa-lib's ``file``/``null`` PCMs
take every write at once and always report an empty buffer, so for those the writer keeps a
clock of its own and is held to it (docs/audio.md): ``drained`` must mean the listener heard it.
"""

from __future__ import annotations

import threading
import time

import alsaaudio

from daemon.alsa_device import Pcm


class DeviceClock:
    def __init__(self, pcm: Pcm, rate: int, buffer_frames: int, stopping: threading.Event) -> None:
        self.pcm = pcm
        self.rate = rate
        self.buffer_frames = buffer_frames
        self.stopping = stopping
        #: None until the first write shows whether the device keeps time itself.
        self.clocked: bool | None = None
        self._start = 0.0
        self._written = 0

    def begin(self) -> None:
        """A stretch of speech starts on an empty device."""
        self._start = time.monotonic()
        self._written = 0

    def wrote(self, frames: int) -> None:
        if self.clocked is None:
            # A device with a clock now holds what we wrote; one without has taken it all.
            self.clocked = self._avail() < self.buffer_frames
        self._written += frames

    def held_s(self) -> float:
        """Seconds of audio written but not yet played."""
        if self.clocked:
            if not self._playing():
                return 0.0
            avail = self._avail()
            return max(0, self.buffer_frames - avail) / self.rate if avail >= 0 else 0.0
        return max(0.0, self._virtual_held_s())

    def before_write(self) -> bool:
        """For a clockless device: wait while a real one would be full; True if it ran dry."""
        if self.clocked is not False or self._written == 0:
            return False
        held = self._virtual_held_s()
        if held < 0:
            self._start -= held  # a real device would have stopped and started again now
            return True
        ahead = held - self.buffer_frames / self.rate
        if ahead > 0:
            self.stopping.wait(ahead)
        return False

    def _virtual_held_s(self) -> float:
        return self._written / self.rate - (time.monotonic() - self._start)

    def _playing(self) -> bool:
        """Whether the device is playing: only then is ``buffer - avail`` what it holds.

        A stopped one (drained, dropped, never started) holds nothing, whatever ``avail`` says:
        behind PulseAudio, after a drain, it still reports the space it had before, so a new
        answer was seen 20 to 100 ms "behind" audio that was no longer there, and its echo
        reference laid that much late; the canceller lost the box's voice for most of the answer.
        """
        try:
            return self.pcm.state() in (alsaaudio.PCM_STATE_RUNNING, alsaaudio.PCM_STATE_DRAINING)
        except alsaaudio.ALSAAudioError:
            return False

    def _avail(self) -> int:
        try:
            return int(self.pcm.avail())
        except alsaaudio.ALSAAudioError:
            return -1
