"""The realtime service's protocol as the session speaks it (see protocol.md); pure, no I/O.

Client events are built from the config; server events are parsed into dicts with a string
``type`` (anything else is a ``ProtocolError``); captions are assembled from the service's
``text``/``stash`` snapshots, which replace each other rather than append (protocol.md 5.3).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from daemon.config import Config
from daemon.realtime.profiles import AUTO

ASR_MODEL = "qwen3-asr-flash-realtime"
#: qwen3.8's turn detection in the official example (protocol.md 8b).
SPEAKER_DETECTION: dict[str, Any] = {"type": "speaker_detection", "threshold": 0.5}
INPUT_RATE = 16000
OUTPUT_RATE = 24000
#: ``output_audio_format`` names whose rate is documented (protocol.md 2.2, 2.4).
FLAT_OUTPUT_RATES = {"pcm24": OUTPUT_RATE, "pcm": OUTPUT_RATE}
BYTES_PER_SAMPLE = 2
#: The service's documented image limits (protocol.md 4).
MAX_IMAGE_BYTES = 500_000
JPEG_MAGIC = b"\xff\xd8\xff"
#: Codes after which retrying cannot help: a person must fix the key, the account or the model.
FATAL_CODES = frozenset(
    {
        "invalidapikey",
        "accessdenied",
        "modelnotfound",
        "arrearage",
        "insufficientquota",
        "allocatedquotaexceeded",
    }
)

SERVER_EVENT_TYPES = frozenset(
    {
        "error",
        "session.created",
        "session.updated",
        "session.finished",
        "response.created",
        "response.done",
        "response.text.text",
        "response.text.done",
        "response.audio.delta",
        "response.audio.done",
        "conversation.item.input_audio_transcription.text",
        "conversation.item.input_audio_transcription.completed",
        "response.audio_transcript.text",
        "response.audio_transcript.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        # Documented for 3.5 or Omni, or seen from early builds: handled when they come, never relied on.
        "response.audio_transcript.delta",
        "response.text.delta",
        "input_audio_buffer.cleared",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.input_audio_transcription.delta",
    }
)


class ProtocolError(ValueError):
    """A server event that is not one: not JSON, not an object, no type, a bad field."""


# --- client events ----------------------------------------------------------------------------


class EventIds:
    """Unique client event ids: a per-process prefix and a counter (the official sample's
    millisecond ids can collide when two events leave in the same millisecond)."""

    def __init__(self) -> None:
        self._prefix = f"event_{uuid.uuid4().hex[:12]}_"
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter)}"


def session_config(cfg: Config) -> dict[str, Any]:
    """The ``session`` object of ``session.update`` for this config and model (protocol.md 2, 8b, 9, 11.2)."""
    profile = cfg.profile
    if profile.shape == "nested":
        return _nested_session(cfg)
    source, target, phrases = cfg.languages.source, cfg.languages.target, cfg.translation.phrases
    qwen35 = profile.shape == "flat35"
    session: dict[str, Any] = {
        "modalities": list(cfg.modalities),
        # 3.5 documents "pcm" for both; qwen3 documents pcm16 in and pcm24 out.
        "input_audio_format": "pcm" if qwen35 else "pcm16",
        "output_audio_format": "pcm" if qwen35 else "pcm24",
    }
    voice = cfg.voice
    if voice is not None and "audio" in cfg.modalities:
        session["voice"] = voice
    if profile.translator:
        session["translation"] = _translation(target, phrases)
    if profile.translator and cfg.output.source_captions:
        transcription: dict[str, Any] = {"model": ASR_MODEL}
        if source != AUTO:  # 3.5 detects a source left out
            transcription["language"] = source
        session["input_audio_transcription"] = transcription
    elif qwen35:
        session["input_audio_transcription"] = {"model": None}  # 3.5 transcribes unless told not to
    if (instructions := profile.instructions_for(source, target, phrases)) is not None:
        session["instructions"] = instructions
    if profile.turn_detection is not None:
        session["turn_detection"] = dict(profile.turn_detection)
    return session


def _nested_session(cfg: Config) -> dict[str, Any]:
    """qwen3.8's shape (protocol.md 8b): no flat key; the source language is detected, never sent."""
    session: dict[str, Any] = {
        "output_modalities": list(cfg.modalities),
        "audio": {
            "input": {
                "format": {"type": "pcm", "sample_rate": INPUT_RATE},
                "turn_detection": dict(SPEAKER_DETECTION),
            }
        },
        "translation": _translation(cfg.languages.target, cfg.translation.phrases),
    }
    if cfg.voice is not None:  # only when the config names one: else the service's default
        session["voice"] = cfg.voice
    return session


def _translation(target: str, phrases: dict[str, str]) -> dict[str, Any]:
    translation: dict[str, Any] = {"language": target}
    if phrases:
        translation["corpus"] = {"phrases": dict(phrases)}
    return translation


