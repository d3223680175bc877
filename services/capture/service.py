"""The capture process: opens the microphone, runs the reader thread, keeps the device alive.

A microphone that is missing at start does not stop the start (``degraded``, the status names
the device and ALSA's reason; retried with backoff), and a gap in the audio is counted and shown
for a minute; why: docs/audio.md. Speech start/stop goes out as ``SpeechActivity``. With
``[audio] echo = "aec"`` playback's ``RenderedAudio`` is the echo canceller's reference (``aec``);
a canceller that cannot be set up falls back to half duplex: the box must never translate its
own voice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import ClassVar

from daemon.alsa_device import DeviceKeeper, Pcm, PcmFactory, PcmSpec, open_alsa_pcm
from daemon.config import Config
from daemon.device_loop import DeviceLoop, OnEnd
from daemon.messages import (
    AudioResume,
    AudioSettled,
    Command,
    EchoState,
    Heartbeat,
    Message,
    PlaybackState,
    RenderedAudio,
    SpeechActivity,
)
from daemon.service import Service, ServiceContext
from daemon.vad import SpeechDetector, make_vad
from services.capture import aec as aec_mod
from services.capture import pipeline as pipeline_mod
from services.capture import reader as reader_mod
from services.capture.mute import MuteGate, OperatorMute
from services.capture.pipeline import CapturePipeline
from services.capture.policy import PolicySettings, StreamingPolicy
from services.capture.reader import Reader
from services.capture.reference import RenderReference
from services.capture.ring import AudioRing

RATE = 16000
PERIODS = 4
#: How long stop() waits for the reader to finish its current period.
READER_STOP_S = 1.0
#: Without a word from playback for this long, a "speaker talking" mute is released: a
#: playback process that died mid-sentence must not leave the microphone muted for good.
PLAYBACK_SILENT_S = 5.0
PLAYBACK_GONE = frozenset({"stopping", "stopped", "failed"})
#: Audio older than this makes the status say that none is arriving.
NO_AUDIO_AFTER_S = 1.0
#: Chunks further apart than this are a gap in the audio (counted, and shown for GAP_SHOWN_S).
GAP_S = 0.5
GAP_SHOWN_S = 60.0


class CaptureService(Service):
    name = "capture"
    #: A microphone delivers every 20 ms: a second without a chunk is a stall.
    fresh_within_s = 1.0
    #: The seam to the audio hardware (a test or another backend may swap it).
    pcm_factory: ClassVar[PcmFactory] = staticmethod(open_alsa_pcm)
    #: The seam to the echo canceller (WebRTC AEC3).
    canceller_factory: ClassVar[aec_mod.CancellerFactory] = aec_mod.WebRtcCanceller

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        for key in (
            *pipeline_mod.COUNTERS,
            *reader_mod.COUNTERS,
            "reopens",
            "open_failures",
            "gaps",
            "last_gap_s",
            "longest_gap_s",
        ):
            self.counters[key] = 0
        self.gate = MuteGate()
        self.operator_mute = OperatorMute(self.bus.directory)
        self.keeper = DeviceKeeper(type(self).pcm_factory, self.log)
        self.device = DeviceLoop(self, self.keeper, self.spec, self.counters, self.log, self._opened)
        self.detector = SpeechDetector(make_vad(self.config.audio.vad))
        self.policy = StreamingPolicy(self._policy_settings())
        self.reference = RenderReference()
        self.ring = AudioRing(self.config.service.backlog_s, self.config.audio.period_ms)
        self.echo: aec_mod.EchoCanceller | None = None
        self.echo_figures = EchoState()
        self._aec_failed = ""
        self._reference_task: asyncio.Task[None] | None = None
        self._configure_gate()
        self._gap_at_ns = 0
        self._speaking_published = False
        self._reading_since_ns = 0
        self._last_chunk_ns = 0

    def spec(self) -> PcmSpec:
        audio = self.config.audio
        return PcmSpec(audio.capture_device, capture=True, rate=RATE, period_ms=audio.period_ms, periods=PERIODS)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.operator_mute.load():
            self.gate.operator = True
            self.log.info("microphone muted by the operator (kept from before this start)")
        self.counters["operator_muted"] = float(self.gate.operator)  # the fleet's view shows it (mqtt)
        if not self.device.try_open():
            self.log.warning("starting without a microphone; it is retried in the background")

    async def run(self) -> None:
        self.spawn(self._follow_playback(), "follow-playback")
        self._follow_reference()
        self.spawn(self._follow_commands(), "follow-commands")
        self.spawn(self._follow_session(), "follow-session")

        def ended(_error: str | None) -> None:
            self._speech_changed(False, time.monotonic_ns())  # nothing is heard until it reopens

        await self.device.run(self._reader_on, ended)

    async def stop(self) -> None:
        await self.device.stop(READER_STOP_S, "capture read still blocked in the device")

    async def apply_config(self, new: Config, changed: set[str]) -> None:
        before = self.spec()
        vad_before = self.config.audio.vad
        self.config = new
        self.ring.resize(new.service.backlog_s, new.audio.period_ms)
        self._configure_gate()
        self._follow_reference()
        self.policy.settings = self._policy_settings()
        if new.audio.vad != vad_before:
            self.detector = SpeechDetector(make_vad(new.audio.vad))
            if self._reader is not None:
                self._reader.pipeline.detector = self.detector
        if self.spec() == before:
            return
        audio = new.audio
        self.log.info("capture now %r, %d ms periods: reopening", audio.capture_device, audio.period_ms)
        self._last_chunk_ns = 0  # another device: its silence counts from its open
        self.device.reopen()

    def heartbeat_parts(self) -> list[Message]:
        return [dataclasses.replace(self.echo_figures, t=time.monotonic_ns())]  # a copy: the thread adds on

    def status(self) -> str:
        device = self.config.audio.capture_device
        if (waiting := self.device.waiting(device, self.state)) is not None:
            return waiting
        now = time.monotonic_ns()
        # Counted from the last audio, not from a reopen: a device reopened because it went
        # silent has still given nothing.
        since = self._last_chunk_ns or self._reading_since_ns or now
        quiet_s = (now - since) / 1e9
        if quiet_s > NO_AUDIO_AFTER_S:
            return f"no audio for {quiet_s:.1f} s from {device!r}"
        line = f"capturing {device} {RATE / 1000:g} kHz, {self.config.audio.period_ms} ms periods"
        if why := self.gate.reason(now):
            line += f", muted ({why})"
        if self.echo is not None:
            erle = self.echo_figures.erle_db
            line += ", echo cancelled " + ("(ERLE not measured yet)" if erle is None else f"(ERLE {erle:g} dB)")
        elif self._aec_failed:
            line += f", half duplex: echo canceller unavailable ({self._aec_failed})"
        if self.detector.speaking:
            line += ", speech"
        if self._gap_at_ns and (ago_s := (now - self._gap_at_ns) / 1e9) < GAP_SHOWN_S:
            line += f", gap of {self.counters['last_gap_s']:g} s {ago_s:.0f} s ago"
        return line

    def is_fresh(self) -> bool:
        # Waiting for a missing microphone is the work this process can do; a restart by the
        # watchdog would not plug it in, and repeated restarts would hit the unit's start limit
        # and leave it failed for good. A device that is open but silent is stale.
        return self.device.retrying or super().is_fresh()

    # --- the device --------------------------------------------------------------------------

    @property
    def _reader(self) -> Reader | None:
        worker = self.device.worker
        return worker if isinstance(worker, Reader) else None

    def _opened(self) -> None:
        audio = self.config.audio
        self.log.info("capturing from %r: %d Hz mono, %d ms periods", audio.capture_device, RATE, audio.period_ms)

    def _reader_on(self, pcm: Pcm, spec: PcmSpec, on_end: OnEnd) -> Reader:
        """The thread that reads ``pcm`` (DeviceLoop runs it)."""
        loop = asyncio.get_running_loop()

        def on_speech(speaking: bool, t: int, over_answer: bool) -> None:  # on the reader thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._speech_changed, speaking, t, over_answer)

        def on_mute(muted: bool) -> None:  # on the reader thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.beat_now)

        pipeline = CapturePipeline(
            self.bus.bulk, self.gate, self.detector, self.policy, self.counters, on_speech, on_mute=on_mute
        )
        pipeline.echo = self.echo
        pipeline.ring = self.ring
        self._reading_since_ns = time.monotonic_ns()
        return Reader(pcm, spec, pipeline, self.counters, self._on_chunk, on_end)

    def _on_chunk(self, t: int) -> None:  # on the reader thread
        last, self._last_chunk_ns = self._last_chunk_ns, t
        if last and t - last > GAP_S * 1e9:
            gap_s = round((t - last) / 1e9, 1)
            self.counters["gaps"] += 1
            self.counters["last_gap_s"] = gap_s
            self.counters["longest_gap_s"] = max(self.counters["longest_gap_s"], gap_s)
            self._gap_at_ns = t
            self.log.warning("audio is back after a gap of %.1f s", gap_s)
        if not last or t - last > GAP_S * 1e9:
            self.keeper.working()
        self.mark_fresh()

    # --- settings ----------------------------------------------------------------------------

    def _configure_gate(self) -> None:
        audio = self.config.audio
        self.gate.tail_ns = audio.echo_tail_ms * 1_000_000
        self._configure_echo(audio.echo == "aec")
        self.gate.half_duplex = audio.echo == "half-duplex" or (audio.echo == "aec" and self.echo is None)

    def _configure_echo(self, wanted: bool) -> None:
        if wanted == (self.echo is not None):
            return
        echo = None
        if wanted:
            try:
                echo = aec_mod.EchoCanceller(self.reference, self.echo_figures, type(self).canceller_factory)
            except (ImportError, RuntimeError, OSError) as exc:
                self._aec_failed = str(exc) or type(exc).__name__
                self.log.error("echo canceller unavailable (%s): the microphone is half duplex instead", exc)
            else:
                self._aec_failed = ""
                self.log.info("echo cancellation on: the box's own voice is removed from the microphone")
        self.echo = echo
        if echo is None:
            self.echo_figures.cancelling = False
            self.echo_figures.erle_db = None  # a figure for a canceller no longer running
        if self._reader is not None:
            self._reader.pipeline.echo = echo

    def _policy_settings(self) -> PolicySettings:
        audio = self.config.audio
        return PolicySettings(
            mode=audio.streaming,
            period_ms=audio.period_ms,
            preroll_ms=audio.preroll_ms,
            trailing_ms=audio.trailing_ms,
            keepalive_s=audio.keepalive_s,
            keepalive_ms=self.config.service.chunk_ms,
        )

    def _speech_changed(self, speaking: bool, t: int, over_answer: bool = False) -> None:
        if speaking == self._speaking_published:
            return
        self._speaking_published = speaking
        self.bus.publish(SpeechActivity(speaking=speaking, t=t, over_answer=over_answer and speaking))
        self.log.debug("speech %s", "started" if speaking else "stopped")

    # --- the bus -----------------------------------------------------------------------------

    async def _follow_playback(self) -> None:
        """Mute while our own speaker talks (PlaybackState), release if playback goes quiet."""
        sub = self.bus.subscribe(["playback"], PlaybackState, Heartbeat)
        while True:
            try:
                # A deadline only while muted for the speaker; otherwise simply wait.
                msg = await asyncio.wait_for(sub.recv(), PLAYBACK_SILENT_S if self.gate.speaker else None)
            except TimeoutError:
                if self.gate.speaker:
                    self.log.warning("no word from playback for %.0f s: speaker mute released", PLAYBACK_SILENT_S)
                    self.gate.speaker_drained(time.monotonic_ns())
                continue
            if isinstance(msg, PlaybackState | Heartbeat) and self.gate.orphaned_by(msg.pid):
                was = self.gate.speaker_pid
                self.log.info("playback restarted (pid %d, was %d): speaker mute released", msg.pid, was)
                self.gate.speaker_drained(time.monotonic_ns())
            if isinstance(msg, PlaybackState):
                if msg.state == "started":
                    self.gate.speaker_started(msg.pid)
                elif msg.state == "drained":
                    self.gate.speaker_drained(msg.t)
            elif isinstance(msg, Heartbeat) and self.gate.speaker and msg.state in PLAYBACK_GONE:
                self.gate.speaker_drained(msg.t)

    def _follow_reference(self) -> None:
        """Take what the speaker plays while the canceller runs, and only then: unheard, it is not sent."""
        wanted = self.echo is not None
        if wanted and self._reference_task is None:
            self._reference_task = self.spawn(self._follow_rendered(), "echo-reference")
        elif not wanted and self._reference_task is not None:
            self._reference_task.cancel()
            self._reference_task = None

    async def _follow_rendered(self) -> None:
        """Keep what the speaker plays as the canceller's reference."""
        sub = self.bus.subscribe(["playback"], RenderedAudio)
        try:
            async for msg in sub:
                assert isinstance(msg, RenderedAudio)
                if self.echo is not None:
                    self.reference.add(msg.pcm, msg.t, msg.rate)
        finally:
            sub.close()

    async def _follow_session(self) -> None:
        """How far the session's audio is settled, and its requests for the rest (ring.py)."""
        sub = self.bus.subscribe(["session"], AudioSettled, AudioResume)
        async for msg in sub:
            if isinstance(msg, AudioSettled):
                self.ring.settled_through(msg.through_seq)
            elif isinstance(msg, AudioResume):
                self.ring.request_resume()

    async def _follow_commands(self) -> None:
        sub = self.bus.subscribe(["control"], Command)
        async for msg in sub:
            assert isinstance(msg, Command)
            if msg.name in ("mute", "unmute"):
                muted = self.gate.operator = msg.name == "mute"
                self.counters["operator_muted"] = float(muted)
                what = "muted" if muted else "unmuted"
                try:
                    self.operator_mute.save(muted)
                except OSError as exc:
                    what += f" (a restart would forget it: {exc})"
                    self.log.warning("the operator's mute is not kept: %s", exc)
                self.log.info("microphone %s by the operator", what)
                self.acknowledge(msg, f"microphone {what}")
