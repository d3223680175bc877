"""Every message that travels on tolk's bus, in one module imported by every process.

Wire form (ZeroMQ multipart): ``[topic, header, payload?]``.

- ``topic``: ASCII, the SUB filter (``b"audio.in"``).
- ``header``: compact JSON: ``v`` (protocol version), ``seq`` (per-publisher, per-topic
  sequence number), ``t`` (``time.monotonic_ns()`` when the thing happened: the end of a
  capture period, a delta's arrival) and the message's own small fields.
- ``payload``: raw bytes for bulk messages (PCM, JPEG); never base64 on the bus.

``CLOCK_MONOTONIC`` is shared by all processes of one boot, so ``t`` stamps compare across
processes and measure the box's own latency.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal, Self

PROTOCOL_VERSION = 1

#: A process's lifecycle state, as its heartbeat says it (daemon/service.py).
ProcessState = Literal["starting", "ready", "running", "degraded", "stopping", "stopped", "failed"]
#: The operator's commands; the process named in services/control/commands.CARRIERS answers each.
CommandName = Literal["mute", "unmute", "speaker-test", "restart-session", "direction", "visitor-language"]


class Channel(Enum):
    """Bulk data and small control/state messages use separate sockets: a mute never queues behind audio."""

    BULK = "bulk"
    STATE = "state"


class MessageError(ValueError):
    """Frames that are not a message of this protocol version."""


_REGISTRY: dict[bytes, type[Message]] = {}


@dataclass(kw_only=True)
class Message:
    topic: ClassVar[str]
    channel: ClassVar[Channel] = Channel.STATE
    payload_field: ClassVar[str | None] = None

    seq: int = 0
    t: int = field(default_factory=time.monotonic_ns)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        topic = cls.__dict__.get("topic")
        if topic is not None:
            key = topic.encode("ascii")
            if key in _REGISTRY:
                raise TypeError(f"topic {topic!r} defined twice")
            _REGISTRY[key] = cls

    def to_frames(self) -> list[bytes]:
        spec = _spec(type(self))
        header: dict[str, Any] = {"v": PROTOCOL_VERSION}
        for name in spec.header:
            header[name] = getattr(self, name)
        frames = [spec.topic, _ENCODER.encode(header).encode()]
        if self.payload_field is not None:
            frames.append(bytes(getattr(self, self.payload_field)))
        return frames

    @classmethod
    def from_frames(cls, frames: list[bytes]) -> Self:
        """Decode frames; on the base class, dispatch on the topic. Raises MessageError."""
        if len(frames) < 2:
            raise MessageError(f"expected at least 2 frames, got {len(frames)}")
        target = _REGISTRY.get(bytes(frames[0]))
        if target is None:
            raise MessageError(f"unknown topic {bytes(frames[0])[:40]!r}")
        if not issubclass(target, cls):
            raise MessageError(f"topic {target.topic!r} is not a {cls.__name__}")
        try:
            header = json.loads(frames[1])
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"{target.topic}: header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise MessageError(f"{target.topic}: header is not an object")
        version = header.pop("v", None)
        if version != PROTOCOL_VERSION:
            raise MessageError(f"{target.topic}: protocol version {version!r}, expected {PROTOCOL_VERSION}")
        if target.payload_field is not None:
            if len(frames) != 3:
                raise MessageError(f"{target.topic}: expected a payload frame")
            header[target.payload_field] = bytes(frames[2])
        elif len(frames) != 2:
            raise MessageError(f"{target.topic}: unexpected payload frame")
        known = _spec(target).names
        try:
            msg = target(**{k: v for k, v in header.items() if k in known})
        except TypeError as exc:
            raise MessageError(f"{target.topic}: {exc}") from None
        msg._check_types()
        return msg

    def _check_types(self) -> None:
        for name, declared, expected in _spec(type(self)).checks:
            value = getattr(self, name)
            if not isinstance(value, expected):
                raise MessageError(f"{self.topic}: field {name} has {type(value).__name__}, expected {declared}")
            if isinstance(value, bool) and declared == "int":
                raise MessageError(f"{self.topic}: field {name} is a bool, expected int")


@dataclass(frozen=True)
class _Spec:
    """What encoding and decoding need of a message class, worked out once (dataclasses.fields is slow)."""

    topic: bytes
    names: frozenset[str]
    header: tuple[str, ...]  # the fields that go in the JSON header, in order
    checks: tuple[tuple[str, str, type | tuple[type, ...]], ...]  # (field, declared type, isinstance arg)


def _spec(cls: type[Message]) -> _Spec:
    if (known := _SPECS.get(cls)) is not None:
        return known
    fields = dataclasses.fields(cls)
    checks = tuple((f.name, str(f.type), _SIMPLE_TYPES[str(f.type)]) for f in fields if str(f.type) in _SIMPLE_TYPES)
    spec = _SPECS[cls] = _Spec(
        topic=cls.topic.encode("ascii"),
        names=frozenset(f.name for f in fields),
        header=tuple(f.name for f in fields if f.name != cls.payload_field),
        checks=checks,
    )
    return spec


_SPECS: dict[type[Message], _Spec] = {}


_ENCODER = json.JSONEncoder(separators=(",", ":"))


_SIMPLE_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "str": str,
    "bool": bool,
    "bytes": bytes,
    "float": (int, float),
    "str | None": (str, type(None)),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
    "dict[str, Any]": dict,
    "dict[str, Any] | None": (dict, type(None)),
    "dict[str, float]": dict,
    "list[str]": list,
}


def topic_of(cls: type[Message]) -> bytes:
    return cls.topic.encode("ascii")


# --- audio -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class AudioIn(Message):
    """One capture period, 16 kHz mono S16_LE. ``t`` is the end of the period."""

    topic = "audio.in"
    channel = Channel.BULK
    payload_field = "pcm"

    pcm: bytes = b""
    rate: int = 16000
    muted: bool = False


@dataclass(kw_only=True)
class AudioOut(Message):
    """Translated speech, 24 kHz mono S16_LE. ``t`` is when the delta arrived from the service."""

    topic = "audio.out"
    channel = Channel.BULK
    payload_field = "pcm"

    pcm: bytes = b""
    rate: int = 24000
    response_id: str = ""


@dataclass(kw_only=True)
class RenderedAudio(Message):
    """What playback handed the speaker, 24 kHz mono S16_LE: the echo canceller's reference.

    ``t`` is when its first sample plays (handed to the device plus what the device still held
    then, ``delay_ms``), so capture can line it up with the microphone's own ``t`` stamps.
    An empty ``pcm`` ends a run of continuous playing (the answer ended, or the device ran dry).
    """

    topic = "audio.rendered"
    channel = Channel.BULK
    payload_field = "pcm"

    pcm: bytes = b""
    rate: int = 24000
    delay_ms: float = 0.0


@dataclass(kw_only=True)
class VideoFrame(Message):
    """A JPEG worth sending. ``t`` is the capture time."""

    topic = "video.frame"
    channel = Channel.BULK
    payload_field = "jpeg"

    jpeg: bytes = b""
    width: int = 0
    height: int = 0


@dataclass(kw_only=True)
class SpeechActivity(Message):
    """Capture's view of whether someone is speaking; ``t`` is the end of the period it was heard in.

    ``over_answer``: capture already knew the box was playing an answer when this speech began.
    Only such speech is someone breaking in (a barge-in): an onset capture heard before it knew is
    the speech being answered, or the answer's first echo, reaching playback late.
    """

    topic = "speech"
    speaking: bool = False
    over_answer: bool = False


@dataclass(kw_only=True)
class EchoState(Message):
    """Capture's echo canceller (``[audio] echo = "aec"``), sent with each of its heartbeats.

    Seconds and counts are cumulative since capture started; docs/echo.md says what each measures.
    """

    topic = "echo"
    cancelling: bool = False  # false on another echo setting, or when the canceller could not start
    erle_db: float | None = None  # over the last seconds when only the box spoke; None until measured
    far_s: float = 0.0  # the box spoke
    double_talk_s: float = 0.0  # of that, someone spoke over it
    double_talk_ratio: float = 0.0
    onset_guard_s: float = 0.0  # sent as silence at the start of answers
    residual_s: float = 0.0  # only the echo's residue was left: silence to the VAD
    resyncs: int = 0  # the reference laid anew on the microphone's timeline
    reference_late_s: float = 0.0  # the speaker's reference that came after its time had passed


@dataclass(kw_only=True)
class PlaybackState(Message):
    """``started``: the first sample reached the device; ``drained``: the device played everything;
    ``interrupted``: a barge-in stopped ``response_id``, and the rest of it will not play.

    ``pid`` is the playback process's: a new one ends any mute its predecessor began.
    """

    topic = "playback"
    state: str = "drained"
    response_id: str = ""
    frames: int = 0
    underruns: int = 0
    pid: int = 0


# --- session ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Caption(Message):
    """One caption update. ``kind`` is ``source`` or ``translation``; a final one replaces all partials."""

    topic = "caption"
    utterance: str = ""
    kind: str = "translation"
    text: str = ""
    stash: str = ""
    final: bool = False
    language: str = ""


@dataclass(kw_only=True)
class SessionStatus(Message):
    """The realtime session's state: connecting, configuring, live, backoff, failed, stopped."""

    topic = "session.state"
    state: str = "connecting"
    detail: str = ""
    last_error: str = ""
    reconnects: int = 0
    session_id: str = ""
    backlog_dropped: int = 0  # audio chunks dropped from the backlog while disconnected
    model: str = ""
    backend: str = ""  # "cloud", "local", or "local-fallback" (the engine while the cloud is unreachable)
    #: The language it translates into now (a visitor's choice, or a conversation's direction).
    target: str = ""


