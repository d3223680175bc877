"""The admin page in Chromium, with a real control and a real session process connected to the
protocol simulator: a language chosen on the page reaches the stored config, `GET /api/config`
and the live session's `session.update`; a choice the box refuses is shown in words and
changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.bus import Bus
from services.simulator import Simulator, running_in_thread
from tests.helpers import NotifySocket, espeak_wav, running, service_env, tolk_cmd, wait_until, wav_pcm
from tests.pages.conftest import FULL_HD, KIOSK, ControlProcess, start_control
from tests.services.session_rig import PERIOD, feed_until, publish
from tests.services.session_rig import capture as capture  # the fixture

KEY = "sk-admin-test-31d7e0"
QUIET_S = 3


@pytest.fixture
def box(rundir: Path, notify: NotifySocket) -> Iterator[tuple[ControlProcess, Simulator]]:
    with running_in_thread(api_key=KEY) as sim:
        config = (
            f'[languages]\nsource = "zh"\ntarget = "en"\n\n'
            f'[service]\nurl = "{sim.url}"\nconnect_timeout_s = 3\nfinish_timeout_s = 3\n'
        )
        for control in start_control(rundir, notify, config, DASHSCOPE_API_KEY=KEY):
            env = service_env(rundir, DASHSCOPE_API_KEY=KEY)
            cmd = tolk_cmd("service", "session", "--config", str(control.config))
            with running(cmd, env, rundir / "session.log"):
                wait_until(lambda: len(sim.events_of("session.update")) == 1, 15, what="the first session.update")
                yield control, sim


def _config(control: ControlProcess) -> dict[str, Any]:
    return dict(httpx.get(control.url + "/api/config", timeout=5).json())


def test_admin_changes_the_live_session(browser: Any, box: tuple[ControlProcess, Simulator]) -> None:
    control, sim = box
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(control.url + "/admin")
        page.wait_for_selector("body[data-ready='true']", timeout=10000)
        assert page.locator("#target").input_value() == "en"
        # The status card fills from /api/status.
        page.locator("#session-state").get_by_text("live").wait_for(timeout=10000)

        # A text-only target forces captions and offers no voice.
        page.select_option("#target", "th")
        assert page.locator("#mode").input_value() == "text"
        assert page.locator("#mode").is_disabled() and page.locator("#voice").is_disabled()
        assert "captions only" in page.locator("#mode-note").inner_text()
        # Voices follow the target: Cantonese has Kiki only.
        page.select_option("#target", "yue")
        voices = page.eval_on_selector_all("#voice option", "os => os.map(o => o.value)")
        assert voices == ["", "Kiki"] and not page.locator("#voice").is_disabled()

        page.select_option("#target", "ja")
        page.select_option("#voice", "Nofish")
        page.click("#save")
        page.locator("#message.ok").get_by_text("Saved").wait_for(timeout=5000)
        served = _config(control)
        assert served["languages"]["target"] == "ja" and served["output"]["voice"] == "Nofish"
        wait_until(lambda: len(sim.events_of("session.update")) >= 2, 10, what="session.update for ja")
        update = sim.events_of("session.update")[-1]["session"]
        assert update["translation"] == {"language": "ja"} and update["voice"] == "Nofish"
        assert len(sim.connections) == 1  # applied to the live session, no reconnect
        page.screenshot(path=str(Path("test-artifacts") / "admin-saved.png"), full_page=True)

        # A page that offers something the box refuses (here: a stale voice list) gets the
        # box's reason in words, and nothing changes anywhere.
        updates = len(sim.events_of("session.update"))
        page.eval_on_selector("#voice", "s => s.append(new Option('Kiki', 'Kiki'))")
        page.select_option("#voice", "Kiki")
        page.click("#save")
        error = page.locator("#message.error")
        error.wait_for(timeout=5000)
        assert "Config refused" in error.inner_text()
        assert "output.voice = 'Kiki' cannot speak ja (Japanese)" in error.inner_text()
        assert _config(control) == served
        page.wait_for_timeout(500)
        assert len(sim.events_of("session.update")) == updates

        page.set_viewport_size(KIOSK)
        page.screenshot(path=str(Path("test-artifacts") / "admin-refused-800x480.png"), full_page=True)
        # No playback runs beside this session: the page says so, not "sent".
        page.click("#speaker-test")
        error.locator("strong").get_by_text("Playback did not answer 'speaker-test'").wait_for(timeout=8000)
    finally:
        page.close()
    assert KEY not in control.log.read_text()


def test_the_model_choice_brings_its_languages_and_reconnects_once(
    browser: Any, box: tuple[ControlProcess, Simulator]
) -> None:
    control, sim = box
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(control.url + "/admin")
        page.wait_for_selector("body[data-ready='true']", timeout=10000)
        assert page.locator("#model").input_value() == "qwen3-livetranslate-flash-realtime"
        spoken = "#target optgroup[label='Speech and captions'] option"
        assert "nl" not in page.eval_on_selector_all(spoken, "os => os.map(o => o.value)")
        assert "auto" not in page.eval_on_selector_all("#source option", "os => os.map(o => o.value)")

        # qwen3.8 speaks Dutch, detects the source, and has no Cantonese speech.
        page.select_option("#model", "qwen3.8-livetranslate-flash-realtime")
        assert "nl" in page.eval_on_selector_all(spoken, "os => os.map(o => o.value)")
        assert "yue" not in page.eval_on_selector_all(spoken, "os => os.map(o => o.value)")
        assert "finds the spoken language itself" in page.locator("#model-note").inner_text()
        page.select_option("#source", "auto")
        page.select_option("#target", "nl")
        assert page.locator("#mode").input_value() == "audio"
        page.click("#save")
        page.locator("#message.ok").get_by_text("Saved").wait_for(timeout=5000)
        served = _config(control)
        assert served["service"]["model"] == "qwen3.8-livetranslate-flash-realtime"
        assert (served["languages"]["source"], served["languages"]["target"]) == ("auto", "nl")

        # A new model is a new connection, once, in that model's shape.
        wait_until(lambda: len(sim.connections) == 2 and len(sim.events_of("session.update")) >= 2, 15,
                   what="a reconnect with qwen3.8")  # fmt: skip
        assert sim.connections[-1].model == "qwen3.8-livetranslate-flash-realtime"
        update = sim.events_of("session.update")[-1]["session"]
        assert update["output_modalities"] == ["text", "audio"] and update["translation"] == {"language": "nl"}
        assert not {"modalities", "input_audio_format", "input_audio_transcription"} & set(update)
        assert not sim.violations, sim.violations

        # Another language on the same model is a session.update on the same connection.
        page.select_option("#target", "sv")
        page.click("#save")
        wait_until(lambda: sim.events_of("session.update")[-1]["session"]["translation"] == {"language": "sv"},
                   10, what="session.update for sv")  # fmt: skip
        assert len(sim.connections) == 2
    finally:
        page.close()


def test_first_boot_the_key_is_pasted_on_the_admin_page(
    browser: Any, rundir: Path, notify: NotifySocket, capture: Bus, tmp_path: Path
) -> None:
    speech = wav_pcm(espeak_wav("ni hao, welcome to the museum", tmp_path / "speech.wav"))
    with running_in_thread(api_key=KEY) as sim:
        config = (
            '[languages]\nsource = "zh"\ntarget = "en"\n\n'
            f'[service]\nbackend = "cloud"\nurl = "{sim.url}"\nconnect_timeout_s = 3\nfinish_timeout_s = 3\n'
            f"[control]\ncaptions_clear_s = {QUIET_S}\n"
        )
        for control in start_control(rundir, notify, config):  # no key anywhere
            env = service_env(rundir)
            cmd = tolk_cmd("service", "session", "--config", str(control.config))
            with running(cmd, env, rundir / "session.log"):
                screen = browser.new_page(viewport=KIOSK)
                admin = browser.new_page(viewport={"width": 1280, "height": 900})
                try:
                    screen.goto(control.url + "/")
                    screen.locator("#banner-text").get_by_text("No API key set").wait_for(timeout=15000)
                    assert "admin page" in screen.locator("#banner-detail").inner_text()
                    # The setup view: where to go, as text and as a QR code (on loopback, no code needed).
                    screen.locator("#setup").wait_for(timeout=5000)
                    assert screen.locator("#setup-url").inner_text() == control.url + "/admin"
                    assert screen.locator("#setup-qr svg").count() == 1
                    assert screen.locator("#setup-code-line").is_hidden()
                    screen.screenshot(path=str(Path("test-artifacts") / "screen-setup-800x480.png"))
                    screen.set_viewport_size(FULL_HD)
                    screen.screenshot(path=str(Path("test-artifacts") / "screen-setup-1920x1080.png"))
                    screen.set_viewport_size(KIOSK)

                    admin.goto(control.url + "/admin")
                    admin.wait_for_selector("body[data-ready='true']", timeout=10000)
                    admin.locator("#key-state").get_by_text("No key is set").wait_for(timeout=5000)
                    admin.fill("#api-key", KEY)
                    admin.click("#save-key")
                    admin.locator("#message.ok").get_by_text("Key saved").wait_for(timeout=5000)
                    assert admin.locator("#api-key").input_value() == ""  # never shown again
                    admin.locator("#key-state").get_by_text("entered on the admin page").wait_for(timeout=5000)

                    # Within seconds the session is live with it, and the screen's banner is gone.
                    wait_until(lambda: sim.connections and sim.connections[-1].authorization == f"Bearer {KEY}",
                               15, what="a connection with the key")  # fmt: skip
                    admin.locator("#session-state").get_by_text("live").wait_for(timeout=15000)
                    screen.locator("#banner").wait_for(state="hidden", timeout=15000)
                    screen.locator("#setup").wait_for(state="hidden", timeout=5000)
                    assert KEY not in admin.content() and KEY not in screen.content()

                    # Live captions of speech on the screen, gone after QUIET_S of quiet.
                    feed_until(capture, sim, lambda: sim.appends > 0)
                    publish(capture, bytes(PERIOD * 10) + speech + bytes(PERIOD * 60))
                    screen.locator(".utterance .translation").get_by_text("[simulated]").wait_for(timeout=15000)
                    screen.screenshot(path=str(Path("test-artifacts") / "screen-first-captions-800x480.png"))
                    screen.wait_for_function("!document.querySelector('.utterance')", timeout=(QUIET_S + 8) * 1000)
                finally:
                    screen.close()
                    admin.close()
            assert KEY not in control.log.read_text() and KEY not in (rundir / "session.log").read_text()
