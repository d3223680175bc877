"""tolk's configuration: one typed model, validated the same way for the file and for HTTP.

Layers, lowest first: the model's embedded defaults, the config file (``--config``,
``TOLK_CONFIG``, else ``/etc/tolk/tolk.toml`` when it exists), then the overlay that the
HTTP API writes in the state directory. The API key is never part of the model: it comes
from ``DASHSCOPE_API_KEY``, ``[service] api_key_file``, a systemd credential, or (last) the key
entered on the admin page, and is never shown.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon import config_model
from daemon import languages as lang
from daemon.config_model import BaseModel, Field, model_validator
from daemon.config_sections import (  # the sections are part of this module's API
    DEFAULT_MODEL,
    INTL_URL,
    AudioConfig,
    CameraConfig,
    ControlConfig,
    EngineConfig,
    LanguagesConfig,
    LogConfig,
    MqttConfig,
    OutputConfig,
    ServiceConfig,
    TranslationConfig,
    _Section,
)
from daemon.realtime import profiles

__all__ = [
    "DEFAULT_MODEL",
    "INTL_URL",
    "AudioConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "EngineConfig",
    "LanguagesConfig",
    "LogConfig",
    "MqttConfig",
    "OutputConfig",
    "ServiceConfig",
    "TranslationConfig",
    "api_key",
    "load",
    "public_dict",
    "validate",
]

DEFAULT_CONFIG_PATH = Path("/etc/tolk/tolk.toml")
DEFAULT_STATE_DIR = Path("/var/lib/tolk")
OVERLAY_NAME = "config.toml"
CREDENTIAL_NAME = "dashscope-api-key"
STORED_KEY_NAME = "api-key"
STORED_KEY_ORIGIN = "entered on the admin page"
KEY_MIN, KEY_MAX = 8, 512
KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{{KEY_MIN},{KEY_MAX}}}")


class Config(_Section):
    languages: LanguagesConfig = Field(default_factory=LanguagesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    translation: TranslationConfig = Field(default_factory=TranslationConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _combination(self) -> Config:
        profile = self.profile
        _check_languages(self, profile)
        target = self.languages.target
        mods = self.output.modalities
        if mods is not None and "audio" in mods and target not in profile.languages.speech:
            raise ValueError(
                f"output.modalities = {mods!r} with languages.target = {target!r}: "
                f"{lang.describe(target)} is text-only on {profile.name}{_speech_elsewhere(target)}; "
                f"set modalities to [\"text\"] or pick a spoken target ({', '.join(sorted(profile.languages.speech))})"
            )
        if self.languages.mode == "conversation":
            _check_both_directions(self, profile)
        _check_visitor_languages(self, profile)
        voice = self.output.voice
        if voice is not None and voice not in profile.voices:
            raise ValueError(
                f"output.voice = {voice!r} is not a voice of {profile.name}: use one of {', '.join(profile.voices)}, "
                "or leave it unset"
            )
        if voice is not None and "audio" in self.modalities and target not in profile.voices[voice]:
            raise ValueError(
                f"output.voice = {voice!r} cannot speak {lang.describe(target)}: "
                f"voices for {target} on {profile.label} are {', '.join(profile.voices_for(target))}"
            )
        return self

    @property
    def profile(self) -> profiles.ModelProfile:
        """The chosen model's profile (its tables, its session shape)."""
        return profiles.profile_for(self.service.model)

    @property
    def modalities(self) -> list[str]:
        """The modalities sent to the service: text-only targets always get ``["text"]``."""
        if self.output.modalities is not None:
            return list(self.output.modalities)
        return ["text", "audio"] if self.languages.target in self.profile.languages.speech else ["text"]

    @property
    def voice(self) -> str | None:
        """The voice sent to the service, or None when no audio is produced (or the service picks it)."""
        if "audio" not in self.modalities:
            return None
        return self.output.voice or self.profile.default_voice_for(self.languages.target)


def _speech_elsewhere(code: str) -> str:
    models = profiles.speech_models(code)
    return f" (speech on {', '.join(models)})" if models else ""


