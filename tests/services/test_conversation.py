"""Conversation mode through the real session process, against the simulator that reports the
language it heard (its marker-tone convention, services/simulator/language.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import Caption, Command, Message
from services.control.api import create_app
from services.control.buttons import DirectionButtons
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from services.simulator import running_in_thread
from tests.dialogue import alternating, make_turns, publish_paced, run_dialogue
from tests.helpers import AnsweringBus, wait_until
from tests.services.session_rig import KEY, feed_until, session_process, write_config

TURNS = 22
OTHER = {"zh": "en", "en": "zh"}


@pytest.fixture
def capture(rundir: Path) -> Iterator[Bus]:
    bus = Bus("capture", rundir)
    yield bus
    bus.close()


@pytest.mark.parametrize("model", ["qwen3-livetranslate-flash-realtime", "qwen3.8-livetranslate-flash-realtime"])
def test_a_two_language_dialogue_is_translated_each_way_once_per_turn(
    rundir: Path, capture: Bus, tmp_path: Path, model: str
) -> None:
    # Mostly turn about; three times a person says a second sentence (the box must notice).
    # On qwen3.8 the session names no source language: the one each transcription reports leads.
    turns = make_turns(tmp_path, alternating(TURNS, repeats=(5, 12, 17)))
    with running_in_thread(api_key=KEY) as sim:
        config = write_config(rundir / "tolk.toml", sim.url, service=f'model = "{model}"')
        text = config.read_text().replace('target = "en"', 'target = "en"\nmode = "conversation"')
        config.write_text(text)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
            dialogue = run_dialogue(capture, sim, tap, turns, pause_s=1.5, speedup=2.0)

    assert sim.violations == []
    spoken = [t.language for t in turns]
    # Exactly one translation per turn, each into the other side's language, naming its direction.
    assert len(dialogue.translations) == TURNS, [c.text for c in dialogue.translations]
    right = [
        c.language == OTHER[lang] and c.text.endswith(f"{lang} → {OTHER[lang]}")
        for lang, c in zip(spoken, dialogue.translations, strict=True)
    ]
    assert sum(right) / TURNS >= 0.95, [c.text for c in dialogue.translations]
    # The wrong-direction responses were heard by no one: one spoken reply per turn.
    assert dialogue.audio_responses == TURNS
    # The direction follows on the live session (session.update), never by reconnecting.
    updates = sim.events_of("session.update")
    assert len(updates) >= TURNS and len(sim.connections) == 1
    # After the last translation the box expects the other person to answer: it translates into
    # the language of the last speaker now.
    assert updates[-1]["session"]["translation"] == {"language": spoken[-1]}


def test_a_button_holds_the_direction_until_released(rundir: Path, capture: Bus, tmp_path: Path) -> None:
    """The ``direction`` command (POST /api/direction, the screen's and GPIO buttons) on the bus."""
    chinese = make_turns(tmp_path, ["zh"])[0].pcm + bytes(640 * 60)
    control = Bus("control", rundir)
    try:
        with running_in_thread(api_key=KEY) as sim:
            config = write_config(rundir / "tolk.toml", sim.url)
            sides = 'target = "en"\nmode = "conversation"\nexpect_turns = false'
            config.write_text(config.read_text().replace('target = "en"', sides))
            with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
                feed_until(capture, sim, lambda: sim.appends > 0)

                def translations() -> list[Caption]:
                    return [m for m in tap.of(Caption) if m.kind == "translation" and m.final]

                # Pressed until the session says so (the slow joiner may lose the first one).
                while sim.events_of("session.update")[-1]["session"]["translation"] != {"language": "zh"}:
                    control.publish(Command(name="direction", args={"direction": "b-to-a"}))
                    feed_until(capture, sim, lambda: True)
                    tap.pump(0.05)
                updates = len(sim.events_of("session.update"))
                # Held en → zh: even Chinese is taken as English; the person holding it decides.
                publish_paced(capture, chinese, speedup=4.0)
                wait_until(lambda: tap.pump(0.05) or len(translations()) == 1, what="the held translation")
                assert translations()[0].text.endswith("en → zh") and translations()[0].language == "zh"
                assert len(sim.events_of("session.update")) == updates

                # Released: automatic again. Chinese is heard as Chinese and goes the other way.
                control.publish(Command(name="direction", args={"direction": "auto"}))
                publish_paced(capture, bytes(640 * 10), speedup=1.0)
                publish_paced(capture, chinese, speedup=4.0)
                wait_until(lambda: tap.pump(0.05) or len(translations()) == 2, what="the automatic translation")
                assert translations()[1].text.endswith("zh → en") and translations()[1].language == "en"
                assert sim.events_of("session.update")[-1]["session"]["translation"] == {"language": "en"}
    finally:
        control.close()
    assert sim.violations == []


def test_conversation_config_is_checked_with_clear_messages() -> None:
    ok = config_mod.validate({"languages": {"source": "th", "target": "de", "mode": "conversation"}})
    assert ok.languages.mode == "conversation" and ok.modalities == ["text", "audio"]  # speech toward de
    with pytest.raises(config_mod.ConfigError, match="two different languages"):
        config_mod.validate({"languages": {"source": "en", "target": "en", "mode": "conversation"}})
    with pytest.raises(config_mod.ConfigError, match="th \\(Thai\\) is text-only"):
        config_mod.validate(
            {
                "languages": {"source": "th", "target": "de", "mode": "conversation"},
                "output": {"modalities": ["text", "audio"]},
            }
        )
    with pytest.raises(config_mod.ConfigError, match="cannot speak en"):
        config_mod.validate(
            {"languages": {"source": "zh", "target": "en", "mode": "conversation"}, "output": {"voice": "Dylan"}}
        )
    with pytest.raises(config_mod.ConfigError, match=r"languages\.direction"):
        config_mod.validate({"languages": {"direction": "sideways"}})


@pytest.mark.parametrize("mode", ["conversation", "one-way"])
async def test_the_direction_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    cfg = config_mod.validate({"languages": {"source": "zh", "target": "en", "mode": mode}})
    status = StatusAggregator(("session", "control"))
    bus = AnsweringBus(status)
    published: list[Message] = bus.published
    app = create_app(status, ConfigStore(cfg, None), bus)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        pressed = await http.post("/api/direction", json={"direction": "b-to-a"})
        bad = await http.post("/api/direction", json={"direction": "sideways"})
    assert bad.status_code == 422
    commands: list[Any] = [m for m in published if isinstance(m, Command)]
    if mode == "one-way":
        assert pressed.status_code == 409 and "conversation" in pressed.text and commands == []
        return
    assert pressed.status_code == 202 and pressed.json()["detail"] == "the session translates en → zh"
    assert [(c.name, c.args) for c in commands] == [("direction", {"direction": "b-to-a"})]


def test_gpio_buttons_hold_the_direction_while_pressed() -> None:
    """Two buttons wired to ground, through gpiozero's own mock pins (no Pi here)."""
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()
    sent: list[str] = []
    buttons = DirectionButtons([17, 27], sent.append, pin_factory=factory)
    try:
        for pin, expected in ((17, ["a-to-b", "auto"]), (27, ["b-to-a", "auto"])):
            sent.clear()
            factory.pin(pin).drive_low()  # pressed: the pin is pulled to ground
            wait_until(lambda: len(sent) == 1, what="the press")
            factory.pin(pin).drive_high()
            wait_until(lambda: len(sent) == 2, what="the release")
            assert sent == expected
    finally:
        buttons.close()
    with pytest.raises(config_mod.ConfigError, match="two different GPIO pins"):
        config_mod.validate({"languages": {"direction_buttons": [17, 17]}})