def output_rate(event: dict[str, Any]) -> int | None:
    """The sample rate of the speech a ``session.updated`` promises (None: it does not say).

    qwen3 names it in ``output_audio_format`` (``pcm24``: 24 kHz); qwen3.8 under
    ``audio.output.format.sample_rate``; a bare ``pcm`` (3.5) is the documented 24 kHz.
    Older samples' ``pcm16`` named the sample width, not a rate: it is not taken for 16 kHz.
    """
    session = event.get("session")
    if not isinstance(session, dict):
        return None
    audio = session.get("audio")
    out = audio.get("output") if isinstance(audio, dict) else None
    fmt = out.get("format") if isinstance(out, dict) else None
    if isinstance(fmt, dict):
        rate = fmt.get("sample_rate", fmt.get("rate"))
        if isinstance(rate, int) and not isinstance(rate, bool) and 8000 <= rate <= 48000:
            return rate
        if rate is not None:
            raise ProtocolError(f"session.updated: output sample_rate {rate!r} is not a rate")
    name = session.get("output_audio_format")
    if name is None:
        return None
    if name not in FLAT_OUTPUT_RATES:
        raise ProtocolError(f"session.updated: output_audio_format {name!r} is not one the box can play")
    return FLAT_OUTPUT_RATES[name]


def session_update(cfg: Config, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": "session.update", "session": session_config(cfg)}


def audio_append(pcm: bytes, event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(pcm).decode(),
    }


def image_append(jpeg: bytes, event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "input_image_buffer.append",
        "image": base64.b64encode(jpeg).decode(),
    }


def session_finish(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": "session.finish"}


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def image_problem(jpeg: bytes) -> str | None:
    """Why the service would refuse this image, or None when it may be sent."""
    if not jpeg.startswith(JPEG_MAGIC):
        return "not a JPEG"
    if len(jpeg) > MAX_IMAGE_BYTES:
        return f"{len(jpeg)} bytes, over the {MAX_IMAGE_BYTES}-byte limit"
    return None


def jpeg_size(jpeg: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's start-of-frame marker, or None when there is none."""
    pos = 2
    while pos + 9 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            return None
        marker = jpeg[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = int.from_bytes(jpeg[pos + 5 : pos + 7], "big")
            width = int.from_bytes(jpeg[pos + 7 : pos + 9], "big")
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


def image_tokens(width: int, height: int, tile: int = 28) -> float:
    """The service bills 0.5 token per ``tile``x``tile`` pixels of image (28 on qwen3, 32 on 3.5/3.8)."""
    return 0.5 * (-(-max(width, 0) // tile)) * (-(-max(height, 0) // tile))


# --- server events ----------------------------------------------------------------------------


def parse(raw: str | bytes) -> dict[str, Any]:
    """One server frame as an event dict with a string ``type``; raises ProtocolError."""
    if isinstance(raw, bytes):
        raise ProtocolError(f"binary frame of {len(raw)} bytes (the service sends JSON text)")
    try:
        event = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ProtocolError(f"not a JSON object but {type(event).__name__}")
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("event without a string 'type'")
    return event


def text_field(event: dict[str, Any], name: str) -> str:
    value = event.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProtocolError(f"{event['type']}: {name!r} is {type(value).__name__}, not a string")
    return value


def audio_delta(event: dict[str, Any]) -> bytes:
    """The PCM of a ``response.audio.delta`` (24 kHz mono s16le)."""
    delta = text_field(event, "delta")
    try:
        pcm = base64.b64decode(delta, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"response.audio.delta: delta is not base64: {exc}") from None
    if len(pcm) % BYTES_PER_SAMPLE:
        raise ProtocolError(f"response.audio.delta: {len(pcm)} bytes is not whole 16-bit samples")
    return pcm


@dataclass(frozen=True)
class ServiceError:
    code: str
    message: str
    kind: str
    param: str

    @property
    def fatal(self) -> bool:
        return normalized_code(self.code) in FATAL_CODES

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.code or self.kind or 'error'}: {self.message or 'no message'}{where}"


def normalized_code(code: str) -> str:
    """``Throttling.AllocationQuota`` and ``allocation_quota`` compare alike."""
    return re.sub(r"[^a-z0-9]", "", code.lower())


def service_error(event: dict[str, Any]) -> ServiceError:
    body = event.get("error")
    if not isinstance(body, dict):
        body = {}

    def field(name: str) -> str:
        value = body.get(name)
        return value if isinstance(value, str) else ("" if value is None else str(value))

    return ServiceError(
        code=field("code"), message=field("message"), kind=field("type"), param=field("param")
    )


@dataclass(frozen=True)
class UsageDelta:
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def usage(event: dict[str, Any]) -> UsageDelta | None:
    """``response.done.response.usage``, or None when the event carries none."""
    response = event.get("response")
    raw = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(raw, dict):
        return None

    def count(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    def tokens(details: str, name: str) -> int:
        block = raw.get(details)
        return count(block.get(name, 0)) if isinstance(block, dict) else 0

    input_audio = tokens("input_tokens_details", "audio_tokens")
    input_text = tokens("input_tokens_details", "text_tokens")
    output_audio = tokens("output_tokens_details", "audio_tokens")
    output_text = tokens("output_tokens_details", "text_tokens")
    # The totals when given (they may hold kinds the details do not name), else the details' sum.
    return UsageDelta(
        input_audio_tokens=input_audio,
        input_text_tokens=input_text,
        output_audio_tokens=output_audio,
        output_text_tokens=output_text,
        input_tokens=max(count(raw.get("input_tokens")), input_audio + input_text),
        output_tokens=max(count(raw.get("output_tokens")), output_audio + output_text),
    )


def live_detail(cfg: Config) -> str:
    """A live session in words: the direction and what comes back."""
    return f"{cfg.languages.source} → {cfg.languages.target}, {'+'.join(cfg.modalities)}"
