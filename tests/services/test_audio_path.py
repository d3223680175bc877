"""The audio path end to end with real processes: capture, session and playback against the simulator.

The microphone is a PulseAudio pipe-source fed by a talker thread that writes one 20 ms period
every 20 ms: the talker is the clock (a pipe-source has none of its own, TESTING.md). The speaker
is an alsa-lib ``file`` PCM behind ``plug`` at 16 kHz, so what the box plays can be copied back
into the microphone as it is played: the echo test's loudspeaker-next-to-the-microphone, at full
level.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest

from services.simulator.server import running_in_thread
from tests.helpers import PulseMic, espeak_wav, wait_until, wav_pcm
from tests.services.box_rig import PERIOD, Talker, box, box_logs, loud_periods


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
        box(rundir, mic, sim, audio, "capture", "session", "playback") as speaker,
    ):
        talker = Talker(mic, speaker)
        talker.start()
        try:
            talker.say(question)
            # The answer is played and echoed, then the room is quiet for a while.
            try:
                wait_until(lambda: talker.echoed_loud >= 10, 25, 0.1, "the answer, echoed into the microphone")
            except AssertionError as exc:  # seen once in a fresh-clone run: say where the answer stopped
                heard_so_far = loud_periods(bytes(sim.audio_in))
                raise AssertionError(f"{exc}; the service heard {heard_so_far} loud periods and answered "
                                     f"{sim.responses} time(s)\n{box_logs(rundir)}") from exc  # fmt: skip
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
    question_loud = max(loud_periods(bytes(2 * k) + question) for k in range(0, PERIOD // 2, 8))
    print(
        f"\necho={echo}: {talker.echoed_loud} loud periods of the box's voice reached the microphone; "
        f"the service heard {loud_periods(heard)} loud periods (the question has {question_loud}) "
        f"and answered {responses} time(s)"
    )
    assert talker.echoed_loud >= 10, "the box's voice never reached the microphone"
    if echo == "half-duplex":
        assert responses == 1, box_logs(rundir)
        assert loud_periods(heard) <= question_loud, "the box's own voice reached the service"
    else:
        assert responses >= 2 and loud_periods(heard) > question_loud + 10, box_logs(rundir)


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
        box(rundir, mic, sim, 'streaming = "speech"\nkeepalive_s = 5', "capture", "session"),
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
        assert with_preroll in heard, f"utterance {k + 1} was clipped or cut\n{box_logs(rundir)}"
    assert sim.responses == len(texts)
    assert sent_s < 0.75 * captured_s, (sent_s, captured_s)
