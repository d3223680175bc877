"""Playback behind a sound server: the echo canceller's reference is laid where the sound played.

Playback plays to the test's PulseAudio sink ``spk`` (a real clock) and publishes what it hands
the device with the moment it plays (``RenderedAudio``). ``parec`` records the sink's monitor,
counted sample by sample from its start. Answer after answer, ended normally or cut by a
barge-in, the reference must lie the same distance from the recorded sound: the canceller models
the room as one fixed delay, and a reference laid 20 ms off costs it the box's voice for most of
an answer. (Behind PulseAudio a stopped device reports stale room in its buffer: read as audio
still to play, it laid answers 20 to 100 ms late.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from daemon.alsa_device import PcmSpec, open_alsa_pcm
from daemon.bus import endpoint
from daemon.messages import Channel, Message, RenderedAudio, topic_of
from services.playback.clock import DeviceClock
from tests.helpers import NotifySocket, PulseMic, alsa_home, running, service_env, tolk_cmd, wait_until
from tests.services.playback_rig import FakeCapture, FakeSession, listening, speech_like, stop_playback
from tests.services.recording import Recording

RATE = 24000
#: How far from the recorded sound a reference may be found (the search), and how far the
#: answers may differ from each other once the device has reported its progress (seen: within
#: 1.6 ms, a busy loop on one of two cores; the stale buffer laid answers 20 to 100 ms off, a
#: stamp counted from the write's start 5-15 ms). An answer's first period is stamped from one
#: reading, which the plugin can leave a period stale (seen: 20 ms late, 1 answer in 10 on a
#: busy core, until its first report of progress), never more than a period and a half.
SEARCH_MS = 150
#: Periods of 20 ms: the device's buffer of 6, filled at once, and the write that waited for
#: its first report of progress.
SETTLED = 8
MAX_SPREAD_MS = 3.0
MAX_FIRST_SPREAD_MS = 30.0


def _lag_ms(recording: Recording, run: list[RenderedAudio]) -> float:
    """Where 0.3 s of the run lie in the recording, relative to their stamp."""
    ref = np.frombuffer(b"".join(m.pcm for m in run), dtype="<i2").astype(np.float64)[: RATE * 3 // 10]
    assert len(ref) == RATE * 3 // 10, "the run is too short to find"
    rec = np.frombuffer(bytes(recording.pcm), dtype="<i2").astype(np.float64)
    search = RATE * SEARCH_MS // 1000
    at = recording.position(run[0].t) - search
    window = rec[max(0, at) : at + 2 * search + len(ref)]
    assert at >= 0 and len(window) == 2 * search + len(ref), "the run was not recorded whole"
    scores = np.correlate(window, ref, mode="valid")
    return float((int(np.argmax(scores)) - search) * 1000 / RATE)


def test_every_answer_is_laid_where_it_played(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    home = alsa_home(rundir, mic.asoundrc("spk24", "spk"))
    config = rundir / "tolk.toml"
    # The reference goes out for the canceller only.
    config.write_text('[audio]\nplayback_device = "spk24"\necho = "aec"\n')
    env = service_env(rundir, HOME=str(home), NOTIFY_SOCKET=sd.path)
    session = FakeSession(rundir)
    ctx = zmq.Context()
    capture = FakeCapture(rundir)
    reference = ctx.socket(zmq.SUB)
    reference.setsockopt(zmq.SUBSCRIBE, topic_of(RenderedAudio))
    reference.connect(endpoint("playback", Channel.BULK, rundir))
    got: list[RenderedAudio] = []
    recording = Recording(mic, "spk.monitor", RATE)
    wait_until(lambda: recording.arrivals, 10, what="the recording to start")
    try:
        with running(tolk_cmd("service", "playback", "--config", str(config)), env, rundir / "playback.log") as proc:
            with listening(sd, rundir, session, capture) as tap:
                time.sleep(0.5)  # the reference's subscriber joins playback's bulk socket
                for n in range(8):
                    barge_in = n % 3 == 1
                    # As a service streams it: a piece every 80 ms, a little faster than it plays.
                    for k in range(8):
                        session.send(speech_like(0.1, 100 * n + k), f"resp-{n}")
                        time.sleep(0.08)
                    if barge_in:  # someone speaks: the rest of the answer is dropped
                        capture.someone_speaks()
                    session.send(b"", f"resp-{n}")
                    tap.until(lambda n=n: len(tap.states) >= 2 * (n + 1), what=f"answer {n} played")
                    time.sleep(0.3 + 0.1 * (n % 4))  # pauses of several lengths between answers
                while reference.poll(500):
                    msg = Message.from_frames(reference.recv_multipart())
                    assert isinstance(msg, RenderedAudio)
                    got.append(msg)
                tap.until(lambda: tap.heartbeats[-1].counters["barge_ins"] >= 3, 10, "three barge-ins counted")
            stop_playback(proc, rundir)
    finally:
        recording.stop()
        reference.close(0)
        capture.close()
        ctx.term()
        session.close()
    runs: list[list[RenderedAudio]] = [[]]
    for msg in got:
        if msg.pcm:
            runs[-1].append(msg)
        elif runs[-1]:
            runs.append([])
    runs = [run for run in runs if run]
    assert len(runs) == 8, [len(run) for run in runs]
    firsts = [_lag_ms(recording, run) for run in runs]
    settled = [_lag_ms(recording, run[SETTLED:]) for run in runs]
    print(f"\n{len(runs)} answers (3 cut by a barge-in); each found this far from its stamp (ms):"
          f"\n  its first period: {firsts}\n  from its {SETTLED}th on: {settled}")
    assert max(settled) - min(settled) <= MAX_SPREAD_MS, settled
    assert max(firsts) - min(firsts) <= MAX_FIRST_SPREAD_MS, firsts


def test_a_stopped_device_holds_nothing_whatever_its_avail_says(
    rundir: Path, mic: PulseMic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alsa-lib's pulse plugin, drained or dropped, keeps reporting the room its buffer had when
    it stopped: ``buffer - avail`` would be audio still to play, and the next answer's reference
    laid that much late. The clock asks the device whether it plays first."""
    home = alsa_home(rundir, mic.asoundrc("spk24", "spk"))
    monkeypatch.setenv("HOME", str(home))  # where alsa-lib finds the test's .asoundrc
    pcm = open_alsa_pcm(PcmSpec("spk24", capture=False, rate=RATE, period_ms=20, periods=6))
    try:
        buffer = int(pcm.info()["buffer_size"])
        clock = DeviceClock(pcm, RATE, buffer, threading.Event())
        period = speech_like(0.02, 7)
        stale = []
        for periods, stop in ((9, pcm.drain), (20, pcm.drop), (7, pcm.drop)):
            clock.begin()
            for _ in range(periods):
                clock.wrote(pcm.write(period))
            assert clock.held_s() > 0, "a playing device holds what was written"
            stop()
            stale.append(buffer - pcm.avail())
            assert clock.held_s() == 0.0, (clock.held_s(), buffer, pcm.avail())
    finally:
        pcm.close()
    print(f"\nbuffer {buffer} frames; what buffer - avail still said after stopping: {stale}")
    assert any(s > 0 for s in stale), "the plugin no longer shows the stale room: the test shows nothing"