def _check_languages(cfg: Config, profile: profiles.ModelProfile) -> None:
    """Both languages in the chosen model's tables; "auto" only where the model detects."""
    source, target, table = cfg.languages.source, cfg.languages.target, profile.languages
    if source == profiles.AUTO and not profile.detects_source:
        detecting = [p.label for p in profiles.PROFILES.values() if p.detects_source]
        raise ValueError(
            f"languages.source = {source!r}: {profile.name} must be told the source language: name one of "
            f"{', '.join(sorted(table.sources))}, or use a model that detects it ({', '.join(detecting)})"
        )
    if source != profiles.AUTO and source not in table.sources:
        elsewhere = [p.label for p in profiles.PROFILES.values() if source in p.languages.sources]
        raise ValueError(
            f"languages.source = {source!r}: {profile.name} does not hear {lang.describe(source)}"
            f" (heard by {', '.join(elsewhere)})"
        )
    if target not in table.targets:
        where = profiles.target_models(target)
        speech = _speech_elsewhere(target)
        raise ValueError(
            f"languages.target = {target!r}: {profile.name} cannot translate into {lang.describe(target)}; "
            f"it can on {', '.join(where)}{speech}: set [service] model to one of those"
        )


def _check_visitor_languages(cfg: Config, profile: profiles.ModelProfile) -> None:
    """What a visitor may pick: one-way mode only, and each language as conversation sides are."""
    offered = cfg.control.visitor_languages
    if offered and cfg.languages.mode == "conversation":
        raise ValueError('control.visitor_languages: in mode = "conversation" both languages are the staff\'s; '
                         "leave it empty")  # fmt: skip
    _check_spoken(cfg, profile, offered, "control.visitor_languages")


def _check_both_directions(cfg: Config, profile: profiles.ModelProfile) -> None:
    """Conversation mode speaks both sides."""
    _check_spoken(cfg, profile, [cfg.languages.source, cfg.languages.target], "in conversation mode")


def _check_spoken(cfg: Config, profile: profiles.ModelProfile, codes: list[str], where: str) -> None:
    """Languages the box may translate into besides the target: each a target of the model, and
    explicit audio and an explicit voice must fit them all."""
    table = profile.languages
    if missing := [code for code in codes if code not in table.targets]:
        raise ValueError(f"{where}: {profile.name} cannot translate into {lang.describe(missing[0])}")
    mods = cfg.output.modalities
    if mods is not None and "audio" in mods and (silent := [c for c in codes if c not in table.speech]):
        raise ValueError(
            f"output.modalities = {mods!r} {where}: {lang.describe(silent[0])} is text-only on {profile.label}; "
            "leave modalities unset (audio toward the languages that have it, text toward the others) "
            "or set [\"text\"]"
        )
    voice = cfg.output.voice
    speaks = profile.voices.get(voice or "", frozenset())
    if voice is not None and (mute := [c for c in codes if c in table.speech and c not in speaks]):
        raise ValueError(
            f"output.voice = {voice!r} cannot speak {lang.describe(mute[0])} ({where}); "
            "leave voice unset or pick one that speaks them all"
        )


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: " + "; ".join(problems))


def _describe_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        section, _, key = loc.rpartition(".")
        known = list(_fields_at(section))
        hint = difflib.get_close_matches(key, known, n=1)
        maybe = f"; did you mean {hint[0]!r}?" if hint else ""
        where = f"[{section}]" if section else "the top level"
        return f"{loc}: unknown key in {where} (known: {', '.join(known)}){maybe}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if loc:
        return f"{loc} = {err.get('input')!r}: {msg}"
    return msg


def _fields_at(dotted: str) -> dict[str, Any]:
    model: type[BaseModel] = Config
    for part in filter(None, dotted.split(".")):
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return {}
        model = annotation
    return dict(model.model_fields)


def validate(data: Mapping[str, Any], source: str = "config") -> Config:
    """Validate plain data (parsed TOML or JSON) into a Config, or raise ConfigError."""
    from pydantic import ValidationError

    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe_error(e) for e in exc.errors()], source) from None


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(path)) from None


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The base config file: explicit, else TOLK_CONFIG, else /etc/tolk/tolk.toml if present."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("TOLK_CONFIG"):
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def state_dir() -> Path:
    """Where the HTTP API keeps its changes: TOLK_STATE_DIR, systemd's STATE_DIRECTORY, /var/lib/tolk."""
    env = os.environ.get("TOLK_STATE_DIR") or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(env) if env else DEFAULT_STATE_DIR


def overlay_path() -> Path:
    return state_dir() / OVERLAY_NAME


