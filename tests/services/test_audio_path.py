"""The audio path end to end with real processes: capture, session and playback against the simulator.

The microphone is a PulseAudio pipe-source (a real clock) fed by a talker thread that writes one
20 ms period every 20 ms. The speaker is an alsa-lib ``file`` PCM behind ``plug`` at 16 kHz, so
what the box plays can be copied back into the microphone as it is played: the echo test's
loudspeaker-next-to-the-microphone, at full level.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from services.simulator.server import Simulator, running_in_thread
from tests.helpers import PulseMic, alsa_home, espeak_wav, running, service_env, tolk_cmd, wait_until, wav_pcm

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
            said_rms, echo_rms = _rms(period), _rms(echo) if echo is not None else 0.0
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
        self.echoed_loud += _rms(chunk) > LOUD_RMS
        return chunk

    def played_back(self) -> bool:
        """All the speaker played so far has been copied into the microphone."""
        return not self._in_flight and len(self._echo) < PERIOD

    def stop(self) -> None:
        self.done.set()
        self.join(2)


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def _loud_periods(pcm: bytes) -> int:
    usable = len(pcm) - len(pcm) % PERIOD
    frames = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64).reshape(-1, PERIOD // 2)
    return int(np.sum(np.sqrt(np.mean(frames**2, axis=1)) > LOUD_RMS))




@contextlib.contextmanager
def _box(
    rundir: Path, mic: PulseMic, sim: Simulator, audio: str, *services: str, pulse_speaker: bool = False,
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


def _logs(rundir: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(rundir.glob("*.log")))


@pytest.mark.parametrize("echo", ["half-duplex", "off"])
def test_the_box_never_translates_its_own_voice(rundir: Path, mic: PulseMic, echo: str) -> None:
    """One question is spoken; the simulator's spoken answer comes out of the speaker straight
    back into the microphone. With the half-duplex contract the service hears the question
    only; with ``echo = "off"`` the same rig lets the box's voice through (the test can fail)."""
    question = wav_pcm(espeak_wav("Where is the exhibition?", rundir / "q.wav"))
    # Without half duplex the echo would barge in on the box's own answer and stop all of it.
    audio = f'streaming = "always"\necho = "{echo}"\nbarge_in = {"false" if echo == "off" else "true"}'
    with (
        running_in_thread() as sim,
        _box(rundir, mic, sim, audio, "capture", "session", "playback") as speaker,
    ):
        talker = Talker(mic, speaker)
        talker.start()
        try:
            talker.say(question)
            # The answer is played and echoed, then the room is quiet for a while.
            wait_until(lambda: talker.echoed_loud >= 10, 25, 0.1, "the answer, echoed into the microphone")
            if echo == "off":
                # The box answers its own voice, and that answer again: a loop, so stop at the first.
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: sim.responses >= 2, 15, 0.1, "an answer to the box's own voice")
            else:
                # Everything the speaker played has reached the microphone (an answer need not
                # end on a whole period: what is left of it is shorter than one).
                wait_until(lambda: talker.played_back() and talker.read_bytes == speaker.stat().st_size, 10, 0.1,
                           "the whole answer echoed")  # fmt: skip
                time.sleep(2.5)
        finally:
            talker.stop()
        heard = bytes(sim.audio_in)
        responses = sim.responses
    # The question lands on the service's 20 ms periods at any sample: counted at every offset,
    # it can straddle one more period here and there. The box's voice would add tens.
    question_loud = max(_loud_periods(bytes(2 * k) + question) for k in range(0, PERIOD // 2, 8))
    print(
        f"\necho={echo}: {talker.echoed_loud} loud periods of the box's voice reached the microphone; "
        f"the service heard {_loud_periods(heard)} loud periods (the question has {question_loud}) "
        f"and answered {responses} time(s)"
    )
    assert talker.echoed_loud >= 10, "the box's voice never reached the microphone"
    if echo == "half-duplex":
        assert responses == 1, _logs(rundir)
        assert _loud_periods(heard) <= question_loud, "the box's own voice reached the service"
    else:
        assert responses >= 2 and _loud_periods(heard) > question_loud + 10, _logs(rundir)


def test_speech_mode_sends_speech_only_and_never_clips_its_start(rundir: Path, mic: PulseMic) -> None:
    """Three utterances with noisy silence between them: in speech mode the service gets each
    one whole, with at least the 300 ms before it, and far fewer seconds than were captured."""
    rng = np.random.default_rng(5)
    gaps = (2.0, 3.0, 3.0, 2.5)
    texts = ("Good morning, welcome to the museum.", "The exhibition opens at nine.", "Tickets are sold here.")
    parts, spans = [np.zeros(int(16000 * gaps[0]))], []
    offset = len(parts[0])
    for k, text in enumerate(texts):
        voice = np.frombuffer(wav_pcm(espeak_wav(text, rundir / f"u{k}.wav")), dtype="<i2").astype(np.float64)
        spans.append((offset, offset + len(voice)))
        parts += [voice, np.zeros(int(16000 * gaps[k + 1]))]
        offset += len(voice) + len(parts[-1])
    clean = np.concatenate(parts)
    # Room noise everywhere, under the simulator's speech threshold but far from digital silence.
    fed = np.clip(clean + rng.normal(0, 150, clean.size), -32768, 32767).astype("<i2").tobytes()
    with (
        running_in_thread() as sim,
        _box(rundir, mic, sim, 'streaming = "speech"\nkeepalive_s = 5', "capture", "session"),
    ):
        talker = Talker(mic)
        talker.start()
        try:
            talker.say(fed)
            wait_until(lambda: not talker.said, 40, 0.1, "the talker to finish")
            wait_until(lambda: sim.responses >= len(texts), 10, 0.1, "a response per utterance")
        finally:
            talker.stop()
        heard = bytes(sim.audio_in)
    captured_s = len(fed) / 32000
    sent_s = len(heard) / 32000
    print(f"\nspeech mode: {sent_s:.1f} s of audio sent for {captured_s:.1f} s captured; always mode sends all of it")
    for k, (start, end) in enumerate(spans):
        with_preroll = fed[(start - 4800) * 2 : end * 2]  # 300 ms before the utterance, then all of it
        assert with_preroll in heard, f"utterance {k + 1} was clipped or cut\n{_logs(rundir)}"
    assert sim.responses == len(texts)
    assert sent_s < 0.75 * captured_s, (sent_s, captured_s)
