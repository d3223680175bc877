"""The capture process with real alsa-lib PCMs, a real NOTIFY_SOCKET and the real bus.

The microphone is a PulseAudio pipe-source reached through alsa-lib's pulse plugin, or a
``file`` PCM reading a FIFO or a plain file; the process under test is ``tolk service capture``.
The pipe-source hands on whatever its FIFO holds at once (measured: 2 s of audio read in 3 ms),
so the tests that need a real-time talker pace the FIFO themselves (``Feeder``).
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from daemon.bus import Bus
from daemon.messages import (
    AudioIn,
    AudioReplay,
    AudioResume,
    AudioSettled,
    Channel,
    Command,
    CommandAck,
    Heartbeat,
    PlaybackState,
)
from tests.helpers import NotifySocket, PulseMic, alsa_home, rmtree, wait_until
from tests.services.capture_rig import PERIOD_BYTES, Feeder, Tap, capture_ready, start_capture, stop_capture


def _speech_like(seconds: float) -> bytes:
    """Every sample non-zero and different from its neighbours, so order and loss both show."""
    n = int(16000 * seconds)
    ramp = (np.arange(n) * 37 % 20000 + 500) * np.where(np.arange(n) % 2, 1, -1)
    return ramp.astype("<i2").tobytes()


def test_capture_publishes_exactly_what_the_microphone_hears(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    with start_capture(rundir, home, sd) as proc:
        ready = capture_ready(sd)
        assert "capturing test_mic 16 kHz, 20 ms periods" in ready
        audio = Tap(rundir, Channel.BULK, AudioIn)
        beats = Tap(rundir, Channel.STATE, Heartbeat)
        feeder = Feeder(mic.fd)
        feeder.start()
        try:
            # The subscription is live once some audio reaches us (silence until then).
            audio.until(lambda m: isinstance(m, AudioIn), 10, "audio on the bus")
            speech = _speech_like(1.0)
            feeder.say(speech)
            chunks: list[AudioIn] = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and speech not in b"".join(c.pcm for c in chunks):
                msg = audio.recv(0.5)
                if isinstance(msg, AudioIn):
                    chunks.append(msg)
            for _ in range(3):  # a little of the silence after it
                msg = audio.recv(0.5)
                if isinstance(msg, AudioIn):
                    chunks.append(msg)
            heartbeat = beats.until(lambda m: isinstance(m, Heartbeat) and m.counters.get("chunks", 0) >= 50)
        finally:
            feeder.stop()
            audio.close()
            beats.close()
        stop_capture(proc, rundir)

    joined = b"".join(c.pcm for c in chunks)
    assert speech in joined, "the captured stream does not hold the fed audio contiguously"
    start = joined.index(speech)
    assert start % 2 == 0
    assert not any(joined[:start]) and not any(joined[start + len(speech) :]), "extra audio around the speech"
    assert all(len(c.pcm) == PERIOD_BYTES and c.rate == 16000 and not c.muted for c in chunks)
    seqs = [c.seq for c in chunks]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "chunks lost or reordered"
    stamps = [c.t for c in chunks]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    # t is the end of each period, on the microphone's real clock: 1 s of speech spans ~1 s.
    first, last = start // PERIOD_BYTES, (start + len(speech) - 1) // PERIOD_BYTES
    span_s = (stamps[last] - stamps[first]) / 1e9
    assert 0.85 < span_s < 1.5, span_s
    assert heartbeat.counters["bytes"] >= len(speech) and heartbeat.state == "running"


def test_ready_only_once_the_device_is_open(rundir: Path, sd: NotifySocket) -> None:
    """A FIFO-backed ``file`` PCM cannot open until the FIFO has a writer: no READY before that."""
    fifo = rundir / "mic.fifo"
    os.mkfifo(fifo)
    home = alsa_home(
        rundir,
        f'pcm.test_mic {{\n type file\n slave.pcm null\n file "/dev/null"\n infile "{fifo}"\n format raw\n}}\n',
    )
    fd = -1
    try:
        with start_capture(rundir, home, sd) as proc:
            time.sleep(1.5)
            assert not any("READY=1" in m for m in sd.messages), sd.messages
            assert proc.poll() is None
            fd = os.open(fifo, os.O_RDWR)
            capture_ready(sd, 10)
            audio = Tap(rundir, Channel.BULK, AudioIn)
            try:
                # One period per write, as the file plugin reads it; repeat until the tap is live.
                marker = _speech_like(0.02)
                deadline = time.monotonic() + 10
                while True:
                    assert time.monotonic() < deadline, "no audio after READY"
                    os.write(fd, marker)
                    msg = audio.recv(0.1)
                    if isinstance(msg, AudioIn) and msg.pcm == marker:
                        break
            finally:
                audio.close()
            stop_capture(proc, rundir)  # the reader is blocked on an empty FIFO: stop is still bounded
    finally:
        if fd >= 0:
            os.close(fd)


def test_missing_microphone_is_waited_for_and_reopened(rundir: Path, sd: NotifySocket) -> None:
    """Not there at start (server down), then plugged in, then gone, then back: no restart."""
    pulse_dir = rundir / "pulse"
    socket_path = pulse_dir / "rt" / "native"
    home = alsa_home(rundir, f'pcm.test_mic {{\n type pulse\n server "unix:{socket_path}"\n device "mic"\n}}\n')
    live: list[tuple[PulseMic, Feeder]] = []

    def plug_in() -> None:
        mic = PulseMic(pulse_dir)
        feeder = Feeder(mic.fd, _speech_like(0.02))
        feeder.start()
        live.append((mic, feeder))

    def unplug() -> None:
        mic, feeder = live.pop()
        feeder.stop()
        mic.close()
        rmtree(pulse_dir / "rt")

    try:
        with start_capture(rundir, home, sd, WATCHDOG_USEC="2000000") as proc:
            beats = Tap(rundir, Channel.STATE, Heartbeat)
            try:
                ready = capture_ready(sd)
                assert "waiting for device 'test_mic': Connection refused" in ready
                beat = beats.until(lambda m: isinstance(m, Heartbeat) and m.counters["open_failures"] >= 2, 10)
                assert beat.state == "degraded" and proc.poll() is None
                # Waiting for the device is alive and well: systemd must not restart the unit for it.
                wait_until(lambda: any("WATCHDOG=1" in m for m in sd.messages), 3, what="WATCHDOG=1")

                plug_in()
                beats.until(lambda m: isinstance(m, Heartbeat) and m.status.startswith("capturing test_mic"), 10)

                # Gone: the feed stops first (a PulseAudio server killed while a period is in
                # flight can deadlock libpulse inside snd_pcm_close; a real USB microphone
                # simply stops), then the server goes away.
                live[-1][1].stop()
                beats.until(lambda m: isinstance(m, Heartbeat) and m.status.startswith("no audio for"), 5)
                unplug()
                beats.until(lambda m: isinstance(m, Heartbeat) and "waiting for device 'test_mic'" in m.status)
                assert proc.poll() is None

                plug_in()
                beat = beats.until(
                    lambda m: isinstance(m, Heartbeat) and m.status.startswith("capturing") and m.counters["reopens"],
                    15,
                )
                assert beat.state == "running"
                # The gap stays visible after it is over (the heartbeat is what /api/status shows).
                assert beat.counters["gaps"] >= 1 and beat.counters["last_gap_s"] >= 1.0, beat.counters
                assert "gap of" in beat.status, beat.status
            finally:
                beats.close()
            stop_capture(proc, rundir)
    finally:
        while live:
            unplug()
    log = (rundir / "capture.log").read_text()
    assert "cannot open capture device 'test_mic': Connection refused" in log
    assert "capture device 'test_mic' failed:" in log
    # Retried every few seconds, but each distinct failure is logged once (ours and alsa-lib's).
    assert log.count("cannot open capture device") <= 2, log
    assert log.count("Unable to connect") <= 2, log


def test_the_operators_mute_is_answered_and_outlives_a_restart(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    """A mute is answered by capture (its id in a CommandAck), and a capture killed while muted
    comes back muted: nothing the room says is sent until the operator unmutes."""
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    control = Bus("control", rundir)  # the control process's stand-in
    feeder = Feeder(mic.fd, b"\xe8\x03" * (PERIOD_BYTES // 2))  # a steady non-zero signal
    feeder.start()

    def answered(name: str, ident: str, acks: Tap) -> CommandAck:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # repeated: a SUB that just connected misses the first
            control.publish(Command(name=name, id=ident))
            msg = acks.recv(0.2)
            if isinstance(msg, CommandAck) and msg.id == ident:
                return msg
        raise AssertionError(f"capture never answered {name!r}")

    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            acks = Tap(rundir, Channel.STATE, CommandAck)
            try:
                ack = answered("mute", "m1", acks)
            finally:
                acks.close()
            assert ack.ok and ack.name == "mute" and ack.detail == "microphone muted", ack
            proc.send_signal(signal.SIGKILL)  # nothing it held in memory survives
            proc.wait(5)
        sd.messages.clear()
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            audio = Tap(rundir, Channel.BULK, AudioIn)
            acks = Tap(rundir, Channel.STATE, CommandAck)
            try:
                first = [audio.until(lambda m: isinstance(m, AudioIn), 10, "audio") for _ in range(50)]
                assert all(m.muted and not any(m.pcm) for m in first), "a restarted capture forgot the mute"
                assert "microphone muted by the operator" in (rundir / "capture.log").read_text()
                assert answered("unmute", "u1", acks).detail == "microphone unmuted"
                audio.until(lambda m: isinstance(m, AudioIn) and not m.muted and any(m.pcm), 5, "live audio")
            finally:
                audio.close()
                acks.close()
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
        control.close()


def test_half_duplex_and_operator_mute(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    playback = Bus("playback", rundir)  # stand-ins for the playback and control processes
    control = Bus("control", rundir)
    feeder = Feeder(mic.fd, b"\xe8\x03" * (PERIOD_BYTES // 2))  # a steady non-zero signal
    feeder.start()
    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            audio = Tap(rundir, Channel.BULK, AudioIn)
            beats = Tap(rundir, Channel.STATE, Heartbeat)
            try:
                audio.until(lambda m: not m.muted and any(m.pcm), 10, "live audio")
                seen: list[AudioIn] = []

                def until(
                    pred: Callable[[AudioIn], bool], timeout: float, nudge: Callable[[], None] | None = None
                ) -> AudioIn:
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        if nudge is not None:
                            nudge()
                        msg = audio.recv(0.1)
                        if isinstance(msg, AudioIn):
                            seen.append(msg)
                            if pred(msg):
                                return msg
                    raise AssertionError("timed out")

                # The speaker starts: the microphone sends silence, same size, flagged muted.
                muted = until(lambda m: m.muted, 10, lambda: playback.publish(PlaybackState(state="started")))
                assert len(muted.pcm) == PERIOD_BYTES and not any(muted.pcm)
                time.sleep(0.2)
                drained_at = time.monotonic_ns()
                playback.publish(PlaybackState(state="drained", t=drained_at))
                back = until(lambda m: not m.muted, 3)
                assert any(back.pcm)
                # Silence until drained + the 400 ms tail, and not much longer.
                assert drained_at + 400_000_000 <= back.t - 20_000_000
                assert back.t < drained_at + 900_000_000
                muted_run = [m for m in seen if m.seq >= muted.seq and m.seq < back.seq]
                assert all(m.muted and not any(m.pcm) for m in muted_run)
                seqs = [m.seq for m in seen]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "muting must keep the stream's timing"

                # The operator mutes from the admin page, then unmutes.
                until(lambda m: m.muted, 10, lambda: control.publish(Command(name="mute")))
                beats.until(lambda m: isinstance(m, Heartbeat) and "muted (operator)" in m.status, 5)
                until(lambda m: not m.muted and any(m.pcm), 10, lambda: control.publish(Command(name="unmute")))
            finally:
                audio.close()
                beats.close()
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
        playback.close()
        control.close()


def test_a_mute_edge_is_in_the_next_heartbeat(rundir: Path, sd: NotifySocket, mic: PulseMic) -> None:
    """Capture sends its heartbeat as a speaker mute begins and as it ends, not at its next 2 s
    tick: the status page shows the mute when it happens, and the counters (chunks, muted_chunks)
    say to the period when the microphone was muted (the soak's accountant reads them)."""
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    playback = Bus("playback", rundir)
    feeder = Feeder(mic.fd, b"\xe8\x03" * (PERIOD_BYTES // 2))
    feeder.start()
    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            audio = Tap(rundir, Channel.BULK, AudioIn)
            beats = Tap(rundir, Channel.STATE, Heartbeat)
            edges: list[tuple[bool, int]] = []  # (muted from then on, the first such period's end)
            try:
                audio.until(lambda m: not m.muted and any(m.pcm), 10, "live audio")
                for n in range(3):
                    deadline = time.monotonic() + 10
                    while not (isinstance(msg := audio.recv(0.1), AudioIn) and msg.muted):
                        assert time.monotonic() < deadline, "the speaker's start never muted the microphone"
                        playback.publish(PlaybackState(state="started", response_id=f"r{n}"))
                    edges.append((True, msg.t))
                    time.sleep(0.3)
                    playback.publish(PlaybackState(state="drained", response_id=f"r{n}", t=time.monotonic_ns()))
                    back = audio.until(lambda m: not m.muted, 3, "the microphone back")
                    edges.append((False, back.t))
                    time.sleep(0.5)
                time.sleep(0.5)
                heartbeats: list[Heartbeat] = []
                while isinstance(msg := beats.recv(0.1), Heartbeat):
                    heartbeats.append(msg)
            finally:
                audio.close()
                beats.close()
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
        playback.close()
    period_ns = 20_000_000
    for muted, t in edges:
        beat = next(b for b in heartbeats if b.t >= t - period_ns)
        late_ms = (beat.t - t) / 1e6
        # Ticking every 2 s, the first beat after an edge comes in 0.5 s one time in four.
        assert late_ms < 500, f"the heartbeat after the mute's {'start' if muted else 'end'} came {late_ms:.0f} ms late"
        assert ("muted (speaker)" in beat.status) == muted, beat.status
    counts = [(b.counters["chunks"], b.counters["muted_chunks"]) for b in heartbeats]
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise(counts)), "counters never go back"


def test_a_restarted_playback_ends_the_mute_its_predecessor_began(
    rundir: Path, sd: NotifySocket, mic: PulseMic
) -> None:
    """Playback killed mid-sentence: the new one says "running" every second, and never "drained"."""
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    feeder = Feeder(mic.fd, b"\xe8\x03" * (PERIOD_BYTES // 2))
    feeder.start()
    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            audio = Tap(rundir, Channel.BULK, AudioIn)
            old = Bus("playback", rundir)  # the playback process that is killed
            try:
                audio.until(lambda m: not m.muted and any(m.pcm), 10, "live audio")
                deadline = time.monotonic() + 10
                while not (isinstance(msg := audio.recv(0.1), AudioIn) and msg.muted):
                    assert time.monotonic() < deadline, "the speaker's start never muted the microphone"
                    old.publish(PlaybackState(state="started", response_id="r1", pid=1111))
                # Still its own heartbeats: the mute holds (the speaker talks).
                for _ in range(3):
                    old.publish(Heartbeat(service="playback", pid=1111, state="running"))
                    time.sleep(0.3)
                audio.until(lambda m: m.muted, 2, "muted while the first playback talks")
                old.close()  # kill -9: no "drained", no "stopped"
                new = Bus("playback", rundir)
                try:
                    restarted = time.monotonic()
                    deadline = restarted + 4  # capture's own give-up is 5 s of silence from playback
                    while True:
                        new.publish(Heartbeat(service="playback", pid=2222, state="running"))
                        msg = audio.recv(0.2)
                        if isinstance(msg, AudioIn) and not msg.muted and any(msg.pcm):
                            break
                        assert time.monotonic() < deadline, "the microphone stayed muted after playback restarted"
                    assert time.monotonic() - restarted < 2.5
                finally:
                    new.close()
            finally:
                audio.close()
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
    assert "playback restarted (pid 2222, was 1111): speaker mute released" in (rundir / "capture.log").read_text()


def test_a_session_that_restarts_gets_back_what_no_session_settled(
    rundir: Path, sd: NotifySocket, mic: PulseMic
) -> None:
    """The session is killed: a new one asks, and capture replays its unsettled periods, in order."""
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    feeder = Feeder(mic.fd, b"\xe8\x03" * (PERIOD_BYTES // 2))
    feeder.start()
    try:
        with start_capture(rundir, home, sd) as proc:
            capture_ready(sd)
            audio = Tap(rundir, Channel.BULK, AudioIn, AudioReplay)
            try:
                live = [audio.until(lambda m: isinstance(m, AudioIn), 10, "live audio") for _ in range(60)]
                session = Bus("session", rundir)  # the session that starts after a crash
                try:
                    settled = live[29].seq  # the crashed session had settled the first 30 periods
                    deadline = time.monotonic() + 5
                    replay: list[AudioReplay] = []
                    while not (replay and replay[0].first and replay[-1].last):
                        assert time.monotonic() < deadline, f"no whole replay from capture: {replay[:1]}"
                        session.publish(AudioSettled(through_seq=settled))
                        session.publish(AudioResume())
                        while isinstance(msg := audio.recv(0.1), AudioReplay):
                            replay = [msg] if msg.first else [*replay, msg]
                            if msg.last:
                                break
                finally:
                    session.close()
            finally:
                audio.close()
            stop_capture(proc, rundir)
    finally:
        feeder.stop()
    # Few messages (a second of audio each, under the bulk socket's high-water mark), one replay.
    assert len({m.replay for m in replay}) == 1 and all(m.periods <= 50 for m in replay)
    periods = [
        (m.of_seq + n, m.pcm[n * PERIOD_BYTES : (n + 1) * PERIOD_BYTES]) for m in replay for n in range(m.periods)
    ]
    seqs = [seq for seq, _ in periods]
    assert seqs[0] == settled + 1 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:5]
    by_seq = {m.seq: m for m in live}
    assert all(pcm == by_seq[seq].pcm for seq, pcm in periods if seq in by_seq)
    assert len(periods) >= 30 and len(replay) < len(periods)


def test_a_device_without_a_clock_is_held_to_real_time(rundir: Path, sd: NotifySocket) -> None:
    """A plain-file PCM hands out its whole content at once; capture must still send 50 periods
    a second (the service bills every second of audio it is sent)."""
    recording = np.random.default_rng(7).integers(-20000, 20000, 16000 * 10).astype("<i2").tobytes()
    infile = rundir / "mic.raw"
    infile.write_bytes(recording)
    home = alsa_home(
        rundir,
        f'pcm.test_mic {{\n type file\n slave.pcm null\n file "/dev/null"\n infile "{infile}"\n format raw\n}}\n',
    )
    with start_capture(rundir, home, sd) as proc:
        capture_ready(sd)
        audio = Tap(rundir, Channel.BULK, AudioIn)
        try:
            first = audio.until(lambda m: isinstance(m, AudioIn), 10, "audio")
            chunks = [first]
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                msg = audio.recv(left)
                if isinstance(msg, AudioIn):
                    chunks.append(msg)
        finally:
            audio.close()
        stop_capture(proc, rundir)
    assert 35 <= len(chunks) <= 75, f"{len(chunks)} periods of 20 ms in one second"
    offset = recording.index(first.pcm)
    assert b"".join(c.pcm for c in chunks) == recording[offset : offset + PERIOD_BYTES * len(chunks)]
