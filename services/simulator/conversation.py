"""One client connection to the simulator: answer as the service does, record what the client did.

The connection's loop is the shared one (``daemon.realtime.server``); every client event is held
to the documented rules there, and here a bad one is also recorded as a violation. Faults
(``faults.py``) act here: a stall, drops and closes, delays, malformed frames, a refused update.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr
from websockets.asyncio.server import ServerConnection

from daemon.realtime import server
from daemon.realtime.rules import Accepted, ClientRules, Rejected, SessionView
from services.simulator import responses
from services.simulator.faults import Faults
from services.simulator.speech import (
    OUTPUT_RATE,
    Endpointer,
    Utterance,
    reply_seconds,
    spoken,
    tone,
    voiced_seconds,
)

if TYPE_CHECKING:
    from services.simulator.server import ConnectionLog, Simulator

log = logging.getLogger("tolk.simulator")
MAX_PENDING_RESPONSES = 16


class Conversation(server.Conversation[Utterance]):
    def __init__(self, sim: Simulator, ws: ServerConnection, faults: Faults, record: ConnectionLog) -> None:
        rules = ClientRules.for_model(record.model)  # the handshake let only known models in
        super().__init__(ws, record.number, record.model, rules, "sim", MAX_PENDING_RESPONSES)
        self.sim = sim
        self.faults = faults
        self.record = record
        self.profile = rules.profile
        self.omni = rules.omni
        if self.profile.shape == "nested":  # the speech's rate, as session.updated will say it
            rules.session["audio"]["output"]["format"]["sample_rate"] = sim.output_rate
        self._speakers: dict[str, int] = {}  # language heard -> speaker id (3.8 separates speakers)
        self.endpointer = Endpointer(**sim.endpointer_options)
        self.audio_s = 0.0
        self.audio_since_response_s = 0.0
        self.silent = False  # a stall fault struck: read on, never answer
        self.errored = False
        self.replies = 0
        self._rng = random.Random(record.number)

    async def run(self) -> None:
        if self.faults.stall:
            async for raw in self.ws:
                self.sim.record_frame(self.record, raw)
            return
        dropper = asyncio.create_task(self._drop_after(), name=f"simulator:drop-{self.record.number}")
        try:
            await super().run()
        finally:
            dropper.cancel()
            await asyncio.gather(dropper, return_exceptions=True)

    async def _drop_after(self) -> None:
        if self.faults.drop_after_s is None:
            return
        await asyncio.sleep(self.faults.drop_after_s)
        log.info("connection %d: dropping after %.1f s (fault)", self.record.number, self.faults.drop_after_s)
        await self.ws.close(1011, "simulated drop")

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        if self.silent:
            return
        if isinstance(event, dict):
            self.record.sent.append(event["type"])
            del self.record.sent[:-1000]
        await super().send(event)

    # --- what the client sends ---------------------------------------------------------------

    def rejected(self, raw: str | bytes, exc: Rejected) -> None:
        self.sim.violation(self.record, str(exc))
        self.sim.record_frame(self.record, raw, rejected=str(exc))

    def accepted(self, accepted: Accepted) -> None:
        self.sim.record_event(self.record, accepted.event, accepted.payload)

    async def session_update(self, event: dict[str, Any]) -> None:
        refusal = self.faults.reject_update
        if refusal is None:
            await super().session_update(event)
            return
        self.rules.undo_update()
        await self.send(responses.error_event(self.ids, refusal, self.faults.reject_code, "session", event["event_id"]))

    async def audio(self, pcm: bytes) -> None:
        seconds = len(pcm) / 32000
        self.audio_s += seconds
        self.audio_since_response_s += seconds
        for utterance in self.endpointer.feed(pcm):
            try:
                self.jobs.put_nowait(utterance)
            except asyncio.QueueFull:
                log.warning("connection %d: too many responses pending; utterance dropped", self.record.number)
        await self._audio_faults()

    async def _audio_faults(self) -> None:
        faults, number, heard = self.faults, self.record.number, self.audio_s
        limit, times = faults.stall_after_audio_s, faults.stall_after_audio_times
        if limit is not None and heard >= limit and (times is None or number <= times) and not self.silent:
            log.info("connection %d: going silent after %.1f s of audio (fault)", number, heard)
            self.silent = True
        if faults.error_after_audio_s is not None and heard >= faults.error_after_audio_s and not self.errored:
            self.errored = True
            message = f"simulated {faults.error_code} after {heard:.1f} s of audio"
            await self.send(responses.error_event(self.ids, message, faults.error_code))
        outage_due = faults.outage_after_audio_s is not None and heard >= faults.outage_after_audio_s
        if outage_due and number == 1 and self.sim.begin_outage(faults.outage_s):
            log.info("connection 1: outage of %.1f s after %.1f s of audio (fault)", faults.outage_s, heard)
            await self.ws.close(1011, "simulated outage")
        limit, times = faults.close_after_audio_s, faults.close_after_audio_times
        if limit is not None and heard >= limit and (times is None or number <= times):
            log.info("connection %d: closing after %.1f s of audio (fault)", number, heard)
            await self.ws.close(1011, "simulated failure")

    # --- what the simulator says -------------------------------------------------------------

    async def reply(self, utterance: Utterance) -> bool:
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        if self.faults.malformed:
            for frame in responses.MALFORMED_FRAMES:
                await self.send(frame)
        return await self._reply(utterance)

    def _answer_audio(self, utterance: Utterance) -> bytes:
        voice = self.sim.voice
        if voice is None:
            audio = tone(reply_seconds(utterance), utterance.number)
        else:
            audio = spoken(voice, voiced_seconds(utterance), utterance.number)
        if self.profile.shape == "nested" and self.sim.output_rate != OUTPUT_RATE:
            samples = np.frombuffer(audio, dtype="<i2")
            audio = soxr.resample(samples, OUTPUT_RATE, self.sim.output_rate).astype("<i2").tobytes()
        return audio

    def _heard(self, utterance: Utterance, view: SessionView) -> str:
        """The language reported: the marker's, else the one the client named, else English (what a
        model that detects reports here for unmarked test speech)."""
        return utterance.language or view.source or "en"

    async def _reply(self, utterance: Utterance) -> bool:
        view = self.rules.view()
        events: list[dict[str, Any]] = []
        heard = self._heard(utterance, view)
        if self.omni:
            events += responses.omni_turn_events(self.ids, utterance)
        elif self.profile.speaker_ids:
            speaker = self._speakers.setdefault(heard, len(self._speakers) + 1)
            events.append(responses.speech_started(self.ids, utterance, f"spk_{speaker}"))
        if view.transcribe:
            events += responses.transcription_events(self.ids, utterance, heard, self.profile.captions)
        audio = self._answer_audio(utterance) if "audio" in view.modalities else b""
        input_s, self.audio_since_response_s = self.audio_since_response_s, 0.0
        self.replies += 1
        interrupted = self.replies <= self.faults.interrupt
        rate = self.sim.output_rate if self.profile.shape == "nested" else OUTPUT_RATE
        events += responses.response_events(
            self.ids, utterance, view, self.profile, input_s, audio, heard, interrupted=interrupted, audio_rate=rate
        )
        self.sim.responses += 1
        self.record.responses += 1
        for event in events:
            await self._pace()
            await self.send(event)
            times = self.faults.close_mid_response_times
            closing = self.faults.close_mid_response and (times is None or self.record.number <= times)
            if closing and event["type"] == "response.audio.delta":
                log.info("connection %d: closing mid-response (fault)", self.record.number)
                await self.ws.close(1011, "simulated failure")
                return False
        return True

    async def _pace(self) -> None:
        if not self.faults.bursty:
            await asyncio.sleep(self.sim.pace_s)
        elif self._rng.random() < 0.3:
            await asyncio.sleep(self._rng.uniform(0.15, 0.4))  # a gap, then a bunch back to back

    async def finish(self) -> None:
        """Flush what was heard (its transcription), then ``session.finished``."""
        pending = self.endpointer.flush()
        view = self.rules.view()
        if pending is not None and view.transcribe:
            heard = self._heard(pending, view)
            for event in responses.transcription_events(self.ids, pending, heard, self.profile.captions):
                await self.send(event)
        self.record.finished = True
        await super().finish()

    def lingered(self) -> None:
        self.sim.violation(
            self.record, f"client still connected {server.DISCONNECT_WITHIN_S:.0f} s after session.finished"
        )
