"""The documented rules for client events (protocol.md 2-4, 6), checked one connection at a time.

``ClientRules.check`` takes one received frame and returns the accepted event, or raises
``Rejected`` carrying the ``error`` the service documents for it (protocol.md 2.3/5.5). The rules
hold the client to the documentation, not to what a lenient server might let through: known
event types and fields only, a unique string ``event_id`` on every event, strict plain base64,
audio only after ``session.updated``, images only after the first audio append (JPEG, at most
500 KB, at most 2 per second), and nothing after ``session.finish``.

``ClientRules(profile)`` holds the client to that model's session shape and tables
(``daemon/realtime/profiles.py``): qwen3's flat fields; qwen3.5's additions (protocol.md 2.4);
qwen3.8's nested session, where a flat key is refused (8b); Omni's list (9): ``instructions`` and
``turn_detection`` in the session, no ``translation`` or ``input_audio_transcription``, the
manual-turn events, and no ``session.finish`` (the service answers it with "invalid event type").
``view()`` reads any of these shapes as what the responder needs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from daemon import languages as lang
from daemon.realtime.profiles import OMNI_MODEL, PROFILES, SEED_MODEL, ModelProfile, profile_for

ASR_MODEL = "qwen3-asr-flash-realtime"
MAX_IMAGE_BYTES = 500_000
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGES_PER_S = 2
#: Network jitter can bring a client's evenly spaced images slightly closer together.
IMAGE_WINDOW_TOLERANCE_S = 0.05
#: Event ids remembered for the uniqueness check (about 3 hours of 100 ms appends).
REMEMBERED_IDS = 100_000

EVENT_FIELDS: dict[str, frozenset[str]] = {
    "session.update": frozenset({"event_id", "type", "session"}),
    "input_audio_buffer.append": frozenset({"event_id", "type", "audio"}),
    "input_image_buffer.append": frozenset({"event_id", "type", "image"}),
    "session.finish": frozenset({"event_id", "type"}),
}
SESSION_FIELDS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "input_audio_transcription",
        "translation",
    }
)
OMNI_EVENT_FIELDS: dict[str, frozenset[str]] = {
    "session.update": EVENT_FIELDS["session.update"],
    "input_audio_buffer.append": EVENT_FIELDS["input_audio_buffer.append"],
    "input_image_buffer.append": EVENT_FIELDS["input_image_buffer.append"],
    "input_audio_buffer.commit": frozenset({"event_id", "type"}),
    "input_audio_buffer.clear": frozenset({"event_id", "type"}),
    "response.create": frozenset({"event_id", "type"}),
    "response.cancel": frozenset({"event_id", "type"}),
}
OMNI_SESSION_FIELDS = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "instructions",
        "turn_detection",
        "smooth_output",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "repetition_penalty",
        "presence_penalty",
        "seed",
    }
)
QWEN35_SESSION_FIELDS = SESSION_FIELDS | {"sample_rate", "turn_detection", "enable_voice_clone", "voice_clone_options"}
NESTED_SESSION_FIELDS = frozenset(
    {"output_modalities", "audio", "translation", "voice", "enable_voice_clone", "voice_clone_options"}
)
_NESTED_HINT = (
    "is qwen3's flat shape; qwen3.8 takes output_modalities, audio.input.format, "
    "audio.input.turn_detection and translation"
)
_UNDOCUMENTED = {
    "turn_detection": "turn_detection is not documented for qwen3 (the service finds turns); leave it out",
    "instructions": "instructions are not part of the LiveTranslate session",
}


class Rejected(Exception):
    """A client event the service would answer with an ``error``."""

    def __init__(self, message: str, code: str = "invalid_value", param: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = ""

    def __str__(self) -> str:
        return self.message


def default_session(profile: ModelProfile | None = None) -> dict[str, Any]:
    """What ``session.created`` reports before any update (protocol.md 5.1, 8b, 9)."""
    profile = profile or PROFILES[SEED_MODEL]
    if profile.shape == "nested":
        return {
            "input_modalities": ["audio", "image"],
            "output_modalities": ["text", "audio"],
            "audio": {
                "input": {
                    "format": {"type": "pcm", "sample_rate": 16000},
                    "turn_detection": {"type": "speaker_detection", "threshold": 0.5},
                },
                "output": {"format": {"type": "pcm", "sample_rate": 24000}, "voice": "Tina"},
            },
            "translation": {"language": "en"},
        }
    session: dict[str, Any] = {
        "modalities": ["text", "audio"],
        "voice": profile.default_voice or lang.DEFAULT_VOICE,
        "input_audio_format": "pcm" if profile.shape == "flat35" else "pcm16",
        "output_audio_format": "pcm" if profile.shape == "flat35" else "pcm24",
    }
    if profile.family == "omni":
        return session | {"instructions": "", "turn_detection": dict(profile.turn_detection or {})}
    if profile.shape == "flat35":
        session["input_audio_transcription"] = {"model": ASR_MODEL}
    return session | {"translation": {"language": "en"}}


@dataclass(frozen=True)
class SessionView:
    """A session in any shape, as the responder needs it."""

    modalities: list[str]
    voice: str | None
    #: The source language the client named (None: the service detects it).
    source: str | None
    target: str
    #: Source text is sent (``conversation.item.input_audio_transcription.*``).
    transcribe: bool


def strict_base64(value: Any, param: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise Rejected(f"{param} must be a non-empty base64 string", param=param)
    if value.startswith("data:"):
        raise Rejected(f"{param} is a data: URL; send plain base64", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(f"{param} is not valid base64: {exc}", param=param) from None


@dataclass
class Accepted:
    event: dict[str, Any]
    payload: bytes = b""


def session_view(profile: ModelProfile, session: dict[str, Any]) -> SessionView:
    translation = session.get("translation") or {}
    target = translation.get("language", "en")
    voice = session.get("voice")
    if profile.shape == "nested":
        output = (session.get("audio") or {}).get("output") or {}
        return SessionView(list(session["output_modalities"]), voice or output.get("voice"), None, target, True)
    asr = session.get("input_audio_transcription")
    if profile.shape == "flat35":
        transcribe = asr is None or asr.get("model") is not None
        source = (asr or {}).get("language")
    else:
        transcribe = asr is not None and profile.family != "omni"
        source = (asr or {}).get("language", "en") if transcribe else None
    return SessionView(list(session["modalities"]), voice, source, target, transcribe)


@dataclass
class ClientRules:
    profile: ModelProfile = field(default_factory=lambda: PROFILES[SEED_MODEL])
    session: dict[str, Any] = field(default_factory=dict)
    explicit_voice: bool = False
    updated: bool = False
    audio_appends: int = 0
    finished: bool = False
    _ids: set[str] = field(default_factory=set)
    _id_order: deque[str] = field(default_factory=deque)
    _image_times: deque[float] = field(default_factory=lambda: deque(maxlen=IMAGES_PER_S))
    _before_update: tuple[dict[str, Any], bool, bool] | None = None

    def __post_init__(self) -> None:
        if not self.session:
            self.session = default_session(self.profile)

    @classmethod
    def for_model(cls, model: str) -> ClientRules:
        return cls(profile_for(model))

    @property
    def omni(self) -> bool:
        return self.profile.name == OMNI_MODEL

    def view(self) -> SessionView:
        return session_view(self.profile, self.session)

    def check(self, raw: str | bytes, now: float) -> Accepted:
        """The accepted event and its decoded payload; raises Rejected."""
        if isinstance(raw, bytes):
            raise Rejected(
                f"binary frame of {len(raw)} bytes: events are JSON text frames", code="invalid_frame"
            )
        try:
            event = json.loads(raw)
        except ValueError as exc:
            raise Rejected(f"not JSON: {exc}", code="invalid_json") from None
        if not isinstance(event, dict):
            raise Rejected(f"an event is a JSON object, not {type(event).__name__}", code="invalid_json")
        event_id = event.get("event_id")
        self._check_id(event_id)
        try:
            return self._check_event(event, now)
        except Rejected as exc:
            exc.event_id = event_id if isinstance(event_id, str) else ""
            raise

    def _check_id(self, event_id: Any) -> None:
        if event_id is None:
            raise Rejected("event_id is missing", code="missing_required_parameter", param="event_id")
        if not isinstance(event_id, str) or not event_id:
            raise Rejected("event_id must be a non-empty string", param="event_id")
        if event_id in self._ids:
            raise Rejected(
                f"event_id {event_id[:80]!r} was already used", code="duplicate_event_id", param="event_id"
            )
        self._ids.add(event_id)
        self._id_order.append(event_id)
        if len(self._id_order) > REMEMBERED_IDS:
            self._ids.discard(self._id_order.popleft())

    def _check_event(self, event: dict[str, Any], now: float) -> Accepted:
        kind = event.get("type")
        if self.finished:
            raise Rejected(
                f"{kind!r} after session.finish: the client must only disconnect", code="invalid_state"
            )
        known = OMNI_EVENT_FIELDS if self.omni else EVENT_FIELDS
        if not isinstance(kind, str) or kind not in known:
            raise Rejected(f"invalid event type {kind!r}", code="invalid_event_type", param="type")
        fields = known[kind]
        unknown = sorted(set(event) - fields)
        if unknown:
            raise Rejected(f"{kind}: unknown field(s) {', '.join(unknown)}", param=unknown[0])
        missing = sorted(fields - set(event))
        if missing:
            raise Rejected(
                f"{kind}: missing {', '.join(missing)}", code="missing_required_parameter", param=missing[0]
            )
        if kind == "session.update":
            self._session_update(event["session"])
            return Accepted(event)
        if kind == "input_audio_buffer.append":
            return Accepted(event, self._audio(event["audio"]))
        if kind == "input_image_buffer.append":
            return Accepted(event, self._image(event["image"], now))
        if kind == "session.finish":
            self.finished = True
        return Accepted(event)

    def _audio(self, value: Any) -> bytes:
        if not self.updated:
            raise Rejected("audio before session.updated: wait for it", code="invalid_state", param="audio")
        pcm = strict_base64(value, "audio")
        if len(pcm) % 2:
            raise Rejected(f"audio of {len(pcm)} bytes is not whole 16-bit samples", param="audio")
        self.audio_appends += 1
        return pcm

    def _image(self, value: Any, now: float) -> bytes:
        if not self.audio_appends:
            raise Rejected(
                "image before the first input_audio_buffer.append", code="invalid_state", param="image"
            )
        jpeg = strict_base64(value, "image")
        if not jpeg.startswith(JPEG_MAGIC):
            raise Rejected("image is not a JPEG (JPG/JPEG only)", code="invalid_image_format", param="image")
        if len(jpeg) > MAX_IMAGE_BYTES:
            raise Rejected(f"image of {len(jpeg)} bytes is over {MAX_IMAGE_BYTES} bytes", param="image")
        times = self._image_times
        if len(times) == IMAGES_PER_S and now - times[0] < 1.0 - IMAGE_WINDOW_TOLERANCE_S:
            raise Rejected(
                f"more than {IMAGES_PER_S} images per second", code="rate_limit_exceeded", param="image"
            )
        times.append(now)
        return jpeg

    def _session_update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise Rejected("session must be an object", param="session")
        shape = self.profile.shape
        allowed = (
            OMNI_SESSION_FIELDS
            if self.omni
            else {"flat": SESSION_FIELDS, "flat35": QWEN35_SESSION_FIELDS, "nested": NESTED_SESSION_FIELDS}[shape]
        )
        for key in session:
            if shape == "nested" and key in SESSION_FIELDS | OMNI_SESSION_FIELDS and key not in allowed:
                raise Rejected(f"session.{key} {_NESTED_HINT}", code="unknown_parameter", param=f"session.{key}")
            if key in _UNDOCUMENTED and key not in allowed:
                raise Rejected(_UNDOCUMENTED[key], code="unknown_parameter", param=f"session.{key}")
            if key not in allowed:
                raise Rejected(
                    f"unknown session field {key!r}", code="unknown_parameter", param=f"session.{key}"
                )
        merged = copy.deepcopy(self.session)
        for key, value in session.items():
            if self.omni:
                _check_omni_field(key, value)
            elif shape == "nested":
                _check_nested_field(key, value, self.profile)
            else:
                _check_session_field(key, value, self.profile)
            if key == "audio" and isinstance(merged.get("audio"), dict):
                merged["audio"] = {**merged["audio"], **copy.deepcopy(value)}  # output stays the service's
            else:
                merged[key] = copy.deepcopy(value)
        explicit_voice = self.explicit_voice or "voice" in session
        if not self.omni:
            _check_combination(self.profile, merged, explicit_voice)
        self._before_update = (self.session, self.explicit_voice, self.updated)
        self.session, self.explicit_voice, self.updated = merged, explicit_voice, True

    def undo_update(self) -> None:
        """Back to the session before the last ``session.update`` taken (a server refusing it after all)."""
        if self._before_update is not None:
            self.session, self.explicit_voice, self.updated = self._before_update
            self._before_update = None


def _check_session_field(key: str, value: Any, profile: ModelProfile) -> None:
    param = f"session.{key}"
    qwen35 = profile.shape == "flat35"
    table = profile.languages
    if key in ("modalities", "output_modalities"):
        ok = isinstance(value, list) and all(isinstance(m, str) for m in value)
        if not ok or len(value) != len(set(value)) or sorted(value) not in (["text"], ["audio", "text"]):
            raise Rejected(
                f"Invalid modalities: {value!r}. Supported combinations are: ['text'] and ['audio', 'text'].",
                param=param,
            )
    elif key == "voice":
        if value not in profile.voices:
            raise Rejected(f"unknown voice {value!r}: voices are {', '.join(profile.voices)}", param=param)
    elif key == "input_audio_format":
        allowed = ("pcm", "opus") if qwen35 else ("pcm16",)
        if value not in allowed:
            raise Rejected(f"input_audio_format {value!r}: {profile.label} takes {' or '.join(allowed)}", param=param)
    elif key == "output_audio_format":
        wanted = "pcm" if qwen35 else "pcm24"
        if value != wanted:
            raise Rejected(f"output_audio_format {value!r}: {profile.label} takes only {wanted!r}", param=param)
    elif key == "input_audio_transcription":
        _check_object(value, {"model", "language"}, param)
        model = value.get("model", ASR_MODEL if qwen35 else None)
        if model != ASR_MODEL and not (qwen35 and model is None):
            off = " (or null: no source text)" if qwen35 else ""
            raise Rejected(f"{param}.model must be {ASR_MODEL!r}{off}", param=f"{param}.model")
        if "language" in value and value["language"] not in table.sources:
            raise Rejected(f"unsupported source language {value['language']!r}", param=f"{param}.language")
    elif key == "translation":
        _check_object(value, {"language", "corpus"}, param)
        if "language" in value and value["language"] not in table.targets:
            raise Rejected(f"unsupported target language {value['language']!r}", param=f"{param}.language")
        if "corpus" in value:
            _check_corpus(value["corpus"], f"{param}.corpus")
    elif key == "sample_rate":
        if value not in (8000, 16000):
            raise Rejected(f"{param} {value!r}: 8000 or 16000", param=param)
    elif key == "turn_detection":
        _check_server_vad(value, param, silence_range=(200, 6000))
    elif key == "enable_voice_clone":
        if not isinstance(value, bool):
            raise Rejected(f"{param} must be true or false", param=param)
    elif key == "voice_clone_options":
        _check_object(value, {"frequency"}, param)
        if value.get("frequency") not in ("never", "once", "always"):
            raise Rejected(f"{param}.frequency must be never, once or always", param=f"{param}.frequency")


def _check_nested_field(key: str, value: Any, profile: ModelProfile) -> None:
    """qwen3.8's nested session (protocol.md 8b): each object holds only its documented keys."""
    param = f"session.{key}"
    if key != "audio":
        _check_session_field(key, value, profile)
        return
    _check_object(value, {"input", "output"}, param)
    audio_in = value.get("input", {})
    _check_object(audio_in, {"format", "turn_detection"}, f"{param}.input")
    fmt = audio_in.get("format", {"type": "pcm", "sample_rate": 16000})
    _check_object(fmt, {"type", "sample_rate"}, f"{param}.input.format")
    if fmt.get("type") != "pcm" or fmt.get("sample_rate", 16000) not in (8000, 16000):
        raise Rejected(
            f"{param}.input.format {fmt!r}: type 'pcm' at 16000 (or 8000) Hz", param=f"{param}.input.format"
        )
    turns = audio_in.get("turn_detection")
    if turns is not None:
        _check_object(turns, {"type", "threshold"}, f"{param}.input.turn_detection")
        threshold = turns.get("threshold", 0.5)
        if turns.get("type") != "speaker_detection" or not _number_in(threshold, 0.0, 1.0):
            raise Rejected(
                f"{param}.input.turn_detection {turns!r}: type 'speaker_detection', threshold in [0, 1]",
                param=f"{param}.input.turn_detection",
            )
    if "output" in value:
        _check_object(value["output"], {"voice"}, f"{param}.output")
        if "voice" in value["output"]:
            _check_session_field("voice", value["output"]["voice"], profile)


