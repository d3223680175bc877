"""One client connection to the engine: hear utterances, answer with translations.

The connection's loop is the shared one (``daemon.realtime.server``); here is what the engine
does in it. Audio feeds the end-of-speech detector on the event loop (it is cheap); each ended
utterance goes to the responder, in order, which runs the models on the engine's worker thread
and streams the response: text first, then each sentence's speech as soon as it is
synthesized, then the source transcription. A translation the models are not sure of
(``reliability.py``) is not spoken: the response says a fixed phrase (or nothing) and its caption
is the source transcript, marked "(offline — translation uncertain)". ``session.finish`` is
answered after the last utterance (flushed), with ``session.finished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection

from daemon import engine_languages as eng_lang
from daemon.realtime import server
from daemon.realtime.rules import Rejected
from services.engine import events, reliability
from services.engine.core import Engine
from services.engine.model import ModelError
from services.engine.rules import EngineRules
from services.engine.segmenter import Segmenter, Utterance
from services.engine.translate import Heard, Translation
from services.engine.tts import sentences

log = logging.getLogger("tolk.engine")
#: Utterances waiting for the models; past this, the oldest waiting one is dropped (said in the log).
MAX_PENDING = 4


class Conversation(server.Conversation[Utterance]):
    def __init__(self, engine: Engine, ws: ServerConnection, number: int, model: str) -> None:
        cfg = engine.cfg
        # The Marian pairs are listed once per connection: a pair installed meanwhile serves the next one.
        self.rules: EngineRules = EngineRules(cfg.end_silence_ms, engine.translator.marian_pairs())
        super().__init__(ws, number, model, self.rules, "local", MAX_PENDING + 1)
        self.engine = engine
        self.segmenter = Segmenter(cfg.end_silence_ms, max_utterance_s=cfg.max_utterance_s)
        self.errors_sent = 0
        self.responses = 0
        #: end of speech → first synthesized audio of the latest response (the benchmark reads it)
        self.first_audio_s: float | None = None

    # --- what the client sends ---------------------------------------------------------------

    def rejected(self, raw: str | bytes, exc: Rejected) -> None:
        self.errors_sent += 1
        log.info("connection %d: refused a client event: %s", self.number, exc)

    async def session_update(self, event: dict[str, Any]) -> None:
        self.segmenter.end_silence_ms = self.rules.end_silence_ms
        await super().session_update(event)

    async def audio(self, pcm: bytes) -> None:
        for utterance in self.segmenter.feed(pcm):
            self._queue(utterance)

    async def finish_asked(self) -> None:
        if (pending := self.segmenter.flush()) is not None:
            self._queue(pending)
        await super().finish_asked()

    def _queue(self, utterance: Utterance) -> None:
        if self.jobs.qsize() >= MAX_PENDING:
            with contextlib.suppress(asyncio.QueueEmpty):
                self.jobs.get_nowait()
            log.warning("connection %d: the models are behind; dropped the oldest waiting utterance", self.number)
        self.jobs.put_nowait(utterance)

    # --- what the engine says ----------------------------------------------------------------

    async def reply(self, utterance: Utterance) -> bool:
        self.first_audio_s = None
        await self._reply(utterance)
        return True

    async def _reply(self, utterance: Utterance) -> None:
        engine, rules = self.engine, self.rules
        source, target = rules.languages()
        session = rules.session
        audio_s = len(utterance.pcm) / 32000
        pair = eng_lang.pair(source, target, rules.marian)
        assert pair is not None  # refused at session.update otherwise
        heard: Heard | None = None
        if pair.path != "whisper-translate":  # the transcription is the first step anyway
            heard = await self._transcribe(utterance, source)
        translation: Translation | None = None
        try:
            translation = await engine.run(
                "translate", audio_s, lambda: engine.translator.translate(utterance.pcm, source, target, heard)
            )
        except (ModelError, ValueError) as exc:
            # A Marian pair folder that cannot be loaded, or was removed since the connection opened
            # (ValueError: the refusal): the client is told why, and the connection lives.
            log.error("connection %d: %s", self.number, exc)
            await self.send(events.error_event(self.ids, str(exc), "model_error", "session.translation"))
        if translation is not None and translation.text:
            verdict = reliability.judge(
                reliability.limits(translation.path), translation.whisper, translation.text_score
            )
            if verdict.reliable:
                await self._stream_response(translation.text, target, session, utterance)
            else:
                heard = await self._uncertain(translation, heard, verdict, source, target, session, utterance)
        if rules.source_captions:
            heard = heard or await self._transcribe(utterance, source)
            if heard.text:
                for event in events.transcription_events(self.ids, heard.text, heard.language):
                    await self.send(event)

    async def _transcribe(self, utterance: Utterance, source: str) -> Heard:
        translator = self.engine.translator
        return await self.engine.run(
            "asr", len(utterance.pcm) / 32000, lambda: translator.transcribe(utterance.pcm, source)
        )

    async def _stream_response(self, text: str, target: str, session: dict[str, Any], utterance: Utterance) -> None:
        stream = events.ResponseStream(self.ids, session)
        for event in stream.opening():
            await self.send(event)
        parts = sentences(text) or [text]
        speak = stream.with_audio and self.engine.speaker.can_speak(target)
        for n, part in enumerate(parts):
            await self.send(stream.snapshot(" ".join(parts[: n + 1]), " ".join(parts[n + 1 :])))
            if speak:
                await self._speak(stream, part, target, utterance)
        await self._close(stream, text, utterance)

    async def _uncertain(
        self,
        translation: Translation,
        heard: Heard | None,
        verdict: reliability.Verdict,
        source: str,
        target: str,
        session: dict[str, Any],
        utterance: Utterance,
    ) -> Heard:
        """A translation not to be trusted: a fixed phrase or silence, and the source text, marked."""
        stream = events.ResponseStream(self.ids, session)
        for event in stream.opening():
            await self.send(event)
        phrase = reliability.UNCERTAIN_PHRASES.get(target, "") if self.engine.cfg.uncertain_speech == "phrase" else ""
        if phrase and stream.with_audio and self.engine.speaker.can_speak(target):
            # First, and synthesized once: the phrase waits neither for the transcript (one more
            # decode after the translate task) nor for a voice, so it comes as soon as a translation.
            await self._speak(stream, phrase, target, utterance, self.engine.speaker.speak_fixed)
        heard = heard or await self._transcribe(utterance, source)
        caption = f"{heard.text} {reliability.UNCERTAIN_MARK}".strip()
        log.info(
            "connection %d: %s translation %r not trusted (%s): shown as %r",
            self.number,
            translation.path,
            translation.text[:120],
            verdict.reason,
            caption[:120],
        )
        await self.send(stream.snapshot(caption, ""))
        await self._close(stream, caption, utterance)
        return heard

    async def _speak(
        self,
        stream: events.ResponseStream,
        text: str,
        target: str,
        utterance: Utterance,
        voice: Callable[[str, str], bytes] | None = None,
    ) -> None:
        synthesize = functools.partial(voice or self.engine.speaker.speak, text, target)
        pcm = await self.engine.run("tts", 0.0, synthesize)
        self.engine.stages.audio_s["tts"] = self.engine.stages.audio_s.get("tts", 0.0) + len(pcm) / 48000
        if self.first_audio_s is None and pcm:
            self.first_audio_s = time.monotonic() - utterance.ended_at
        for event in stream.audio(pcm):
            await self.send(event)

    async def _close(self, stream: events.ResponseStream, text: str, utterance: Utterance) -> None:
        for event in stream.closing(text):
            await self.send(event)
        self.responses += 1
        log.info(
            "connection %d: %.1f s of speech → %r in %.2f s",
            self.number,
            utterance.speech_s,
            text[:120],
            time.monotonic() - utterance.ended_at,
        )
