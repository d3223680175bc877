"""The shapes the HTTP API returns: pydantic models, so /openapi.json describes the real responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from daemon.config import Config, OutputConfig, ServiceConfig


class Health(BaseModel):
    ok: bool = Field(description="True only when every process heartbeats and the session is usable.")
    reasons: list[str] = Field(default_factory=list, description="What is wrong, one line per problem.")


class ProcessStatus(BaseModel):
    name: str
    up: bool
    state: str = Field(description="'down' when down, else the state the process reports (ready, running…).")
    reported_state: str = Field(description="The state in its last heartbeat; 'unknown' before the first.")
    status: str = Field(description="The process's one-line status.")
    pid: int | None = None
    age_s: float | None = Field(None, description="Seconds since its last heartbeat arrived; null: never.")
    counters: dict[str, float] = Field(default_factory=dict)


class SessionInfo(BaseModel):
    state: str = Field(description="connecting, configuring, live, backoff, failed, stopped; unknown before any.")
    detail: str = ""
    last_error: str = ""
    reconnects: int = 0
    session_id: str = ""
    backlog_dropped: int = Field(0, description="Audio chunks dropped from the backlog while disconnected.")
    backend: str = Field(
        "", description='"cloud", "local", or "local-fallback": the box\'s engine while the cloud is unreachable.'
    )
    for_s: float = Field(description="Seconds since control first saw this state.")


class UsageInfo(BaseModel):
    input_audio_tokens: int = 0
    input_text_tokens: int = 0
    output_audio_tokens: int = 0
    output_text_tokens: int = 0
    image_tokens_estimate: int = 0
    audio_seconds_sent: float = 0.0
    input_tokens: int = Field(0, description="Tokens in, as the service reported them (images estimated apart).")
    output_tokens: int = 0
    images_sent: int = 0
    tokens_per_hour: float = Field(0.0, description="Input, output and image tokens, at the rate of the last hour.")
    cost_per_hour: float | None = Field(
        None, description="At [service] price_per_million_*_tokens; null when no price is set."
    )


class PlaybackInfo(BaseModel):
    state: str
    response_id: str = ""
    underruns: int = 0
    age_s: float


class EchoInfo(BaseModel):
    """The echo canceller as capture measures it (``[audio] echo = "aec"``)."""

    cancelling: bool = Field(
        description="The canceller runs; false on another echo setting, or when it could not start (half duplex)."
    )
    erle_db: float | None = Field(
        None,
        description="Echo return loss enhancement: how much quieter the box's own voice leaves the microphone "
        "path, over the last seconds when only the box spoke; null until measured.",
    )
    far_s: float = Field(0.0, description="Seconds the box has spoken (the canceller's far end).")
    double_talk_s: float = Field(0.0, description="Of those, seconds someone spoke over it.")
    double_talk_ratio: float = 0.0
    onset_guard_s: float = Field(
        0.0, description="Seconds sent as silence at the start of answers while the canceller locks on."
    )
    residual_s: float = Field(0.0, description="Seconds only the echo's residue was left (silence to the VAD).")
    resyncs: int = Field(0, description="Times the speaker's reference was laid anew on the microphone's timeline.")
    reference_late_s: float = Field(0.0, description="Seconds of the speaker's reference that came too late to use.")


class CaptionText(BaseModel):
    text: str = Field(description="A partial's text includes the not yet confirmed stash.")
    final: bool
    language: str = ""


class CaptionInfo(BaseModel):
    utterance: str
    source: CaptionText | None = Field(None, description="What was said; null when not captioned.")
    translation: CaptionText | None = None
    age_s: float = Field(description="Seconds since this utterance last changed.")


class ConfigSummary(BaseModel):
    api_key: Literal["set", "missing"] = Field(description="Whether the box has an API key (never the key).")
    api_key_from: str = Field(description="Where it comes from, e.g. \"entered on the admin page\", \"credential …\".")
    source: str
    target: str
    modalities: list[str]
    voice: str | None
    camera: str
    echo: str
    listen: str


class StatusReport(BaseModel):
    health: Health
    processes: dict[str, ProcessStatus] = Field(description="By process name, in start order.")
    session: SessionInfo
    usage: UsageInfo | None = None
    speaking: bool | None = Field(None, description="Whether capture hears speech; null: not reported yet.")
    playback: PlaybackInfo | None = None
    echo: EchoInfo | None = Field(None, description="Null until capture reports.")
    captions: list[CaptionInfo] = Field(default_factory=list, description="The latest utterances, oldest first.")
    config: ConfigSummary


class ConfigRejected(BaseModel):
    error: str
    problems: list[str] = Field(description="One line per problem: the key, the value given and what is allowed.")


def refused(status: int, error: str, *problems: str, **headers: str) -> JSONResponse:
    """Every refusal's body (``ConfigRejected``): what was refused, and one line per reason."""
    return JSONResponse({"error": error, "problems": list(problems)}, status_code=status, headers=headers or None)


#: Refusals any operation may give (documented once, in every operation).
REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"model": ConfigRejected, "description": "A foreign Host, or a change from another site's page."},
}
#: And those of every change.
WRITE_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ConfigRejected, "description": "The body could not be read."},
    401: {"model": ConfigRejected, "description": "The box listens on the network: the token is missing or wrong."},
}


# --- the public config: the config model plus the effective values, the key masked ---------------


class PublicOutput(OutputConfig):
    model_config = ConfigDict(extra="allow")

    effective_modalities: list[str] = Field(description="What is sent to the service.")
    effective_voice: str | None = Field(description="The voice used, or null when no audio is produced.")


class PublicService(ServiceConfig):
    model_config = ConfigDict(extra="allow")

    api_key: str = Field(description="Masked: whether a key is set and where it comes from, never the key.")


class PublicConfig(Config):
    model_config = ConfigDict(extra="allow")

    output: PublicOutput
    service: PublicService