def _number_in(value: Any, low: float, high: float) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and low <= value <= high


def _check_server_vad(value: Any, param: str, silence_range: tuple[int, int] = (1, 6000)) -> None:
    if value is None:
        return  # manual turns
    _check_object(value, {"type", "threshold", "silence_duration_ms", "prefix_padding_ms"}, param)
    if value.get("type") != "server_vad":
        raise Rejected(f"{param}.type must be 'server_vad'", param=f"{param}.type")
    if not _number_in(value.get("threshold", 0.5), -1, 1):
        raise Rejected(f"{param}.threshold must be a number in [-1, 1]", param=f"{param}.threshold")
    silence = value.get("silence_duration_ms", 800)
    low, high = silence_range
    if isinstance(silence, bool) or not isinstance(silence, int) or not low <= silence <= high:
        raise Rejected(f"{param}.silence_duration_ms must be whole ms in [{low}, {high}]", param=param)


def _check_omni_field(key: str, value: Any) -> None:
    param = f"session.{key}"
    if key == "instructions":
        if not isinstance(value, str) or not value.strip():
            raise Rejected(f"{param} must be a non-empty string", param=param)
    elif key == "turn_detection":
        _check_server_vad(value, param)
    elif key in ("modalities", "voice", "input_audio_format", "output_audio_format"):
        _check_session_field(key, value, PROFILES[OMNI_MODEL])


