"""A visitor's language through the real session process: the ``visitor-language`` command
(POST /api/visitor-language, the screen's buttons) moves the live session to it, and the
session goes back to the configured target once the room has been quiet ``captions_clear_s``."""

from __future__ import annotations

import time
from pathlib import Path

from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import Caption, Command, CommandAck, SessionStatus, SpeechActivity
from services.simulator import running_in_thread
from tests.dialogue import make_turns, publish_paced
from tests.helpers import wait_until
from tests.services.session_rig import KEY, feed_until, session_process, write_config
from tests.services.session_rig import capture as capture  # the fixture

QUIET_S = 2.0


def _target(sim: object) -> str:
    return str(sim.events_of("session.update")[-1]["session"]["translation"]["language"])  # type: ignore[attr-defined]


def test_a_visitor_picks_a_language_and_the_quiet_room_brings_the_staffs_back(
    rundir: Path, capture: Bus, tmp_path: Path
) -> None:
    chinese = make_turns(tmp_path, ["zh"])[0].pcm + bytes(640 * 60)
    control = Bus("control", rundir)
    try:
        with running_in_thread(api_key=KEY) as sim:
            extra = f'[control]\nvisitor_languages = ["ja", "de"]\ncaptions_clear_s = {QUIET_S}\n'
            config = write_config(rundir / "tolk.toml", sim.url, extra=extra)
            with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
                feed_until(capture, sim, lambda: sim.appends > 0)
                # Someone is speaking: the choice stays however long that lasts.
                capture.publish(SpeechActivity(speaking=True))
                while _target(sim) != "ja":  # repeated until heard (the slow joiner)
                    control.publish(Command(name="visitor-language", args={"language": "ja"}, id="v1"))
                    feed_until(capture, sim, lambda: True)
                    tap.pump(0.05)
                assert len(sim.connections) == 1  # a session.update on the live connection
                ack = tap.wait_for(lambda m: isinstance(m, CommandAck) and m.id == "v1", what="the ack")
                assert isinstance(ack, CommandAck) and ack.ok
                status = tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.target == "ja", what="target ja")
                assert isinstance(status, SessionStatus)

                publish_paced(capture, chinese, speedup=4.0)
                translation = tap.wait_for(
                    lambda m: isinstance(m, Caption) and m.kind == "translation" and m.final, what="the translation"
                )
                assert isinstance(translation, Caption) and translation.language == "ja"
                assert translation.text.endswith("zh → ja")

                # Not offered: refused, and nothing changes.
                control.publish(Command(name="visitor-language", args={"language": "fr"}, id="v2"))
                refused = tap.wait_for(lambda m: isinstance(m, CommandAck) and m.id == "v2", what="the refusal")
                assert isinstance(refused, CommandAck) and not refused.ok and "not offered" in refused.detail
                assert _target(sim) == "ja"

                # The room falls quiet: back to the staff's target after QUIET_S, not before.
                time.sleep(QUIET_S + 0.5)
                assert _target(sim) == "ja"  # still speaking all this while
                capture.publish(SpeechActivity(speaking=False))
                quiet_at = time.monotonic()
                wait_until(lambda: feed_until(capture, sim, lambda: True) or _target(sim) == "en", 15,
                           what="the configured target again")  # fmt: skip
                assert time.monotonic() - quiet_at >= QUIET_S - 0.2
                assert len(sim.connections) == 1
    finally:
        control.close()
    assert sim.violations == []


def test_visitor_languages_are_checked_against_the_model_and_the_mode() -> None:
    def problems(data: dict[str, object]) -> str:
        try:
            config_mod.validate(data)
        except config_mod.ConfigError as exc:
            return " ".join(exc.problems)
        return ""

    assert not problems({"control": {"visitor_languages": ["ja", "de", "th"]}})
    assert "cannot translate into nl" in problems({"control": {"visitor_languages": ["nl"]}})
    assert not problems(
        {"service": {"model": "qwen3.8-livetranslate-flash-realtime"}, "control": {"visitor_languages": ["nl"]}}
    )
    both = {"languages": {"mode": "conversation"}, "control": {"visitor_languages": ["ja"]}}
    assert "conversation" in problems(both)
    assert "twice" in problems({"control": {"visitor_languages": ["ja", "ja"]}})
    voice = {"output": {"voice": "Kiki"}, "languages": {"target": "yue"}, "control": {"visitor_languages": ["ja"]}}
    assert "cannot speak ja" in problems(voice)