@dataclass(kw_only=True)
class Usage(Message):
    """Tokens used since the session process started, summed over every response.done."""

    topic = "usage"
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0
    image_tokens_estimate: int = 0
    audio_seconds_sent: float = 0.0
    input_tokens: int = 0  # as reported (audio + text); images are in image_tokens_estimate
    output_tokens: int = 0
    images_sent: int = 0
    tokens_per_hour: float = 0.0  # input + output + images, at the rate of the last hour
    cost_per_hour: float | None = None  # at [service] price_per_million_*; None when no price is set


# --- audio that survives a session crash (docs/session.md) ----------------------------------


@dataclass(kw_only=True)
class AudioSettled(Message):
    """The session: capture's audio up to ``through_seq`` (``AudioIn.seq``) needs no replay.

    Settled means the service answered it, or it was quiet, or it was given up as too old;
    audio only sent is not settled (a lost connection takes the service's half of it along).
    """

    topic = "audio.settled"
    through_seq: int = 0


@dataclass(kw_only=True)
class AudioResume(Message):
    """A session that just started asks capture for what is not settled yet (repeated until answered)."""

    topic = "audio.resume"


@dataclass(kw_only=True)
class AudioReplay(Message):
    """Capture's answer to ``AudioResume``: ``periods`` periods it published as ``AudioIn``, of
    equal length and consecutive from seq ``of_seq``, joined (a replay of 15 s is 15 messages, not
    750: a burst past the bulk socket's high-water mark would be dropped).

    Sent on the bulk socket in order, before the next live ``AudioIn``. ``replay`` numbers each
    replay; its first message has ``first`` set, its last ``last`` (and no audio when there was
    nothing to replay: ``of_seq`` is then the latest). A session that missed a replay's first
    message waits for the next one, whole.
    """

    topic = "audio.replay"
    channel = Channel.BULK
    payload_field = "pcm"

    pcm: bytes = b""
    rate: int = 16000
    of_seq: int = 0
    periods: int = 0
    replay: int = 0
    first: bool = False
    last: bool = False


