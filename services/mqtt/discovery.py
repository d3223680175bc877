"""Home Assistant's MQTT device discovery: the box as one device with its entities, in one message.

The device-based payload (Home Assistant 2024.11 and later) on
``<discovery prefix>/device/tolk_<box id>/config``, retained: ``dev`` (the device), ``o`` (the
origin: tolk), ``cmps`` (each entity with its platform ``p`` and a ``unique_id``), and the
options they share (the state topic, the availability topic). Entities read the retained
``state`` document; the selects change the languages through ``config/set`` (validated and
applied as a ``PATCH /api/config``, so a language the model lacks is refused there and the
select falls back to the state), the switch and the button send ``command``.

Published on every connection, when Home Assistant says it is ``online`` (its birth message:
it forgot what it had), and when the model changes (the selects' options are the model's).
"""

from __future__ import annotations

import ipaddress
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from daemon import config as config_mod
from daemon.realtime import profiles
from services.mqtt.topics import Topics

HOMEPAGE = "https://github.com/tolk-kiosk/tolk"
#: The status entity's attributes: what is wrong, and each process.
_ATTRIBUTES = "{{ {'errors': value_json.errors, 'processes': value_json.processes} | tojson }}"


def tolk_version() -> str:
    try:
        return version("tolk")
    except PackageNotFoundError:
        return "0"


def payload(cfg: config_mod.Config, topics: Topics) -> dict[str, Any]:
    box = topics.box
    uid = f"tolk_{box}"
    profile = cfg.profile
    sources = sorted(profile.languages.sources) + ([profiles.AUTO] if profile.detects_source else [])
    sw = tolk_version()
    device: dict[str, Any] = {"ids": [uid], "name": f"tolk {box}", "mf": "tolk", "mdl": profile.label, "sw": sw}
    if _reachable(cfg.control.host):
        device["cu"] = f"http://{cfg.control.listen}/admin"  # Home Assistant links to the admin page
    components: dict[str, dict[str, Any]] = {
        "status": {
            "p": "sensor",
            "name": "Status",
            "icon": "mdi:translate",
            "value_template": "{{ value_json.status }}",
            "json_attributes_topic": topics.state,
            "json_attributes_template": _ATTRIBUTES,
        },
        "session": {
            "p": "sensor",
            "name": "Session",
            "value_template": "{{ value_json.session.state }}",
            "json_attributes_topic": topics.state,
            "json_attributes_template": "{{ value_json.session | tojson }}",
        },
        "source": _language_select("Source language", "source", sources, topics),
        "target": _language_select("Target language", "target", sorted(profile.languages.targets), topics),
        "mute": {
            "p": "switch",
            "name": "Microphone muted",
            "icon": "mdi:microphone-off",
            "command_topic": topics.command,
            "payload_on": "mute",
            "payload_off": "unmute",
            "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
            "state_on": "ON",
            "state_off": "OFF",
        },
        "tokens_per_hour": {
            "p": "sensor",
            "name": "Tokens per hour",
            "icon": "mdi:counter",
            "unit_of_measurement": "tokens/h",
            "state_class": "measurement",
            "value_template": "{{ value_json.tokens_per_hour }}",
        },
        "restart_session": {
            "p": "button",
            "name": "Restart session",
            "command_topic": topics.command,
            "payload_press": "restart-session",
        },
    }
    for key, component in components.items():
        component["unique_id"] = f"{uid}_{key}"
    return {
        "dev": device,
        "o": {"name": "tolk", "sw": sw, "url": HOMEPAGE},
        "cmps": components,
        "state_topic": topics.state,
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }


def encoded(cfg: config_mod.Config, topics: Topics) -> str:
    return json.dumps(payload(cfg, topics), separators=(",", ":"), ensure_ascii=False)


def _language_select(name: str, key: str, options: list[str], topics: Topics) -> dict[str, Any]:
    return {
        "p": "select",
        "name": name,
        "icon": "mdi:translate",
        "options": options,
        "command_topic": topics.config_set,
        "command_template": '{"languages": {"' + key + '": "{{ value }}"}}',
        "value_template": "{{ value_json.languages." + key + " }}",
    }


def _reachable(host: str) -> bool:
    """An address others can open (not loopback, not "every interface", which names none)."""
    if host in ("", "localhost"):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a host name
    return not (address.is_loopback or address.is_unspecified)
