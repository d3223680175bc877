"""The whole box (capture, session, playback) on a PulseAudio microphone with a clock, against the
simulator, and a talker that feeds the microphone in real time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from services.simulator.server import Simulator
from tests.helpers import PulseMic, alsa_home, running, service_env, tolk_cmd, wait_until

PERIOD = 640  # 20 ms at 16 kHz mono S16_LE


LOUD_RMS = 500.0  # the simulator's speech threshold


class Talker(threading.Thread):
    """Writes one period every 20 ms into the microphone: what was said, plus (when given a
    speaker file) what the speaker played, mixed in at full level as it appears."""

    def __init__(self, mic: PulseMic, speaker: Path | None = None, echo_delay_s: float = 0.0) -> None:
        super().__init__(daemon=True, name="talker")
        self.mic = mic
        self.speaker = speaker
        # The speaker file fills as playback writes, up to its buffer ahead of what a real
        # device would play by then: a delay makes the copy come when a device would play it.
        self.echo_delay_s = echo_delay_s
        self._in_flight: deque[tuple[float, bytes]] = deque()
        self.said: deque[bytes] = deque()
        self.echoed_bytes = 0
        self.echoed_loud = 0
        self.overlapped = 0  # periods where the talker spoke over the box's loud voice
        self.trace: list[tuple[float, float]] = []  # per period written: RMS of what was said, of the echo
        self.done = threading.Event()
        self._echo = bytearray()
        self.read_bytes = 0  # of the speaker file, so far

    def say(self, pcm: bytes) -> None:
        pcm += bytes(-len(pcm) % PERIOD)
        self.said.extend(pcm[i : i + PERIOD] for i in range(0, len(pcm), PERIOD))

    def run(self) -> None:
        start, n = time.monotonic(), 0
        while not self.done.is_set():
            period = np.frombuffer(self.said.popleft() if self.said else bytes(PERIOD), dtype="<i2").astype(np.int32)
            echo = self._echo_period()
            said_rms, echo_rms = rms(period), rms(echo) if echo is not None else 0.0
            self.trace.append((said_rms, echo_rms))
            if echo is not None:
                self.overlapped += said_rms > LOUD_RMS and echo_rms > LOUD_RMS
                period += echo
            self.mic.write(np.clip(period, -32768, 32767).astype("<i2").tobytes())
            n += 1
            self.done.wait(max(0.0, start + n * 0.02 - time.monotonic()))

    def _echo_period(self) -> np.ndarray | None:
        if self.speaker is None:
            return None
        with contextlib.suppress(FileNotFoundError), self.speaker.open("rb") as fh:
            fh.seek(self.read_bytes)
            fresh = fh.read()
            self.read_bytes += len(fresh)
            if fresh:
                self._in_flight.append((time.monotonic() + self.echo_delay_s, fresh))
        return self._due_echo()

    def _due_echo(self) -> np.ndarray | None:
        """The next period of what the room has carried to the microphone by now, if any."""
        while self._in_flight and self._in_flight[0][0] <= time.monotonic():
            self._echo += self._in_flight.popleft()[1]
        if len(self._echo) < PERIOD:
            return None
        chunk = np.frombuffer(bytes(self._echo[:PERIOD]), dtype="<i2").astype(np.int32)
        del self._echo[:PERIOD]
        self.echoed_bytes += PERIOD
        self.echoed_loud += rms(chunk) > LOUD_RMS
        return chunk

    def played_back(self) -> bool:
        """All the speaker played so far has been copied into the microphone."""
        return not self._in_flight and len(self._echo) < PERIOD

    def stop(self) -> None:
        self.done.set()
        self.join(2)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def loud_periods(pcm: bytes) -> int:
    usable = len(pcm) - len(pcm) % PERIOD
    frames = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64).reshape(-1, PERIOD // 2)
    return int(np.sum(np.sqrt(np.mean(frames**2, axis=1)) > LOUD_RMS))


@contextlib.contextmanager
def box(
    rundir: Path,
    mic: PulseMic,
    sim: Simulator,
    audio: str,
    *services: str,
    pulse_speaker: bool = False,
    mic_source: str = "mic",
) -> Iterator[Path]:
    """The named services as real processes; yields the speaker file. With ``pulse_speaker``
    playback plays to the PulseAudio sink ``spk`` instead (a real clock; no file is written);
    ``mic_source`` is the PulseAudio source capture records."""
    speaker = rundir / "speaker.raw"
    home = alsa_home(
        rundir,
        mic.asoundrc("test_mic", mic_source)
        + (
            f'pcm.spk16 {{\n type pulse\n server "{mic.server}"\n device "spk"\n}}\n'
            if pulse_speaker
            else f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n}}\n'
            + 'pcm.spk16 {\n type plug\n slave { pcm "test_spk"; rate 16000; channels 1; format S16_LE }\n}\n'
        ),
    )
    config = rundir / "tolk.toml"
    config.write_text(
        f"""
[languages]
source = "en"
target = "zh"
[service]
url = "{sim.url}"
[audio]
capture_device = "test_mic"
playback_device = "spk16"
{audio}
"""
    )
    env = service_env(rundir, HOME=str(home))
    with contextlib.ExitStack() as stack:
        for name in services:
            stack.enter_context(
                running(tolk_cmd("service", name, "--config", str(config)), env, rundir / f"{name}.log")
            )
        wait_until(lambda: sim.events_of("session.updated") or sim.events_of("session.update"), 20, 0.1, "a session")
        time.sleep(1.0)  # the subscriptions between the processes settle
        yield speaker


def box_logs(rundir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(rundir.glob("*.log")))