# --- every process ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Heartbeat(Message):
    """Sent by every service every 2 s, and at once on a change worth seeing (capture: a mute's
    edges); control marks a service down when they stop."""

    topic = "heartbeat"
    service: str = ""
    pid: int = 0
    state: ProcessState = "starting"
    status: str = ""
    counters: dict[str, float] = field(default_factory=dict)


#: In ``ConfigChanged.sections``: the API key changed (it is not a section of the config).
KEY_SECTION = "key"


@dataclass(kw_only=True)
class ConfigChanged(Message):
    """The stored config changed: each service re-reads it and applies what concerns it.

    ``config`` is the merged config control validated (``daemon.config.validated_data``) from the
    files ``base`` names (``daemon.config.layers_named``): a process that reads the same files takes
    it as it is instead of validating it again (daemon/config_model.py).
    """

    topic = "config"
    sections: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    base: str = ""


@dataclass(kw_only=True)
class Command(Message):
    """An operator's command (``CommandName``); its arguments in ``args``."""

    topic = "command"
    name: CommandName | Literal[""] = ""
    args: dict[str, Any] = field(default_factory=dict)
    #: Names the command in the ``CommandAck`` of the process that carries it out ("": nobody waits).
    id: str = ""


@dataclass(kw_only=True)
class CommandAck(Message):
    """The process that carries a command out says it did (``ok``), or why it could not."""

    topic = "ack"
    id: str = ""
    name: str = ""
    ok: bool = True
    detail: str = ""


# --- the fleet (the mqtt process) ------------------------------------------------------------
# Topics are ZeroMQ prefix filters: none may begin with another's name ("config", "command").


@dataclass(kw_only=True)
class RemotePatch(Message):
    """A config change from the fleet's broker, shaped as a ``PATCH /api/config`` body: control
    validates and stores it as it does that request, and answers with a ``RemoteAnswer``."""

    topic = "remote.patch"
    id: str = ""
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RemoteCommand(Message):
    """An operator's command from the fleet's broker: control sends it to the process that carries
    it out, as for the HTTP API, and answers with that process's word in a ``RemoteAnswer``."""

    topic = "remote.command"
    id: str = ""
    name: CommandName | Literal[""] = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class RemoteAnswer(Message):
    """Control's answer to a ``RemotePatch`` or ``RemoteCommand`` of the same ``id``.

    ``ok`` false: nothing changed; ``error`` says what kind of refusal, ``problems`` one line per
    reason (as the HTTP API's error bodies). ``changed``: the config sections a patch changed.
    """

    topic = "remote.answer"
    id: str = ""
    ok: bool = True
    detail: str = ""
    error: str = ""
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class FleetBudget(Message):
    """The fleet's budget of new sessions, for the session (``[mqtt] fleet_topic``; repeated).

    ``sessions_per_minute`` 0: no budget is set. ``boxes``: the fleet's size, ``rank``: this
    box's place among them by box id (services/session/pacing.py shares the minute out by it).
    """

    topic = "fleet.budget"
    sessions_per_minute: float = 0.0
    boxes: int = 1
    rank: int = 0


ALL_MESSAGES: tuple[type[Message], ...] = tuple(_REGISTRY.values())
