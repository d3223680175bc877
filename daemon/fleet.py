"""A box's identity in its fleet: the id its topics, its Home Assistant device and its jitter use.

``[mqtt] box_id`` when set; otherwise derived from ``/etc/machine-id``, hashed with an
application key as machine-id(5) asks (the raw id must not be published), so it is stable
across reinstalls of tolk and differs from every other machine's. Without a machine id (a
container), the host name stands in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from pathlib import Path

from daemon import config as config_mod

MACHINE_ID = Path("/etc/machine-id")
_APP_KEY = b"tolk fleet box id"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
ID_CHARS = 12


def box_id(cfg: config_mod.Config) -> str:
    if cfg.mqtt.box_id:
        return cfg.mqtt.box_id
    try:
        machine = MACHINE_ID.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine = ""
    if machine:
        return hmac.new(machine.encode(), _APP_KEY, hashlib.sha256).hexdigest()[:ID_CHARS]
    return _UNSAFE.sub("-", socket.gethostname()).strip("-")[:64] or "tolk"


def prefix(cfg: config_mod.Config) -> str:
    """Where the box's topics live: ``[mqtt] prefix``, else ``tolk/<box id>``."""
    return cfg.mqtt.prefix or f"tolk/{box_id(cfg)}"
