"""What a PulseAudio source sounds like, recorded period by period and laid on monotonic time."""

from __future__ import annotations

import subprocess
import threading
import time

import numpy as np

from tests.helpers import PulseMic
from tests.services.box_rig import LOUD_RMS, rms


class Recording(threading.Thread):
    """A PulseAudio source as it sounds, from now on (``parec``, mono at ``rate``), period by
    period, with when each period arrived (to lay the recording on monotonic time)."""

    def __init__(self, mic: PulseMic, source: str, rate: int = 16000) -> None:
        super().__init__(daemon=True, name=f"record-{source}")
        self.rate = rate
        self.pcm = bytearray()
        self.arrivals: list[tuple[int, int]] = []  # (monotonic ns, samples recorded by then)
        self.loud = 0  # loud periods so far
        self._last_loud = 0.0
        self._loud_from = 0.0  # when the current loud stretch began
        self._proc = subprocess.Popen(
            ["parec", f"--server={mic.server}", f"--device={source}", f"--rate={rate}", "--channels=1",
             "--format=s16le", "--raw", "--latency-msec=20"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.start()

    def run(self) -> None:
        assert self._proc.stdout is not None
        while chunk := self._proc.stdout.read(self.rate // 50 * 2):
            self.pcm += chunk
            self.arrivals.append((time.monotonic_ns(), len(self.pcm) // 2))
            if rms(np.frombuffer(chunk, dtype="<i2")) > LOUD_RMS:
                now = time.monotonic()
                if now - self._last_loud > 0.5:
                    self._loud_from = now
                self._last_loud, self.loud = now, self.loud + 1

    def position(self, t_ns: int) -> int:
        """The sample recorded at monotonic ``t_ns``: the recording is sample-continuous, so the
        period that arrived soonest after it was recorded places all of it (up to a constant)."""
        t0 = min(at - n * 1_000_000_000 // self.rate for at, n in self.arrivals)
        return (t_ns - t0) * self.rate // 1_000_000_000

    def sounding(self) -> bool:
        return time.monotonic() - self._last_loud < 0.1

    def sounded_s(self) -> float:
        """How long the current loud stretch has lasted (0: quiet)."""
        return time.monotonic() - self._loud_from if self.sounding() else 0.0

    def quiet(self) -> bool:
        """Quiet for a while (a sink's monitor never stops: silence is recorded too)."""
        return time.monotonic() - self._last_loud > 0.5

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)
        self.join(2)
