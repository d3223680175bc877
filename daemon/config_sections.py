"""The sections of tolk's config, one typed model each (``daemon.config`` assembles them).

Every key validates on its own here, with the value and what is allowed in the message;
rules that join two sections (a voice and the target it must speak) live in ``Config``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from daemon.config_model import BaseModel, ConfigDict, Field, field_validator, model_validator
from daemon.realtime import profiles

INTL_URL = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"
#: The host a Model Studio workspace is reached at (the qwen3.8 access guide, protocol.md 8b).
WORKSPACE_URL = "wss://{workspace}.{region}.maas.aliyuncs.com/api-ws/v1/realtime"
DEFAULT_MODEL = profiles.SEED_MODEL
MAX_PHRASES = 500

Modality = Literal["text", "audio"]
_HOST_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (a name other than localhost is never trusted to be)."""
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_code(value: str, allowed: tuple[str, ...] | frozenset[str], what: str) -> str:
    if value in allowed:
        return value
    hint = difflib.get_close_matches(value, list(allowed), n=1)
    maybe = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(f"{value!r} is not a {what}: use one of {', '.join(sorted(allowed))}{maybe}")


class LanguagesConfig(_Section):
    source: str = Field(
        "zh",
        description='Language spoken near the box (a code the model knows); "auto": the model detects it '
        "(qwen3.5 and qwen3.8).",
    )
    target: str = Field("en", description="Language the box translates into.")
    mode: Literal["one-way", "conversation"] = Field(
        "one-way",
        description='"one-way": source → target; "conversation": source and target are the two '
        "sides of a face-to-face exchange, translated both ways.",
    )
    direction: Literal["auto", "a-to-b", "b-to-a"] = Field(
        "auto",
        description='Conversation mode: "auto" follows the language heard; "a-to-b" (source → '
        'target) or "b-to-a" fixes the direction.',
    )
    expect_turns: bool = Field(
        True,
        description="Conversation mode, automatic direction: after each translation expect the other "
        "person to answer and switch ahead; false: stay with the last language heard.",
    )
    direction_buttons: list[int] = Field(
        default_factory=list,
        description="Conversation mode: GPIO pins (BCM) of two hold-to-talk buttons, [source side, "
        "target side], each wired to ground; empty: none (needs gpiozero on a Pi).",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        # Here any model's code; Config checks it against the chosen model's table.
        return _check_code(value, profiles.KNOWN_CODES | {profiles.AUTO}, "language code a model knows")

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        return _check_code(value, profiles.KNOWN_CODES, "language code a model knows")

    @field_validator("direction_buttons")
    @classmethod
    def _two_pins(cls, value: list[int]) -> list[int]:
        if value and (len(value) != 2 or len(set(value)) != 2 or not all(0 <= pin <= 27 for pin in value)):
            raise ValueError(f"{value!r}: give two different GPIO pins (BCM 0-27), [source side, target side], or []")
        return value

    @model_validator(mode="after")
    def _two_sides(self) -> LanguagesConfig:
        if self.mode == "conversation" and self.source == profiles.AUTO:
            raise ValueError('mode = "conversation" needs both languages named: source = "auto" cannot be a side')
        if self.mode == "conversation" and self.source == self.target:
            raise ValueError(
                f"mode = \"conversation\" needs two different languages; source and target are both "
                f"{self.source!r}"
            )
        return self


class OutputConfig(_Section):
    modalities: list[Modality] | None = Field(
        None, description='["text"] or ["text", "audio"]; unset: audio whenever the target has it.'
    )
    voice: str | None = Field(None, description="Voice for translated speech; unset: one that speaks the target.")
    source_captions: bool = Field(True, description="Also show what was said, in the source language.")

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, value: list[Modality] | None) -> list[Modality] | None:
        if value is None:
            return None
        if sorted(set(value)) not in (["text"], ["audio", "text"]) or len(value) != len(set(value)):
            raise ValueError(f'{value!r} is not allowed: use ["text"] or ["text", "audio"]')
        return ["text", "audio"] if "audio" in value else ["text"]

    @field_validator("voice")
    @classmethod
    def _voice(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_code(value, profiles.KNOWN_VOICES, "voice")


class ServiceConfig(_Section):
    backend: Literal["auto", "cloud", "local"] = Field(
        "auto",
        description='"cloud": [service] url; "local": the box\'s own engine ([engine]); '
        '"auto": cloud when an API key is set (or url is on loopback), local otherwise.',
    )
    fallback_after_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description='With "auto" and a key: translate with the box\'s own engine once the cloud has been '
        "unreachable this long, until it answers again; 0: never.",
    )
    url: str = Field(INTL_URL, description="Realtime WebSocket endpoint, without ?model=; wins over workspace.")
    model: str = Field(
        DEFAULT_MODEL,
        description="Model name, sent as ?model=: qwen3-livetranslate-flash-realtime, qwen3.5-… or qwen3.8-…"
        "livetranslate-flash-realtime (or a dated snapshot), or qwen3-omni-flash-realtime.",
    )
    workspace: str | None = Field(
        None, description="Model Studio workspace id: the endpoint becomes the workspace's host (unless url is set)."
    )
    region: str = Field("ap-southeast-1", description="The workspace's region id, e.g. ap-southeast-1, cn-beijing.")
    api_key_file: Path | None = Field(None, description="File holding the API key (else DASHSCOPE_API_KEY).")
    connect_timeout_s: float = Field(10.0, gt=0, le=120)
    finish_timeout_s: float = Field(5.0, gt=0, le=60, description="How long stop waits for session.finished.")
    chunk_ms: int = Field(100, ge=20, le=500, description="Audio per input_audio_buffer.append.")
    backlog_s: float = Field(
        5.0, ge=0.5, le=60, description="Latest audio kept while disconnected and sent first on reconnect."
    )
    stall_timeout_s: float = Field(
        30.0, ge=0, le=600, description="No event this long after speech was sent: reconnect (0: never)."
    )
    rotate_after_s: float = Field(
        6600.0, ge=1, le=7200, description="Open a fresh session at the next pause after this long."
    )
    price_per_million_input_tokens: float | None = Field(
        None, ge=0, description="Your price per million input tokens; unset: no cost estimate."
    )
    price_per_million_output_tokens: float | None = Field(
        None, ge=0, description="Your price per million output tokens; unset: no cost estimate."
    )

    @model_validator(mode="before")
    @classmethod
    def _workspace_url(cls, data: object) -> object:
        """A workspace names the endpoint, unless ``url`` is given too (it wins)."""
        if isinstance(data, dict) and data.get("workspace") and "url" not in data:
            region = data.get("region", cls.model_fields["region"].default)
            if isinstance(region, str) and isinstance(data["workspace"], str):
                return {**data, "url": WORKSPACE_URL.format(workspace=data["workspace"], region=region)}
        return data

    @field_validator("workspace", "region")
    @classmethod
    def _host_label(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_LABEL.match(value):
            raise ValueError(f"{value!r} is not a workspace or region id (lower-case letters, digits and -)")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        profiles.profile_for(value)  # UnknownModel lists the known ones
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"{value!r} is not a WebSocket URL: it must start with wss:// (or ws:// on loopback)")
        if value.startswith("ws://") and not is_loopback(value):
            # The API key travels in the handshake: in clear text only to this box itself.
            raise ValueError(
                f"{value!r} would send the API key in clear text: use wss://, or ws:// only to loopback "
                "(127.0.0.1, ::1, localhost)"
            )
        if "?" in value:
            raise ValueError(f"{value!r} must not carry a query: the model goes in [service] model")
        return value


