"""schemathesis against /openapi.json: every operation, a bounded number of generated cases;
no 5xx, and every response matches the schema the API publishes (status, content type, body)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from daemon import config as config_mod
from daemon.messages import Caption, Heartbeat, SessionStatus, Usage
from services.control.api import create_app
from services.control.devices import ConfiguredDevices, DevicesReport
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from tests.helpers import AnsweringBus


def _devices(cfg: config_mod.Config) -> DevicesReport:
    # alsa-lib's view of this machine is not what is under test here.
    return DevicesReport(
        capture=["default"],
        playback=["default"],
        cameras=[],
        picamera2=False,
        configured=ConfiguredDevices(
            capture_device=cfg.audio.capture_device, playback_device=cfg.audio.playback_device, camera="none"
        ),
    )


def _control_app() -> Any:
    # A stopped clock: the heartbeats below stay fresh, so /health is 200 (its 503 is tested elsewhere).
    agg = StatusAggregator(clock=lambda: 1000.0)
    # Something in every view, so responses have real content to check against the schema.
    for name in ("capture", "camera", "session", "playback", "control"):
        agg.handle(Heartbeat(service=name, state="ready", counters={"chunks": 3}))
    agg.handle(SessionStatus(state="live"))
    agg.handle(Usage(input_audio_tokens=10, cost_per_hour=0.5))
    agg.handle(Caption(utterance="u1", kind="translation", text="Hi", stash=" there"))
    # Generated PATCHes are stored: in a directory of this module's own, never the box's.
    store = ConfigStore(config_mod.Config(), None, overlay=Path(_STATE.name) / "config.toml")
    return create_app(agg, store, AnsweringBus(agg), devices=_devices)


# schemathesis collects the operations when this module is imported, so the app exists by then.
_STATE = tempfile.TemporaryDirectory(prefix="tolk-schema-")
schema = schemathesis.openapi.from_asgi("/openapi.json", _control_app(), headers={"Host": "127.0.0.1"})


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_by_its_schema(case: Any) -> None:
    # The Host the access guard accepts on a loopback bind (the test client's own is "testserver").
    # Not "schema-valid data is accepted": a schema cannot say that a text-only target cannot
    # take audio, or that a port is free; the API refuses those with 422, as documented.
    case.call_and_validate(
        headers={"Host": "127.0.0.1"}, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )


def test_the_patch_body_is_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path))
    app = create_app(StatusAggregator(), ConfigStore(config_mod.Config(), None), lambda _msg: None)
    spec = app.openapi()
    body = spec["paths"]["/api/config"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ConfigPatch"}
    patch = spec["components"]["schemas"]["ConfigPatch"]
    assert patch["additionalProperties"] is False
    languages = spec["components"]["schemas"]["LanguagesPatch"]["properties"]["target"]["anyOf"]
    assert {"type": "null"} in languages and "ar" in languages[0]["enum"]
    service = spec["components"]["schemas"]["ServicePatch"]["properties"]
    assert "api_key_file" not in service and "url" in service
    assert "token_file" not in spec["components"]["schemas"]["ControlPatch"]["properties"]
    assert {"/api/languages", "/api/devices", "/api/mute", "/api/speaker-test", "/metrics"} <= set(spec["paths"])
