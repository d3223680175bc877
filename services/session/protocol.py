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
from daemon.messages import Caption

ASR_MODEL = "qwen3-asr-flash-realtime"
INPUT_RATE = 16000
OUTPUT_RATE = 24000
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
        # Documented for 3.5 or seen from early builds: handled when they come, never relied on.
        "response.audio_transcript.delta",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.failed",
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
    """The ``session`` object of ``session.update`` for this config (protocol.md 2, 11.2)."""
    session: dict[str, Any] = {
        "modalities": list(cfg.modalities),
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm24",
        "translation": {"language": cfg.languages.target},
    }
    voice = cfg.voice
    if voice is not None and "audio" in cfg.modalities:
        session["voice"] = voice
    if cfg.output.source_captions:
        session["input_audio_transcription"] = {"model": ASR_MODEL, "language": cfg.languages.source}
    return session


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


def image_tokens(width: int, height: int) -> float:
    """The service bills 0.5 token per 28x28 pixels of image."""
    return 0.5 * (-(-max(width, 0) // 28)) * (-(-max(height, 0) // 28))


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


def usage(event: dict[str, Any]) -> UsageDelta | None:
    """``response.done.response.usage``, or None when the event carries none."""
    response = event.get("response")
    raw = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(raw, dict):
        return None

    def tokens(details: str, name: str) -> int:
        block = raw.get(details)
        value = block.get(name, 0) if isinstance(block, dict) else 0
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return UsageDelta(
        input_audio_tokens=tokens("input_tokens_details", "audio_tokens"),
        input_text_tokens=tokens("input_tokens_details", "text_tokens"),
        output_audio_tokens=tokens("output_tokens_details", "audio_tokens"),
        output_text_tokens=tokens("output_tokens_details", "text_tokens"),
    )


# --- captions ---------------------------------------------------------------------------------

_SNAPSHOT = {
    "response.audio_transcript.text": "translation",
    "response.text.text": "translation",
    "conversation.item.input_audio_transcription.text": "source",
}
_MAX_OPEN_UTTERANCES = 32
_FINAL = {
    "response.audio_transcript.done": ("translation", "transcript"),
    "response.text.done": ("translation", "text"),
    "conversation.item.input_audio_transcription.completed": ("source", "transcript"),
}


class CaptionAssembler:
    """Turns transcript events into Caption messages.

    qwen3 gives no link between a source transcription and its translation, so they are paired
    by arrival order: the n-th source item and the n-th response are utterance n. Each caption
    replaces the previous one of its utterance and kind; a final one closes it.
    """

    def __init__(self, source: str, target: str) -> None:
        self.source = source
        self.target = target
        self._counters = {"source": 0, "translation": 0}
        self._utterance: dict[tuple[str, str], str] = {}
        self._last: dict[tuple[str, str], tuple[str, str]] = {}

    def new_session(self) -> None:
        """A new connection: what was pending is gone, and both kinds restart side by side."""
        top = max(self._counters.values())
        self._counters = dict.fromkeys(self._counters, top)
        self._utterance.clear()
        self._last.clear()

    def feed(self, event: dict[str, Any]) -> Caption | None:
        kind_type = event["type"]
        if kind_type in _SNAPSHOT:
            kind = _SNAPSHOT[kind_type]
            key = (kind, self._key(event, kind))
            text, stash = text_field(event, "text"), text_field(event, "stash")
            self._last[key] = (text, stash)
            return self._caption(event, kind, key, text, stash, final=False)
        if kind_type == "response.audio_transcript.delta":
            # An early server build sent deltas (field ``delta`` or ``transcript``): append those.
            key = ("translation", self._key(event, "translation"))
            piece = text_field(event, "delta") or text_field(event, "transcript")
            text = self._last.get(key, ("", ""))[0] + piece
            self._last[key] = (text, "")
            return self._caption(event, "translation", key, text, "", final=False)
        if kind_type in _FINAL:
            kind, field = _FINAL[kind_type]
            key = (kind, self._key(event, kind))
            text = text_field(event, field)
            if not text.strip():
                last_text, last_stash = self._last.get(key, ("", ""))
                text = last_text + last_stash
            self._last.pop(key, None)
            caption = self._caption(event, kind, key, text, "", final=True)
            self._utterance.pop(key, None)
            return caption
        return None

    def _key(self, event: dict[str, Any], kind: str) -> str:
        # Translations are keyed by response; source transcriptions by their item.
        ident = (event.get("response_id") or event.get("item_id")) if kind == "translation" else event.get("item_id")
        return ident if isinstance(ident, str) and ident else "?"

    def _caption(
        self, event: dict[str, Any], kind: str, key: tuple[str, str], text: str, stash: str, final: bool
    ) -> Caption:
        utterance = self._utterance.get(key)
        if utterance is None:
            self._counters[kind] += 1
            utterance = f"u{self._counters[kind]}"
            self._utterance[key] = utterance
            # Utterances whose final never came (a dropped response) must not pile up.
            while len(self._utterance) > _MAX_OPEN_UTTERANCES:
                stale = next(iter(self._utterance))
                self._utterance.pop(stale)
                self._last.pop(stale, None)
        language = self.target
        if kind == "source":
            reported = event.get("language")
            language = reported if isinstance(reported, str) and reported else self.source
        return Caption(utterance=utterance, kind=kind, text=text, stash=stash, final=final, language=language)
