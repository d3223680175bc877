"""Control's app in the test's own process, on a config file listening where the test says
(a loopback address, or 127.0.0.2 standing in for the network), with a bus stand-in that
answers commands as the processes would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon import config as config_mod
from daemon.messages import Message
from services.control.api import create_app
from services.control.security import AccessPolicy
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from tests.helpers import AnsweringBus


def control_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listen: str, token: str | None = None
) -> tuple[Any, ConfigStore, list[Message]]:
    """The app, its config store, and what it published; no key from the test's environment."""
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    cfg_file = tmp_path / "tolk.toml"
    cfg_file.write_text(f'[control]\nlisten = "{listen}"\n')
    store = ConfigStore(config_mod.load(cfg_file), str(cfg_file))
    status = StatusAggregator()
    bus = AnsweringBus(status)
    return create_app(status, store, bus, access=AccessPolicy(listen, token)), store, bus.published
