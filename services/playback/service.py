"""The playback process: one player for the process's lifetime, fed from the session's audio.

The event loop receives ``AudioOut`` and queues it; the writer thread owns the PCM (see
``writer``). ``PlaybackState`` ``started``/``drained`` say when the speaker really talks, which
capture uses to mute the microphone. The device policy (degraded, not refused; reopened with
backoff; audio without a device dropped and counted) is capture's: docs/audio.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import ClassVar

from daemon.alsa_device import BYTES_PER_FRAME, DeviceKeeper, Pcm, PcmFactory, PcmSpec, open_alsa_pcm
from daemon.audio_format import Converter, DeviceFormat
from daemon.config import Config
from daemon.device_loop import DeviceLoop, OnEnd
from daemon.messages import AudioOut, Command, PlaybackState, RenderedAudio, SpeechActivity
from daemon.service import Service, ServiceContext
from services.playback.queue import Chunk, ChunkQueue
from services.playback.writer import COUNTERS, Writer

RATE = 24000
#: What the service may name in ``session.updated``; anything else is refused, not guessed at.
MIN_RATE, MAX_RATE = 8000, 48000
PERIOD_MS = 20
#: 6 x 20 ms in the device: small enough to stop promptly, enough to ride out a busy moment.
PERIODS = 6
#: Never more audio than this waits in memory (the oldest goes first).
MAX_QUEUED_S = 30
WRITER_STOP_S = 1.0
#: Log the first few bad chunks, then every hundredth.
_LOG_FIRST = 5
#: The speaker test (``Command(name="speaker-test")``): a short, gentle tone.
TEST_TONE_HZ = 660
TEST_TONE_S = 0.6
TEST_TONE_LEVEL = 0.3  # of full scale
TEST_RESPONSE_ID = "speaker-test"


class PlaybackService(Service):
    name = "playback"
    #: The seam to the audio hardware (a test or another backend may swap it).
    pcm_factory: ClassVar[PcmFactory] = staticmethod(open_alsa_pcm)

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        for key in (
            *COUNTERS,
            "chunks_received",
            "dropped_chunks",
            "rejected_chunks",
            "reopens",
            "open_failures",
            "barge_ins",
            "barge_in_dropped_chunks",
        ):
            self.counters[key] = 0
        self.queue = ChunkQueue(MAX_QUEUED_S * RATE * BYTES_PER_FRAME)
        self.keeper = DeviceKeeper(type(self).pcm_factory, self.log)
        self.device = DeviceLoop(self, self.keeper, self.spec, self.counters, self.log, self._opened)
        self._speaking = False
        self._playing_response = ""  # the response the speaker last started
        self._started_ns = 0  # when its first sample was handed to the device
        #: The response a barge-in stopped: the rest of it, still arriving, is dropped.
        self._interrupted = ""
        self._inbound: Converter | None = None  # speech at another rate than the speaker's

    def spec(self) -> PcmSpec:
        return PcmSpec(
            self.config.audio.playback_device, capture=False, rate=RATE, period_ms=PERIOD_MS, periods=PERIODS
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.device.try_open():
            self.log.warning("starting without a speaker; it is retried in the background")

    async def run(self) -> None:
        self.spawn(self._receive(), "receive")
        self.spawn(self._follow_commands(), "commands")
        self.spawn(self._follow_speech(), "barge-in")

        def ended(error: str | None) -> None:
            if error is not None:
                # Seconds-old speech would play out of context once the device is back.
                self.counters["dropped_chunks"] += self.queue.clear()

        await self.device.run(self._writer_on, ended)

    async def stop(self) -> None:
        await self.device.stop(WRITER_STOP_S, "playback write still blocked in the device")
        await asyncio.sleep(0)  # let the writer's last "drained" reach the bus
        if self._speaking:
            self._publish_state("drained", "", 0, time.monotonic_ns())

    async def apply_config(self, new: Config, changed: set[str]) -> None:
        before = self.spec()
        self.config = new
        if self.spec() == before:
            return  # playback_start_ms, volume and barge_in are read where they are used
        self.log.info("speaker now %r: reopening", new.audio.playback_device)
        self.device.reopen()

    def status(self) -> str:
        device = self.config.audio.playback_device
        if (waiting := self.device.waiting(device, self.state)) is not None:
            return waiting
        p50 = self.counters["latency_ms_p50"]
        if self._speaking:
            return f"playing on {device} (24 kHz, {len(self.queue)} chunks queued, latency p50 {p50:g} ms)"
        return f"idle, {device} open (24 kHz, {self.config.audio.playback_start_ms} ms start buffer)"

    def is_fresh(self) -> bool:
        # Waiting for audio is idle by design, and waiting for a missing speaker is all this
        # process can do about it (watchdog restarts would only hit the unit's start limit);
        # only a device call that does not return is stale.
        writer = self._writer
        if writer is not None and writer.is_alive() and writer.in_device_since_ns == 0:
            return True
        return self.device.retrying or super().is_fresh()

    # --- the device --------------------------------------------------------------------------

    @property
    def _writer(self) -> Writer | None:
        worker = self.device.worker
        return worker if isinstance(worker, Writer) else None

    def _opened(self) -> None:
        self.log.info("playing to %r: %d Hz mono, %d ms periods", self.config.audio.playback_device, RATE, PERIOD_MS)

    def _writer_on(self, pcm: Pcm, spec: PcmSpec, on_end: OnEnd) -> Writer:
        """The thread that plays into ``pcm`` (DeviceLoop runs it)."""
        loop = asyncio.get_running_loop()

        def on_state(state: str, response_id: str, frames: int, t: int) -> None:  # on the writer thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._publish_state, state, response_id, frames, t)

        return Writer(
            pcm,
            spec,
            self.queue,
            lambda: self.config.audio.playback_start_ms,
            lambda: self.config.audio.volume,
            self.counters,
            on_state,
            self.mark_fresh,
            on_end,
            self._publish_rendered,
        )

    def _publish_rendered(self, pcm: bytes, plays_ns: int, held_s: float) -> None:  # on the writer thread
        """The echo canceller's reference (capture with ``echo = "aec"``), sent only in that mode.

        The writer thread is the only user of this process's bulk socket.
        """
        if self.config.audio.echo != "aec":
            return
        self.bus.bulk.publish(RenderedAudio(pcm=pcm, t=plays_ns, rate=RATE, delay_ms=round(held_s * 1000, 2)))

    def _publish_state(self, state: str, response_id: str, frames: int, t: int) -> None:
        if state == "drained" and not self._speaking:
            return  # said already (stop() and the writer may both say it)
        self._speaking = state == "started"
        if self._speaking:
            self._playing_response, self._started_ns = response_id, t
        underruns = int(self.counters["underruns"])
        self.bus.publish(
            PlaybackState(
                state=state, response_id=response_id, frames=frames, underruns=underruns, t=t, pid=os.getpid()
            )
        )
        self.log.debug("speaker %s (%s, %d frames)", state, response_id or "-", frames)

    # --- the bus -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        sub = self.bus.subscribe(["session"], AudioOut)
        async for msg in sub:
            assert isinstance(msg, AudioOut)
            self.counters["chunks_received"] += 1
            chunk = self._chunk(msg)
            if chunk is None:
                continue
            if self._interrupted:
                if chunk.response_id == self._interrupted:
                    self.counters["barge_in_dropped_chunks"] += 1
                    continue
                self._interrupted = ""  # the next answer: the barge-in's reason is over
            if self._writer is None:
                self.counters["dropped_chunks"] += 1  # no device: nothing could play it in time
                continue
            if dropped := self.queue.put(chunk):
                self.counters["dropped_chunks"] += dropped
                self._warn("dropped_chunks", "playback queue full: %d old chunks dropped", dropped)

    async def _follow_commands(self) -> None:
        sub = self.bus.subscribe(["control"], Command)
        async for msg in sub:
            assert isinstance(msg, Command)
            if msg.name == "speaker-test":
                problem = self._speaker_test()
                self.acknowledge(msg, problem or f"playback plays a {TEST_TONE_S:.1f} s tone", ok=not problem)

    async def _follow_speech(self) -> None:
        """Barge-in: the visitor speaks again while the translation plays: stop it.

        Only speech that began over this answer counts (``SpeechActivity.over_answer``, heard after
        the answer started): an onset capture heard before it knew of the answer is the question's
        tail or the answer's first echo arriving late on a busy box, and stopped whole answers. In
        half duplex the microphone is muted while the speaker talks, so nothing is heard over an
        answer; with ``echo = "off"`` only an echo-free microphone suits ``barge_in = true``.
        """
        sub = self.bus.subscribe(["capture"], SpeechActivity)
        async for msg in sub:
            assert isinstance(msg, SpeechActivity)
            writer = self._writer
            if not (msg.speaking and self.config.audio.barge_in and self._speaking and writer is not None):
                continue
            if not msg.over_answer or msg.t < self._started_ns:
                self.log.debug("speech heard before capture knew of the answer (%.0f ms after it began): "
                               "not a barge-in", (msg.t - self._started_ns) / 1e6)  # fmt: skip
                continue
            dropped = self.queue.clear()
            writer.flush()
            self.counters["barge_ins"] += 1
            self._interrupt(self._playing_response)
            self.log.info("barge-in: someone speaks; %d queued chunks of the translation dropped", dropped)

    def _interrupt(self, response_id: str) -> None:
        """Remember the stopped response (its later audio is dropped) and tell the session."""
        if not response_id or response_id == TEST_RESPONSE_ID:
            return
        self._interrupted = response_id
        self.bus.publish(PlaybackState(state="interrupted", response_id=response_id, pid=os.getpid()))

    def _speaker_test(self) -> str:
        """The tone goes through the normal player: same queue, same device, same states.
        Returns why it cannot play ("" when it does)."""
        self.count("speaker_tests")
        if self._writer is None:
            self.log.warning("speaker test: no speaker is open (%s)", self.status())
            return f"no speaker is open: {self.status()}"
        self.log.info("speaker test: %.1f s tone at %d Hz", TEST_TONE_S, TEST_TONE_HZ)
        pcm, step = speaker_test_tone(), RATE * PERIOD_MS // 1000 * BYTES_PER_FRAME
        now = time.monotonic_ns()
        for i in range(0, len(pcm), step):
            self.queue.put(Chunk(pcm=pcm[i : i + step], t=now, response_id=TEST_RESPONSE_ID))
        self.queue.put(Chunk(pcm=b"", t=now, response_id=TEST_RESPONSE_ID, end=True))
        return ""

    def _chunk(self, msg: AudioOut) -> Chunk | None:
        if not MIN_RATE <= msg.rate <= MAX_RATE:
            self.counters["rejected_chunks"] += 1
            self._warn("rejected_chunks", "audio at %d Hz refused: not a speech rate", msg.rate)
            return None
        pcm = msg.pcm
        if len(pcm) % BYTES_PER_FRAME:
            self._warn("rejected_chunks", "audio chunk of %d bytes is not whole samples: last byte cut", len(pcm))
            pcm = pcm[: len(pcm) - len(pcm) % BYTES_PER_FRAME]
        if msg.rate != RATE:
            pcm = self._at_speaker_rate(pcm, msg.rate)
        # An empty AudioOut marks the end of a response: play what is buffered now.
        return Chunk(pcm=pcm, t=msg.t, response_id=msg.response_id, end=not pcm)

    def _at_speaker_rate(self, pcm: bytes, rate: int) -> bytes:
        """Speech at another rate (the service's ``session.updated`` said so), resampled to ours.

        One stream per response: at its end the resampler starts afresh (its few samples of
        delay are the response's last, and silence).
        """
        if self._inbound is None or self._inbound.src.rate != rate:
            self._inbound = Converter(DeviceFormat(rate, 1), DeviceFormat(RATE, 1))
            self.log.info("speech arrives at %d Hz: resampled to %d Hz", rate, RATE)
        if not pcm:
            self._inbound = None
            return b""
        return self._inbound.convert(pcm)

    def _warn(self, counter: str, fmt: str, *args: object) -> None:
        seen = int(self.counters[counter])
        if seen <= _LOG_FIRST or seen % 100 == 0:
            self.log.warning(fmt, *args)


def speaker_test_tone(rate: int = RATE) -> bytes:
    """S16_LE mono sine with 20 ms fades (no clicks)."""
    import numpy as np  # only when staff ask for the test: the player itself needs none

    n = int(rate * TEST_TONE_S)
    t = np.arange(n) / rate
    wave = np.sin(2 * np.pi * TEST_TONE_HZ * t) * TEST_TONE_LEVEL
    fade = int(rate * 0.02)
    ramp = np.linspace(0.0, 1.0, fade)
    wave[:fade] *= ramp
    wave[-fade:] *= ramp[::-1]
    return (wave * 32767).astype("<i2").tobytes()