def load_layers(explicit: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw base file and overlay, each {} when absent (an explicit missing file is an error)."""
    path = config_path(explicit)
    base = read_toml(path) if path is not None else {}
    over_path = overlay_path()
    overlay = read_toml(over_path) if over_path.exists() else {}
    return base, overlay


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """The merged, validated config. Raises ConfigError naming the file and key on any problem."""
    if config_model.is_read_only():
        return _validated_elsewhere(explicit)
    base, overlay = load_layers(explicit)
    path = config_path(explicit)
    base_cfg = validate(base, str(path or "defaults"))
    if not overlay:
        return base_cfg
    return validate(deep_merge(base, overlay), f"{path or 'defaults'} + {overlay_path()}")


#: How long a process that reads configs waits for the validator's verdict (a loaded Pi takes seconds).
VALIDATOR_TIMEOUT_S = 60.0


def _validated_elsewhere(explicit: str | os.PathLike[str] | None) -> Config:
    """``load()`` in a process that does not validate: a child does (daemon/config_model.py)."""
    args = [sys.executable, "-m", "daemon.config_validated"]
    if explicit:
        args.append(os.fspath(explicit))
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=VALIDATOR_TIMEOUT_S, check=False)
        answer = json.loads(run.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        detail = (getattr(exc, "stderr", None) or "").strip() or str(exc)
        raise ConfigError([f"the config validator did not answer: {detail[-300:]}"], "config") from None
    if "problems" in answer:
        raise ConfigError(list(answer["problems"]), str(answer.get("source", "config")))
    return from_validated(answer["config"])


def layers_named(explicit: str | os.PathLike[str] | None = None) -> str:
    """Which files make the merged config (the base file, then the overlay): two processes that name
    the same layers read the same config."""
    return f"{config_path(explicit) or ''} + {overlay_path()}"


def validated_data(cfg: Config) -> dict[str, Any]:
    """A validated config as plain JSON data, for a process that reads configs (``from_validated``)."""
    return cfg.model_dump(mode="json")


def from_validated(data: Mapping[str, Any]) -> Config:
    """A Config from ``validated_data``'s output; validated again where this process validates."""
    if config_model.is_read_only():
        built: Config = config_model.build(Config, data)
        return built
    return validate(data, "validated config")


def api_key(cfg: Config) -> tuple[str | None, str]:
    """The API key and where it came from. Never log the first element.

    What the installer gave (the environment, ``[service] api_key_file``, the systemd
    credential) wins over the key staff entered on the admin page (``stored_key_path()``).
    """
    if key := os.environ.get("DASHSCOPE_API_KEY", "").strip():
        return key, "DASHSCOPE_API_KEY"
    return read_secret(cfg.service.api_key_file, CREDENTIAL_NAME, fallback=(stored_key_path(), STORED_KEY_ORIGIN))


def stored_key_path() -> Path:
    """The key entered on the admin page: in the state directory, readable by the box's user only."""
    return state_dir() / STORED_KEY_NAME


def check_api_key(value: object) -> str:
    """The key as given, if it can be one; ValueError says why not (never quoting it)."""
    if not isinstance(value, str):
        raise ValueError(f"the API key must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError("the API key is empty")
    if not KEY_PATTERN.fullmatch(value):
        raise ValueError(
            f"the API key must be {KEY_MIN}-{KEY_MAX} printable characters without spaces or line breaks"
        )
    return value


def store_api_key(key: str) -> None:
    """Write the key atomically, mode 0600 from its first byte; OSError when the directory cannot take it."""
    path = stored_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask or a stale file made it
        os.write(fd, key.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def forget_api_key() -> bool:
    """Remove the stored key; whether there was one."""
    try:
        stored_key_path().unlink()
    except FileNotFoundError:
        return False
    return True


def read_secret(
    file: Path | None, credential: str, fallback: tuple[Path, str] | None = None
) -> tuple[str | None, str]:
    """A secret from ``file``, else from the systemd credential ``credential``, else from
    ``fallback`` (a path and its origin); and its origin.

    An unreadable or empty source is skipped. Never log the first element.
    """
    candidates: list[tuple[Path, str]] = []
    if file is not None:
        candidates.append((file, f"file {file}"))
    if creds := os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append((Path(creds) / credential, f"credential {credential}"))
    if fallback is not None:
        candidates.append(fallback)
    for path, origin in candidates:
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if secret:
            return secret, origin
    return None, "not set"


def mask(secret: str | None) -> str:
    # Not even a suffix: a kiosk's screen and logs are seen by strangers.
    return "********" if secret else "(not set)"


def public_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data, safe to print or return: effective values filled, key masked."""
    data = cfg.model_dump(mode="json")
    data["output"]["effective_modalities"] = cfg.modalities
    data["output"]["effective_voice"] = cfg.voice
    key, origin = api_key(cfg)
    data["service"]["api_key"] = f"{mask(key)} ({origin})" if key else "(not set)"
    return data


def changed_sections(old: Config, new: Config) -> set[str]:
    return {name for name in Config.model_fields if getattr(old, name) != getattr(new, name)}
