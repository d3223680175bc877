"""Capture behind a sound server after a freeze (an overrun the device itself never sees)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import numpy as np

from daemon.messages import AudioIn, Channel, Heartbeat
from tests.helpers import NotifySocket, PulseMic, alsa_home
from tests.services.capture_rig import PERIOD_BYTES, Feeder, Tap, capture_ready, start_capture, stop_capture


class CountingFeeder(Feeder):
    """A talker whose every period says its own number (a constant sample value), so each
    published period tells when it was spoken."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.spoken: dict[int, float] = {}

    def run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self.done.is_set():
            n += 1
            value = n % 30000 + 1
            self.spoken[value] = time.monotonic()
            with contextlib.suppress(OSError):
                os.write(self.fd, np.full(PERIOD_BYTES // 2, value, dtype="<i2").tobytes())
            self.done.wait(max(0.0, start + n * 0.02 - time.monotonic()))


def test_an_overrun_is_recovered_and_the_stream_catches_up(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    """Capture frozen for 1.5 s (SIGSTOP: a busy CPU, a swap storm) while the microphone keeps
    talking: afterwards the stale audio is dropped and counted, and what is published is fresh
    again, not 1.5 s behind for the rest of the day."""
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    feeder = CountingFeeder(mic.fd)
    feeder.start()
    tap = Tap(rundir, Channel.BULK, AudioIn)
    beats = Tap(rundir, Channel.STATE, Heartbeat)
    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)

            def lag(msg: AudioIn) -> float:
                spoken = feeder.spoken.get(int(np.frombuffer(msg.pcm[:2], dtype="<i2")[0]))
                return msg.t / 1e9 - spoken if spoken is not None else float("inf")

            # The test microphone (PulseAudio's pipe-source) has its own latency, in a ~0.1 s
            # sawtooth, plus what its FIFO gathered before capture started (the pipe-source
            # reads it in real time, so that part stays): the reference is a calm second.
            time.sleep(1.0)
            calm = [lag(m) for _ in range(60) if isinstance(m := tap.recv(2.0), AudioIn)]
            assert calm and max(calm) < 2.0, calm
            proc.send_signal(signal.SIGSTOP)
            time.sleep(1.5)
            proc.send_signal(signal.SIGCONT)
            time.sleep(2.0)  # recovery, then settled
            while tap.recv(0) is not None:
                pass  # what was published during the recovery
            late = [lag(m) for _ in range(50) if isinstance(m := tap.recv(2.0), AudioIn)]
            assert late and max(late) < max(calm) + 0.3, f"still behind after the overrun: {late} vs {calm}"
            beat = beats.until(lambda m: m.counters.get("overruns", 0) >= 1, 5, "the overrun counted")
            assert beat.counters["overrun_ms_dropped"] >= 500, beat.counters
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
        tap.close()
        beats.close()