def _check_object(value: Any, allowed: set[str], param: str) -> None:
    if not isinstance(value, dict):
        raise Rejected(f"{param} must be an object", param=param)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise Rejected(
            f"{param}: unknown field(s) {', '.join(unknown)}", code="unknown_parameter", param=param
        )


def _check_corpus(corpus: Any, param: str) -> None:
    _check_object(corpus, {"phrases"}, param)
    phrases = corpus.get("phrases", {})
    if not isinstance(phrases, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in phrases.items()
    ):
        raise Rejected(f"{param}.phrases must map source terms to target terms", param=f"{param}.phrases")


def _check_combination(profile: ModelProfile, session: dict[str, Any], explicit_voice: bool) -> None:
    view = session_view(profile, session)
    target = view.target
    if "audio" not in view.modalities:
        return
    field = "output_modalities" if profile.shape == "nested" else "modalities"
    if target not in profile.languages.speech:
        raise Rejected(
            f"target language {target!r} supports text output only on {profile.label}; use {field} ['text']",
            param=f"session.{field}",
        )
    voice = view.voice or profile.default_voice or ""
    if explicit_voice and target not in profile.voices.get(voice, ()):
        raise Rejected(
            f"voice {voice!r} cannot speak {target!r}; voices for it: {', '.join(profile.voices_for(target))}",
            param="session.voice",
        )
