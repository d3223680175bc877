"""The playback process with a real alsa-lib ``file`` PCM, a real NOTIFY_SOCKET and the real bus.

The test stands in for the session: it binds the session's bulk socket as an XPUB, so it
knows the moment playback has subscribed (no slow-joiner guesswork), and sends ``AudioOut``
frames exactly as the session's publisher does. Everything played lands in a raw file.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
import zmq

from daemon.bus import endpoint
from daemon.messages import (
    Channel,
    Message,
    RenderedAudio,
    topic_of,
)
from tests.helpers import NotifySocket, alsa_home, running, service_env, tolk_cmd
from tests.services.playback_rig import (
    FakeCapture,
    FakeSession,
    StateTap,
    listening,
    playback_ready,
    speech_like,
    stop_playback,
)


def _playback(
    rundir: Path, notify: NotifySocket, device: str, start_ms: int = 120, echo: str = "half-duplex"
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    speaker = rundir / "speaker.raw"
    home = alsa_home(rundir, f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n}}\n')
    config = rundir / "tolk.toml"
    config.write_text(f'[audio]\nplayback_device = "{device}"\nplayback_start_ms = {start_ms}\necho = "{echo}"\n')
    env = service_env(rundir, HOME=str(home), NOTIFY_SOCKET=notify.path)
    return running(tolk_cmd("service", "playback", "--config", str(config)), env, rundir / "playback.log")


@contextlib.contextmanager
def _answering(rundir: Path, sd: NotifySocket) -> Iterator[tuple[FakeSession, FakeCapture, StateTap]]:
    """Playback on the test speaker, with a fake session and capture it listens to, its states tapped."""
    session = FakeSession(rundir)
    capture = FakeCapture(rundir)
    try:
        with _playback(rundir, sd, "test_spk") as proc:
            with listening(sd, rundir, session, capture) as tap:
                yield session, capture, tap
            stop_playback(proc, rundir)
    finally:
        capture.close()
        session.close()


def test_plays_exactly_what_the_session_sent(rundir: Path, sd: NotifySocket) -> None:
    session = FakeSession(rundir)
    speaker = rundir / "speaker.raw"
    # Half duplex: no canceller wants what the speaker plays, so none of it goes on the bus.
    ctx = zmq.Context()
    reference = ctx.socket(zmq.SUB)
    reference.setsockopt(zmq.SUBSCRIBE, topic_of(RenderedAudio))
    reference.connect(endpoint("playback", Channel.BULK, rundir))
    try:
        with _playback(rundir, sd, "test_spk", start_ms=400) as proc:
            assert "idle, test_spk open" in playback_ready(sd)
            tap = StateTap(rundir)
            try:
                # A heartbeat first: the tap has joined, so "started" cannot be missed (slow joiner).
                tap.until(lambda: tap.heartbeats, 5, "playback's heartbeat")
                session.wait_for_subscriber()

                # A response of five 100 ms deltas, sent in a burst as the service does, then
                # the session's end-of-response marker.
                first = [speech_like(0.1, seed) for seed in range(5)]
                sent_at = [session.send(pcm, "resp-1") for pcm in first]
                session.send(b"", "resp-1")
                tap.until(lambda: len(tap.states) >= 2, what="started and drained")
                started, drained = tap.states[:2]
                assert (started.state, drained.state) == ("started", "drained")
                assert started.response_id == drained.response_id == "resp-1"
                assert sent_at[3] <= started.t <= drained.t  # started once 400 ms were queued
                assert drained.frames == 5 * 2400
                assert speaker.read_bytes() == b"".join(first), (len(speaker.read_bytes()), len(b"".join(first)))
                # The device has no clock: playback keeps one, so "drained" comes when a real
                # speaker would have finished the 0.5 s, not when the last write returned.
                assert 0.45 <= (drained.t - started.t) / 1e9 < 0.8, (drained.t - started.t) / 1e9

                # A short reply (40 ms, under the 400 ms start buffer) still plays once the wait
                # is up. Its end marker never comes: silence bridges the wait for more, then it ends.
                short = speech_like(0.04, 10)
                sent = session.send(short, "resp-2")
                tap.until(lambda: len(tap.states) >= 4, what="the short reply")
                assert [s.state for s in tap.states[2:4]] == ["started", "drained"]
                waited_s = (tap.states[2].t - sent) / 1e9
                assert 0.35 <= waited_s < 1.5, waited_s
                played = speaker.read_bytes()
                fill = played[len(b"".join(first) + short) :]
                assert played.startswith(b"".join(first) + short)
                assert not any(fill) and 0 < len(fill) <= 0.55 * 48000, len(fill)
                first.append(short + fill)

                # An empty AudioOut ends the response: what is buffered plays at once.
                tail = speech_like(0.04, 11)
                sent = session.send(tail, "resp-3")
                session.send(b"", "resp-3")
                tap.until(lambda: len(tap.states) >= 6, what="the ended reply")
                assert (tap.states[4].t - sent) / 1e9 < 0.3
                assert speaker.read_bytes() == b"".join(first) + tail

                tap.until(lambda: any(h.counters.get("chunks_played") == 7 for h in tap.heartbeats), what="counters")
                beat = next(h for h in tap.heartbeats if h.counters.get("chunks_played") == 7)
                assert beat.counters["bytes_played"] == len(b"".join(first[:5]) + short + tail)
                assert beat.counters["gap_fills"] == 1 and beat.counters["underruns"] == 0
                assert 0 < beat.counters["latency_ms_p50"] < 1000
                assert beat.state == "running"
                assert reference.poll(0) == 0, "the echo reference went out in half duplex"
            finally:
                tap.close()
            stop_playback(proc, rundir)
    finally:
        session.close()
        reference.close(0)
        ctx.term()


def test_missing_speaker_is_waited_for_and_a_config_change_applies(rundir: Path, sd: NotifySocket) -> None:
    session = FakeSession(rundir)
    try:
        with _playback(rundir, sd, "nosuch") as proc:
            assert "waiting for device 'nosuch': No such file or directory" in playback_ready(sd)
            tap = StateTap(rundir)
            try:
                # A heartbeat first: the tap has joined, so "started" cannot be missed (slow joiner).
                tap.until(lambda: tap.heartbeats, 5, "playback's heartbeat")
                session.wait_for_subscriber()
                session.send(speech_like(0.1, 1), "resp-1")
                tap.until(lambda: any(h.counters.get("dropped_chunks") == 1 for h in tap.heartbeats), what="a drop")
                beat = tap.heartbeats[-1]
                assert beat.state == "degraded" and "waiting for device 'nosuch'" in beat.status
                assert beat.counters["open_failures"] >= 1
                assert proc.poll() is None and not tap.states

                # Staff fix the name; SIGHUP (what ExecReload sends) applies it without a restart.
                (rundir / "tolk.toml").write_text('[audio]\nplayback_device = "test_spk"\n')
                proc.send_signal(signal.SIGHUP)
                tap.until(lambda: any(h.status.startswith("idle, test_spk open") for h in tap.heartbeats), 10)
                session.send(speech_like(0.2, 2), "resp-2")
                session.send(b"", "resp-2")
                tap.until(lambda: [s.state for s in tap.states] == ["started", "drained"], what="playback")
            finally:
                tap.close()
            stop_playback(proc, rundir)
    finally:
        session.close()
    assert (rundir / "speaker.raw").read_bytes() == speech_like(0.2, 2)
    log = (rundir / "playback.log").read_text()
    assert log.count("cannot open playback device 'nosuch'") == 1


def _bursty_arrivals(seed: int = 1, pieces: int = 30) -> list[float]:
    """When each 100 ms delta arrives: the service produces 1.25x faster than real time, and the
    network delivers each up to 60 ms late, in order, so deltas bunch into irregular bursts."""
    rng = np.random.default_rng(seed)
    arrivals: list[float] = []
    for i in range(pieces):
        arrivals.append(max(arrivals[-1] if arrivals else 0.0, 0.08 * i + rng.uniform(0, 0.06)))
    return arrivals


@pytest.mark.parametrize(("start_ms", "expect_gaps"), [(120, False), (0, True)])
def test_bursty_arrival_plays_without_gaps_once_started(
    rundir: Path, sd: NotifySocket, start_ms: int, expect_gaps: bool
) -> None:
    """With the 120 ms start buffer the bursts are absorbed: no silence is ever inserted and
    playback starts within the threshold. Without it (0 ms) the same arrivals leave the speaker
    short about 46 ms at the worst point — the check that the measure can fail."""
    arrivals = _bursty_arrivals()
    pieces = [speech_like(0.1, 100 + i) for i in range(len(arrivals))]
    session = FakeSession(rundir)
    speaker = rundir / "speaker.raw"
    try:
        with _playback(rundir, sd, "test_spk", start_ms=start_ms) as proc:
            playback_ready(sd)
            tap = StateTap(rundir)
            try:
                # A heartbeat first: the tap has joined, so "started" cannot be missed (slow joiner).
                tap.until(lambda: tap.heartbeats, 5, "playback's heartbeat")
                session.wait_for_subscriber()
                t0 = time.monotonic()
                for at, pcm in zip(arrivals, pieces, strict=True):
                    time.sleep(max(0.0, t0 + at - time.monotonic()))
                    session.send(pcm, "resp-burst")
                session.send(b"", "resp-burst")
                tap.until(lambda: [s.state for s in tap.states] == ["started", "drained"], 10, "the response")
                tap.pump(1.2)  # a heartbeat after the drain carries the final counters
                beat = tap.heartbeats[-1]
            finally:
                tap.close()
            stop_playback(proc, rundir)
    finally:
        session.close()
    played = speaker.read_bytes()
    if expect_gaps:
        assert beat.counters["gap_fills"] >= 1, beat.counters
        assert len(played) > len(b"".join(pieces))  # silence went in between
    else:
        assert beat.counters["gap_fills"] == 0 and beat.counters["underruns"] == 0, beat.counters
        assert played == b"".join(pieces)
        assert beat.counters["start_wait_ms"] <= start_ms + 40, beat.counters


def test_the_echo_reference_is_what_played_stamped_by_count(rundir: Path, sd: NotifySocket) -> None:
    """What playback hands the device goes out as the canceller's reference (``RenderedAudio``),
    sample for sample, its stamps counted along the run (each exactly where the one before it
    ends, whatever the scheduler did), and an empty one closes each run."""
    session = FakeSession(rundir)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, topic_of(RenderedAudio))
    sub.connect(endpoint("playback", Channel.BULK, rundir))
    answers = [[speech_like(0.1, 200 + 10 * n + i) for i in range(4)] for n in range(2)]
    got: list[RenderedAudio] = []
    try:
        with _playback(rundir, sd, "test_spk", echo="aec") as proc:
            playback_ready(sd)
            tap = StateTap(rundir)
            try:
                # A heartbeat first: the tap has joined, so "started" cannot be missed (slow joiner).
                tap.until(lambda: tap.heartbeats, 5, "playback's heartbeat")
                session.wait_for_subscriber()
                time.sleep(0.5)  # the reference's subscriber joins playback's bulk socket
                for n, answer in enumerate(answers):
                    for pcm in answer:
                        session.send(pcm, f"resp-{n}")
                    session.send(b"", f"resp-{n}")
                    tap.until(lambda n=n: len(tap.states) >= 2 * (n + 1), what=f"answer {n} played")
                while sub.poll(500):
                    msg = Message.from_frames(sub.recv_multipart())
                    assert isinstance(msg, RenderedAudio)
                    got.append(msg)
            finally:
                tap.close()
            stop_playback(proc, rundir)
    finally:
        sub.close(0)
        ctx.term()
        session.close()
    ends = [i for i, msg in enumerate(got) if not msg.pcm]
    assert len(ends) == 2 and ends[-1] == len(got) - 1, [len(m.pcm) for m in got]
    runs = [got[: ends[0] + 1], got[ends[0] + 1 :]]
    for answer, run in zip(answers, runs, strict=True):
        assert b"".join(m.pcm for m in run) == b"".join(answer)
        for before, after in itertools.pairwise(run):
            assert after.t - before.t == pytest.approx(len(before.pcm) / 2 / 24000 * 1e9, abs=1), (before, after)
    assert runs[1][0].t >= runs[0][-1].t  # the second answer starts a run of its own, after the first


def test_speech_heard_before_the_answer_began_does_not_stop_it(rundir: Path, sd: NotifySocket) -> None:
    """On a busy box capture's "someone speaks" can reach playback after an answer started, for
    speech capture heard before it knew of the answer: the question's tail, or the answer's own
    first echo before the half-duplex mute. Neither is someone breaking in: the answer plays on.
    Speech heard over the answer still stops it."""
    with _answering(rundir, sd) as (session, capture, tap):
        for seed in range(30):  # a 3 s answer, faster than it plays
            session.send(speech_like(0.1, seed), "resp-1")
        tap.until(lambda: [s.state for s in tap.states] == ["started"], what="the answer playing")
        began = tap.states[0].t
        capture.someone_speaks(over_answer=False)  # heard before capture knew of the answer
        capture.someone_speaks(t=began - 50_000_000)  # heard 50 ms before the answer began
        tap.pump(0.5)
        assert [s.state for s in tap.states] == ["started"], tap.states
        capture.someone_speaks()
        tap.until(lambda: [s.state for s in tap.states] == ["started", "interrupted", "drained"],
                  what="the barge-in")  # fmt: skip
        tap.until(lambda: tap.heartbeats[-1].counters["barge_ins"] == 1, what="the count")


def test_a_barge_in_drops_the_rest_of_the_answer_not_only_what_was_queued(rundir: Path, sd: NotifySocket) -> None:
    """The service keeps streaming the interrupted answer: none of it plays, the next answer does."""
    speaker = rundir / "speaker.raw"
    with _answering(rundir, sd) as (session, capture, tap):
        for seed in range(10):  # a 1 s answer, faster than it plays
            session.send(speech_like(0.1, seed), "resp-1")
        tap.until(lambda: [s.state for s in tap.states] == ["started"], what="the answer playing")
        capture.someone_speaks()
        tap.until(lambda: [s.state for s in tap.states] == ["started", "interrupted", "drained"],
                  what="the barge-in")  # fmt: skip
        assert tap.states[1].response_id == "resp-1"
        before = len(speaker.read_bytes())
        # The rest of the same answer, still arriving from the service.
        late = [speech_like(0.1, 100 + seed) for seed in range(10)]
        for pcm in late:
            session.send(pcm, "resp-1")
            time.sleep(0.02)
        session.send(b"", "resp-1")
        tap.pump(1.0)
        assert [s.state for s in tap.states] == ["started", "interrupted", "drained"], tap.states
        assert len(speaker.read_bytes()) == before
        # The next answer plays whole.
        answer = speech_like(0.3, 200)
        session.send(answer, "resp-2")
        session.send(b"", "resp-2")
        tap.until(lambda: len(tap.states) >= 5, what="the next answer")
        played = [(s.state, s.response_id) for s in tap.states[3:5]]
        assert played == [("started", "resp-2"), ("drained", "resp-2")]
        assert speaker.read_bytes()[before:] == answer
        tap.until(lambda: tap.heartbeats[-1].counters["barge_in_dropped_chunks"] == 11, what="the count")
        assert tap.heartbeats[-1].counters["barge_ins"] == 1
