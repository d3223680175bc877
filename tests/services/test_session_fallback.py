"""``backend = "auto"`` with a key: the session falls back to the box's engine while the cloud is
unreachable, says so, and goes back to the cloud once it answers.

``tolk service session`` as a real process. The cloud is a port where nothing listens (every
connection refused), later a simulator on that same port; the engine is a simulator on the
``[engine] listen`` port (the session cannot tell it from the engine: the same protocol).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import backend
from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import SessionStatus
from services.simulator import Faults, running_in_thread
from tests.helpers import free_port, wait_until
from tests.services.session_rig import KEY, feed_until, session_process, write_config

FALLBACK_AFTER_S = 2.0


def _config(rundir: Path, cloud_port: int, engine_port: int) -> Path:
    return write_config(
        rundir / "tolk.toml",
        f"ws://127.0.0.1:{cloud_port}/api-ws/v1/realtime",
        service=f'backend = "auto"\nfallback_after_s = {FALLBACK_AFTER_S}',
        extra=f'[engine]\nlisten = "127.0.0.1:{engine_port}"',
    )


@pytest.fixture
def capture(rundir: Path) -> Bus:
    bus = Bus("capture", rundir)
    yield bus
    bus.close()


def test_falls_back_to_the_engine_and_returns_to_the_cloud(rundir: Path, capture: Bus) -> None:
    cloud_port = free_port()
    with running_in_thread() as engine:
        config = _config(rundir, cloud_port, engine.port)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
            refused = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and m.state == "backoff", 10, "the cloud refused"
            )
            live = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and m.state == "live", 15, "a live session on the engine"
            )
            assert isinstance(live, SessionStatus) and live.backend == "local-fallback", live
            # The first refusal is published a moment after it happened: a little slack.
            took = (live.t - refused.t) / 1e9
            assert took >= FALLBACK_AFTER_S - 0.5, f"fell back {took:.1f} s after the first refusal"
            assert len(engine.connections) == 1
            feed_until(capture, engine, lambda: engine.appends > 0)  # translating meanwhile

            # The cloud answers again: the session goes back to it (at a pause: the mic is silent).
            with running_in_thread(port=cloud_port, api_key=KEY) as cloud:
                seen = len(tap.seen)
                back = tap.wait_for(
                    lambda m: tap.seen.index(m) >= seen
                    and isinstance(m, SessionStatus)
                    and m.state == "live"
                    and m.backend == "cloud",
                    20,
                    "a live session on the cloud again",
                )
                assert isinstance(back, SessionStatus)
                assert cloud.connections, "the cloud never saw the session"
                assert engine.events_of("session.finish"), "the engine's session was not finished cleanly"
                feed_until(capture, cloud, lambda: cloud.appends > 0)


def test_a_refused_key_is_not_an_outage(rundir: Path) -> None:
    """The cloud answers, with 401: falling back would hide what staff must fix."""
    with running_in_thread(api_key="a-different-key") as cloud, running_in_thread() as engine:
        config = _config(rundir, cloud.port, engine.port)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
            failed = tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.state == "failed", 10, "the refusal")
            tap.pump(FALLBACK_AFTER_S + 3.0)
            assert not engine.connections, "fell back on a refused key"
            assert isinstance(failed, SessionStatus) and failed.backend == "cloud"
            assert "API key" in failed.detail


def test_the_engine_stands_by_only_for_auto_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ("capture", "session", "playback", "control")  # no camera source by default
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    keyed = config_mod.validate({"service": {"backend": "auto"}})
    assert backend.resolve(keyed) == "cloud" and backend.processes(keyed) == (*base, "engine")
    never = config_mod.validate({"service": {"backend": "auto", "fallback_after_s": 0}})
    assert backend.processes(never) == base
    cloud = config_mod.validate({"service": {"backend": "cloud"}})
    assert backend.processes(cloud) == base
    monkeypatch.delenv("DASHSCOPE_API_KEY")
    keyless = config_mod.validate({"service": {"backend": "auto"}})
    assert backend.resolve(keyless) == "local" and backend.processes(keyless) == (*base, "engine")


def test_never_falls_back_to_an_engine_that_cannot_serve_the_pair(rundir: Path) -> None:
    """zh → ja: the engine refuses it (engine_languages), so the box keeps trying the cloud.

    The engine stand-in is a simulator that refuses every session.update, as the real engine does
    for a pair it cannot translate; the box must not even connect to it, must say why on its
    status, and must be live on the cloud soon after the cloud comes back.
    """
    cloud_port = free_port()
    with running_in_thread(faults=Faults.parse("reject_update=cannot translate zh into ja")) as engine:
        config = write_config(
            rundir / "tolk.toml",
            f"ws://127.0.0.1:{cloud_port}/api-ws/v1/realtime",
            target="ja",
            service=f'backend = "auto"\nfallback_after_s = {FALLBACK_AFTER_S}',
            extra=f'[engine]\nlisten = "127.0.0.1:{engine.port}"',
        )
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
            said = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and "cannot translate zh into ja" in m.detail,
                FALLBACK_AFTER_S + 20,
                "the status saying the engine cannot stand in",
            )
            assert isinstance(said, SessionStatus) and said.backend == "cloud", said
            tap.pump(2.0)
            assert engine.attempts == 0, "fell back to an engine that refuses the pair"
            with running_in_thread(port=cloud_port, api_key=KEY) as cloud:
                back = tap.wait_for(
                    lambda m: isinstance(m, SessionStatus) and m.state == "live", 40, "live on the cloud"
                )
                assert isinstance(back, SessionStatus) and back.backend == "cloud", back
                assert cloud.connections
            assert engine.attempts == 0


def test_an_engine_that_refuses_sends_the_box_back_to_the_cloud(rundir: Path) -> None:
    """On the engine, a refusal (a model missing, say) is no reason to wait a minute: the cloud is
    tried again at once, and the box is live on it soon after it answers."""
    cloud_port = free_port()
    with running_in_thread(faults=Faults.parse("reject_update=model missing")) as engine:
        config = _config(rundir, cloud_port, engine.port)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
            wait_until(lambda: engine.attempts > 0, FALLBACK_AFTER_S + 15, 0.1, "the fallback to the engine")
            seen = len(tap.seen)
            tap.wait_for(
                lambda m: tap.seen.index(m) >= seen and isinstance(m, SessionStatus) and m.backend == "cloud",
                10,
                "the cloud tried again after the engine refused",
            )
            with running_in_thread(port=cloud_port, api_key=KEY) as cloud:
                back = tap.wait_for(
                    lambda m: isinstance(m, SessionStatus) and m.state == "live", 40, "live on the cloud"
                )
                assert isinstance(back, SessionStatus) and back.backend == "cloud", back
                assert cloud.connections