class TranslationConfig(_Section):
    phrases: dict[str, str] = Field(
        default_factory=dict,
        description='Hotwords: source term -> fixed translation, e.g. {"人工智能" = "Artificial Intelligence"}.',
    )

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_PHRASES:
            raise ValueError(f"{len(value)} phrases; at most {MAX_PHRASES}")
        for term, translation in value.items():
            if not term.strip() or not translation.strip():
                raise ValueError(f"{term!r} = {translation!r}: neither a term nor its translation may be empty")
        return value


class AudioConfig(_Section):
    capture_device: str = Field("default", description="ALSA PCM name of the microphone.")
    playback_device: str = Field("default", description="ALSA PCM name of the speaker.")
    period_ms: int = Field(
        100,
        ge=10,
        le=100,
        description="Audio per read from the microphone and per message to the session; 100 ms is what one "
        "append to the service holds, shorter wakes the box more often for the same latency to the service.",
    )
    playback_start_ms: int = Field(120, ge=0, le=2000, description="Audio buffered before playback starts.")
    volume: float = Field(1.0, ge=0.0, le=1.0, description="Speaker volume: 0 silent, 1 as the service sends it.")
    echo: Literal["aec", "half-duplex", "off"] = Field(
        "half-duplex",
        description='"aec": the box removes its own voice from the mic (full duplex); "half-duplex": the mic '
        'sends silence while the speaker talks; "off": headphones or an echo-cancelling capture device '
        "(PipeWire's echo-cancel source).",
    )
    echo_tail_ms: int = Field(400, ge=0, le=3000, description="Half duplex: mic stays muted this long after drained.")
    streaming: Literal["speech", "always"] = Field(
        "speech", description='"speech": only speech (with pre-roll and trailing silence) is sent; "always": all.'
    )
    vad: Literal["silero", "webrtc"] = Field("silero", description="Voice activity detector; webrtc is lighter.")
    preroll_ms: int = Field(500, ge=300, le=2000, description="Speech mode: audio sent from before speech starts.")
    trailing_ms: int = Field(
        1200, ge=600, le=5000, description="Speech mode: silence sent after speech, for the service's end of speech."
    )
    keepalive_s: float = Field(
        20.0, ge=0, le=300, description="Speech mode: a short silent append this often in long silences (0: never)."
    )
    barge_in: bool = Field(True, description="Stop the translation playing when someone starts speaking.")


class CameraConfig(_Section):
    source: str = Field("none", description='"none", "picamera2", "v4l2:/dev/videoN" or "file:/path".')
    max_fps: float = Field(1.0, gt=0, le=2, description="Never more than 2 frames/s (the service's limit).")
    when: Literal["speech", "always"] = Field(
        "speech", description='Send frames only while someone speaks, or "always".'
    )
    change_threshold: float = Field(
        0.02, ge=0, le=1, description="Share of a small thumbnail that must change before another frame goes; 0: any."
    )
    max_tokens: int = Field(150, ge=16, le=600, description="Image tokens per frame (0.5 per 28×28 px); 150 ≈ 640×360.")
    jpeg_quality: int = Field(80, ge=30, le=95, description="JPEG quality (lowered by itself to stay under 500 KB).")
    file_fps: float = Field(
        5.0, ge=0.5, le=30, description="Frames per second of a file: source (a video keeps its own)."
    )
    file_speed: float = Field(
        1.0, ge=1, le=100, description="Replay speed of a file: source; above 1, frame times follow the scene's clock."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value in ("none", "picamera2") or value.startswith(("v4l2:/dev/", "file:/")):
            return value
        raise ValueError(
            f'{value!r} is not a camera source: use "none", "picamera2", "v4l2:/dev/videoN" or "file:/path"'
        )


class ControlConfig(_Section):
    listen: str = Field("127.0.0.1:8080", description="HOST:PORT of the HTTP API and pages.")
    token_file: Path | None = Field(
        None, description="File holding the token that writes and /admin need when listen is not loopback."
    )
    captions_clear_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Privacy: captions leave the screen and /api/status after the room has been quiet this long; "
        "0 keeps them.",
    )
    visitor_languages: list[str] = Field(
        default_factory=list,
        max_length=12,
        description="One-way mode: languages a visitor may pick on the captions screen for the next conversation "
        "(back to languages.target after captions_clear_s of quiet); empty: no buttons.",
    )
    notice: str | None = Field(
        None,
        max_length=400,
        description="The privacy notice on the screen; unset: that speech (and the camera's pictures) go to a "
        'cloud translation service, in the visitor\'s languages; "": none.',
    )

    @field_validator("visitor_languages")
    @classmethod
    def _visitor_codes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value!r} names a language twice")
        for code in value:
            _check_code(code, profiles.KNOWN_CODES, "language code a model knows")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class EngineConfig(_Section):
    listen: str = Field("127.0.0.1:8790", description="HOST:PORT of the local engine's WebSocket (loopback).")
    model_dir: Path | None = Field(
        None, description="Where the speech model is assembled and verified; unset: <state dir>/engine."
    )
    end_silence_ms: int = Field(700, ge=200, le=3000, description="Silence that ends an utterance.")
    max_utterance_s: float = Field(15.0, ge=2, le=28, description="Longer speech is cut and translated in parts.")
    max_decode_tokens: int = Field(128, ge=16, le=440, description="Bound on the decoded text per utterance.")
    threads: int = Field(0, ge=0, le=64, description="CPU threads for the models; 0: all cores.")
    marian_dir: Path | None = Field(
        None,
        description="Folder of extra translation pairs: <source>-<target>/ holding a CTranslate2 Marian model "
        "(e.g. OPUS-MT) with source.spm and target.spm; unset: none.",
    )
    unload_after_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="The engine starts on its first connection and loads its models; it exits this long after "
        "its last connection closed (the box back on the cloud); 0: it stays once started.",
    )
    uncertain_speech: Literal["phrase", "nothing"] = Field(
        "phrase",
        description="When the engine does not trust its translation (the caption shows the source text, marked "
        '"offline — translation uncertain"): "phrase" says a short fixed sentence in the target language '
        '("Sorry, I could not translate that."), "nothing" stays silent.',
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or host not in ("127.0.0.1", "::1", "[::1]", "localhost") or not port.isdigit():
            raise ValueError(f"{value!r}: the engine listens on loopback only, e.g. 127.0.0.1:8790")
        if not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: port out of range")
        return value


#: MQTT topic names the box writes under or reads: levels of safe characters, no wildcards.
_TOPIC = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_BOX_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MQTT_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


def _check_topic(value: str | None) -> str | None:
    if value is not None and (len(value) > 200 or not _TOPIC.match(value)):
        raise ValueError(
            f"{value!r} is not a topic the box can use: levels of letters, digits, '_', '-' and '.', "
            "separated by '/', no wildcards (+ #) and no leading or trailing '/'"
        )
    return value


class MqttConfig(_Section):
    broker: str | None = Field(
        None,
        description='The fleet\'s MQTT broker: "mqtts://host:8883" (TLS), or "mqtt://host:1883" on loopback '
        "(or anywhere with allow_plain); unset: the box joins no broker (no mqtt process).",
    )
    allow_plain: bool = Field(
        False, description="Allow a plain mqtt:// broker off loopback (its password and commands travel in clear)."
    )
    username: str | None = Field(None, max_length=256, description="The box's user on the broker; unset: none.")
    password_file: Path | None = Field(
        None, description='File holding the broker password; unset: the systemd credential "mqtt-password", if any.'
    )
    ca_file: Path | None = Field(
        None, description="CA certificate(s) the mqtts:// broker's certificate must chain to; unset: the system's."
    )
    box_id: str | None = Field(
        None, description="This box's id in topics and in Home Assistant; unset: derived from /etc/machine-id."
    )
    prefix: str | None = Field(None, description="Where the box's topics live; unset: tolk/<box id>.")
    captions: bool = Field(
        False, description="Publish the captions (what people said) on <prefix>/captions: private, off unless set."
    )
    discovery: bool = Field(True, description="Announce the box to Home Assistant (MQTT device discovery).")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix.")
    fleet_topic: str | None = Field(
        None,
        description="Where the fleet shares its budget of new sessions: <fleet_topic>/budget (retained, set by "
        "staff) and <fleet_topic>/boxes/<id> (each box); unset: no fleet budget, reconnects only jittered.",
    )

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in MQTT_SCHEMES or not parts.hostname or port == -1:
            raise ValueError(f"{value!r} is not a broker URL: use mqtts://host:8883 (or mqtt://127.0.0.1:1883)")
        if parts.username or parts.password:
            raise ValueError(f"{value!r} carries credentials: set [mqtt] username and password_file instead")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{value!r}: a broker URL is scheme://host:port, nothing after it")
        return value

    @field_validator("box_id")
    @classmethod
    def _box_id(cls, value: str | None) -> str | None:
        if value is not None and not _BOX_ID.match(value):
            raise ValueError(f"{value!r} is not a box id: 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("prefix", "discovery_prefix", "fleet_topic")
    @classmethod
    def _topics(cls, value: str | None) -> str | None:
        return _check_topic(value)

    @model_validator(mode="after")
    def _plain_only_to_loopback(self) -> MqttConfig:
        broker = self.broker
        if broker is not None and broker.startswith("mqtt://") and not self.allow_plain and not is_loopback(broker):
            # The password and every command would cross the network in clear text.
            raise ValueError(
                f"broker = {broker!r} is plain MQTT to another host: use mqtts://, or set allow_plain = true "
                "if the network itself is trusted"
            )
        return self

    @property
    def secure(self) -> bool:
        return self.broker is not None and self.broker.startswith("mqtts://")


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
