"""One box on a real Mosquitto (TLS, password file): control, session (against the simulator), capture
and the mqtt process as real processes, and a staff member's client on every topic.

What staff see and do: the box appears in Home Assistant's discovery; ``config/set`` of a target
language reaches the live session as a ``session.update``; an invalid patch changes nothing and says
why, in the HTTP API's own words; commands are answered by the process that carries them out; the
API key never appears on any topic; the box restarted with the broker, and killed, is seen to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from daemon.bus import Bus
from daemon.messages import Caption
from services.simulator import Simulator, running_in_thread
from tests.helpers import espeak_wav, free_port, running, service_env, tolk_cmd, wait_until, wav_pcm
from tests.services.mqtt_rig import BOX_PASSWORD, Broker, Watcher, needs_mosquitto
from tests.services.mqtt_rig import broker as broker  # the fixture
from tests.services.session_rig import PERIOD, SessionTap, feed_until, publish, write_config
from tests.services.session_rig import capture as capture  # the fixture

KEY = "sk-fleet-test-4b8e21c9d7"
BOX = "box-one"
PREFIX = f"tolk/{BOX}"
DISCOVERY = f"homeassistant/device/tolk_{BOX}/config"

pytestmark = needs_mosquitto


def _box_config(rundir: Path, broker: Broker, sim_url: str, listen: str) -> Path:
    """No microphone (capture waits for it, and still carries out mute), no engine standing by."""
    tables = f'[audio]\ncapture_device = "tolk_test_no_such_device"\n[control]\nlisten = "{listen}"\n'
    return write_config(
        rundir / "tolk.toml", sim_url, extra=tables + broker.box_config(BOX), service="fallback_after_s = 0"
    )


def _store_key(rundir: Path) -> None:
    """The key as the admin page stores it: every process of the box can read it, the mqtt one too."""
    key = rundir / "state" / "api-key"
    key.write_text(KEY + "\n")
    key.chmod(0o600)


@contextlib.contextmanager
def _box(rundir: Path, config: Path, *names: str) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    env = service_env(rundir)
    procs = {}
    with contextlib.ExitStack() as stack:
        for name in names:
            cmd = tolk_cmd("service", name, "--config", str(config))
            procs[name] = stack.enter_context(running(cmd, env, rundir / f"{name}.log"))
        try:
            yield procs
        except BaseException:
            for name in names:
                print(f"--- {name} log (tail) ---\n" + (rundir / f"{name}.log").read_text(errors="replace")[-4000:])
            raise


def _languages(sim: Simulator) -> list[str]:
    return [e["session"]["translation"]["language"] for e in sim.events_of("session.update")]


def test_the_box_on_the_broker(rundir: Path, broker: Broker) -> None:
    _store_key(rundir)
    watcher = Watcher(broker)
    port = free_port()
    try:
        with running_in_thread(api_key=KEY) as sim:
            config = _box_config(rundir, broker, sim.url, f"127.0.0.1:{port}")
            with _box(rundir, config, "control", "session", "capture", "mqtt"):
                _discovered(watcher)
                _state_follows_the_box(watcher)
                wait_until(lambda: _languages(sim), 20, what="a live session")
                _a_target_language_reaches_the_live_session(watcher, sim)
                _an_invalid_patch_changes_nothing_and_says_why(watcher, sim, rundir, port)
                _commands_are_answered_by_their_process(watcher, sim)
                _home_assistant_coming_back_is_told_again(watcher)
                _the_key_is_refused_and_never_echoed(watcher)
        everything = watcher.everything()
    finally:
        watcher.close()
    said_by_the_box = [s for s in everything if s.topic not in (f"{PREFIX}/config/set", f"{PREFIX}/command")]
    assert len(said_by_the_box) > 20
    for seen in said_by_the_box:  # the key and the broker password never travel, on any topic
        for secret in (KEY, BOX_PASSWORD):
            assert secret.encode() not in seen.payload and secret not in seen.topic, (seen.topic, seen.payload)
    assert sim.violations == []


def _discovered(watcher: Watcher) -> None:
    assert watcher.wait_for(lambda s: s.topic == f"{PREFIX}/availability" and s.payload == b"online").retain
    found = watcher.wait_for(lambda s: s.topic == DISCOVERY and bool(s.payload), what="the discovery config")
    assert found.retain
    config = found.json()
    assert config["dev"]["ids"] == [f"tolk_{BOX}"] and config["o"]["name"] == "tolk"
    assert config["state_topic"] == f"{PREFIX}/state" and config["availability_topic"] == f"{PREFIX}/availability"
    components = config["cmps"]
    platforms = {key: c["p"] for key, c in components.items()}
    assert platforms == {
        "status": "sensor",
        "session": "sensor",
        "source": "select",
        "target": "select",
        "mute": "switch",
        "tokens_per_hour": "sensor",
        "restart_session": "button",
    }
    ids = [c["unique_id"] for c in components.values()]
    assert len(set(ids)) == len(ids) and all(i.startswith(f"tolk_{BOX}_") for i in ids)
    target = components["target"]
    assert target["command_topic"] == f"{PREFIX}/config/set" and "ja" in target["options"]
    # What Home Assistant would send when someone picks Japanese: a patch of the config's shape.
    assert json.loads(target["command_template"].replace("{{ value }}", "ja")) == {"languages": {"target": "ja"}}
    assert components["mute"]["command_topic"] == f"{PREFIX}/command"


def _state_follows_the_box(watcher: Watcher) -> None:
    def live(doc: dict) -> bool:
        return doc["session"]["state"] == "live" and all(doc["processes"][n]["up"] for n in ("control", "session"))

    state = watcher.on(f"{PREFIX}/state", 30, where=live)
    assert state["box"] == BOX and state["model"] == "qwen3-livetranslate-flash-realtime"
    assert state["languages"]["source"] == "zh" and state["languages"]["target"] == "en"
    assert set(state["processes"]) == {"capture", "session", "playback", "control", "mqtt"}
    assert state["muted"] is False and isinstance(state["tokens_per_hour"], float)
    # No playback process runs here: the fleet is told, by name.
    missing = watcher.on(f"{PREFIX}/state", where=lambda d: "playback: no heartbeat" in d["errors"])
    assert missing["status"] == "problem"


def _a_target_language_reaches_the_live_session(watcher: Watcher, sim: Simulator) -> None:
    connections = len(sim.connections)
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/config/set", json.dumps({"languages": {"target": "ja"}}))
    result = watcher.on(f"{PREFIX}/config/result", since=mark)
    assert result["ok"] is True and result["changed"] == ["languages"], result
    wait_until(lambda: _languages(sim)[-1] == "ja", 15, what="a session.update into ja")
    assert len(sim.connections) == connections  # on the live connection, not a reconnect
    # The config at once, then the session's word that it translates into it.
    watcher.on(f"{PREFIX}/state", since=mark, where=lambda d: d["languages"]["target"] == "ja")
    watcher.on(f"{PREFIX}/state", since=mark, where=lambda d: d["languages"]["translating_into"] == "ja")


def _an_invalid_patch_changes_nothing_and_says_why(watcher: Watcher, sim: Simulator, rundir: Path, port: int) -> None:
    overlay = rundir / "state" / "config.toml"
    stored, updates = overlay.read_text(), len(sim.events_of("session.update"))
    text_only_with_speech = {"languages": {"target": "th"}, "output": {"modalities": ["text", "audio"]}}
    for patch, why in (
        ({"languages": {"target": "xx"}}, "languages.target"),
        (text_only_with_speech, "text-only"),
        ({"audio": {"period_ms": "fast"}}, "audio.period_ms"),
    ):
        mark = watcher.mark()
        watcher.publish(f"{PREFIX}/config/set", json.dumps(patch))
        result = watcher.on(f"{PREFIX}/config/result", since=mark)
        assert result["ok"] is False and result["error"] == "config refused", result
        assert any(why in problem for problem in result["problems"]), result
        # The HTTP API refuses the same body with the same words: one validation, not two.
        http = httpx.patch(f"http://127.0.0.1:{port}/api/config", json=patch, timeout=10)
        assert http.status_code == 422 and http.json()["problems"] == result["problems"]
    not_for_mqtt = (
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"mqtt": {"captions": true}}', "[mqtt]"),  # a mistake there would cut the box off
    )
    for payload, why in not_for_mqtt:
        mark = watcher.mark()
        watcher.publish(f"{PREFIX}/config/set", payload)
        result = watcher.on(f"{PREFIX}/config/result", since=mark)
        assert result["ok"] is False and why in result["problems"][0], result
    # Retained, a request would be applied again at every reconnect: refused (then cleared).
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/config/set", json.dumps({"languages": {"target": "de"}}), retain=True)
    result = watcher.on(f"{PREFIX}/config/result", since=mark)
    assert result["ok"] is False and result["error"] == "retained request"
    watcher.publish(f"{PREFIX}/config/set", b"", retain=True)
    assert overlay.read_text() == stored and len(sim.events_of("session.update")) == updates
    assert httpx.get(f"http://127.0.0.1:{port}/api/config", timeout=10).json()["languages"]["target"] == "ja"


def _commands_are_answered_by_their_process(watcher: Watcher, sim: Simulator) -> None:
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/command", "mute")
    result = watcher.on(f"{PREFIX}/command/result", since=mark)
    assert result == {"ok": True, "command": "mute", "detail": "microphone muted"}  # capture's own words
    watcher.on(f"{PREFIX}/state", since=mark, where=lambda d: d["muted"] is True)
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/command", json.dumps({"command": "unmute"}))
    assert watcher.on(f"{PREFIX}/command/result", since=mark)["detail"] == "microphone unmuted"
    watcher.on(f"{PREFIX}/state", since=mark, where=lambda d: d["muted"] is False)

    connections = len(sim.connections)
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/command", "restart-session")
    result = watcher.on(f"{PREFIX}/command/result", since=mark)
    assert result["ok"] is True and result["detail"] == "the session reconnects"
    wait_until(lambda: len(sim.connections) > connections, 15, what="a new connection")

    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/command", "speaker-test")  # exists on the HTTP API, not offered here
    result = watcher.on(f"{PREFIX}/command/result", since=mark)
    assert result["ok"] is False and "restart-session" in result["problems"][0]


def _home_assistant_coming_back_is_told_again(watcher: Watcher) -> None:
    mark = watcher.mark()
    watcher.publish("homeassistant/status", "online")
    again = watcher.wait_for(lambda s: s.topic == DISCOVERY and bool(s.payload), since=mark, what="discovery again")
    assert again.json()["cmps"]["target"]["unique_id"] == f"tolk_{BOX}_target"


def _the_key_is_refused_and_never_echoed(watcher: Watcher) -> None:
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/config/set", json.dumps({"service": {"api_key": KEY}}))
    result = watcher.on(f"{PREFIX}/config/result", since=mark)
    assert result["ok"] is False and "secrets cannot be set" in result["problems"][0]
    # Control's refusal quotes the value it refuses; the box masks its key in it before it leaves.
    mark = watcher.mark()
    watcher.publish(f"{PREFIX}/config/set", json.dumps({"languages": {"target": KEY}}))
    result = watcher.on(f"{PREFIX}/config/result", since=mark)
    assert result["ok"] is False and "'********' is not a language code" in result["problems"][0], result


def test_the_box_comes_back_with_the_broker_and_its_death_is_told(rundir: Path, broker: Broker) -> None:
    config = _box_config(rundir, broker, "ws://127.0.0.1:9", f"127.0.0.1:{free_port()}")
    with _box(rundir, config, "control", "mqtt") as procs:
        watcher = Watcher(broker)
        try:
            watcher.on(DISCOVERY)
            watcher.on(f"{PREFIX}/state", where=lambda d: d["processes"]["control"]["up"])
        finally:
            watcher.close()

        broker.stop()  # every retained message is gone with it (no persistence)
        time.sleep(1.0)  # an outage, however short, that the box must notice
        broker.start()
        watcher = Watcher(broker, "watcher-after")
        try:
            online = watcher.wait_for(lambda s: s.topic == f"{PREFIX}/availability" and s.payload == b"online", 60)
            assert online.retain
            watcher.on(DISCOVERY, 30)  # published again: the broker had forgotten it
            watcher.on(f"{PREFIX}/state", 30)

            # Killed without a word: the broker's last will says it.
            mark = watcher.mark()
            os.kill(procs["mqtt"].pid, signal.SIGKILL)
            procs["mqtt"].wait(10)
            dead = watcher.wait_for(
                lambda s: s.topic == f"{PREFIX}/availability" and s.payload == b"offline", 30, since=mark
            )
            assert dead.retain
        finally:
            watcher.close()


def test_a_clean_stop_says_offline_itself(rundir: Path, broker: Broker) -> None:
    config = _box_config(rundir, broker, "ws://127.0.0.1:9", f"127.0.0.1:{free_port()}")
    watcher = Watcher(broker)
    try:
        with _box(rundir, config, "mqtt") as procs:
            watcher.wait_for(lambda s: s.topic == f"{PREFIX}/availability" and s.payload == b"online")
            mark = watcher.mark()
            procs["mqtt"].send_signal(signal.SIGTERM)
            assert procs["mqtt"].wait(15) == 0
        offline = watcher.wait_for(lambda s: s.topic == f"{PREFIX}/availability", since=mark)
        assert offline.payload == b"offline" and offline.retain
    finally:
        watcher.close()


def test_captions_only_when_allowed_and_settings_change_live(
    rundir: Path, broker: Broker, capture: Bus, tmp_path: Path
) -> None:
    speech = wav_pcm(espeak_wav("ni hao, this is the kiosk speaking", tmp_path / "speech.wav"))
    speech = speech[: len(speech) - len(speech) % PERIOD] + bytes(PERIOD * 50)  # then 1 s of quiet
    _store_key(rundir)
    watcher = Watcher(broker)
    tap = SessionTap(rundir)
    try:
        with running_in_thread(api_key=KEY) as sim:
            config = _box_config(rundir, broker, sim.url, f"127.0.0.1:{free_port()}")
            with _box(rundir, config, "session", "mqtt") as procs:
                watcher.on(DISCOVERY)
                feed_until(capture, sim, lambda: sim.appends > 0)

                def say() -> Caption:
                    before = {c.utterance for c in tap.of(Caption) if c.final}
                    publish(capture, speech)
                    feed_until(capture, sim, lambda: speech in bytes(sim.audio_in))
                    final = tap.wait_for(
                        lambda m: isinstance(m, Caption) and m.final and m.kind == "translation"
                        and m.utterance not in before,
                        what="a final translation",
                    )  # fmt: skip
                    assert isinstance(final, Caption)
                    return final

                private = say()  # captions are off by default: this one stays in the box

                # Turned on by whoever runs the box (the file, then a reload): no reconnect for it.
                config.write_text(config.read_text().replace("[mqtt]\n", "[mqtt]\ncaptions = true\n"))
                mark = watcher.mark()
                procs["mqtt"].send_signal(signal.SIGHUP)
                wait_until(lambda: "config changed: mqtt" in (rundir / "mqtt.log").read_text(), 15)
                shared = say()
                caption = watcher.on(f"{PREFIX}/captions", since=mark, where=lambda c: c["kind"] == "translation")
                assert caption == {
                    "utterance": shared.utterance, "kind": "translation", "language": "en", "text": shared.text
                }  # fmt: skip
                assert not watcher.wait_for(lambda s: s.topic == f"{PREFIX}/captions").retain
                captions = [s.json() for s in watcher.everything() if s.topic == f"{PREFIX}/captions"]
                assert private.utterance not in {c["utterance"] for c in captions}  # it came before: never sent
                assert not [s for s in watcher.everything()[mark:] if s.topic == f"{PREFIX}/availability"]
                state = watcher.on(f"{PREFIX}/state", since=mark, where=lambda d: d["tokens_per_hour"] > 0)
                assert state["session"]["state"] == "live"

                # Another identity: the box leaves under the old one and comes back under the new.
                mark = watcher.mark()
                config.write_text(config.read_text().replace(f'box_id = "{BOX}"', 'box_id = "box-two"'))
                procs["mqtt"].send_signal(signal.SIGHUP)
                gone = watcher.wait_for(lambda s: s.topic == DISCOVERY, since=mark, what="the old device withdrawn")
                assert gone.payload == b"" and gone.retain
                watcher.wait_for(lambda s: s.topic == f"{PREFIX}/availability" and s.payload == b"offline", since=mark)
                back = watcher.on("homeassistant/device/tolk_box-two/config", since=mark)
                assert back["state_topic"] == "tolk/box-two/state"
                watcher.wait_for(lambda s: s.topic == "tolk/box-two/availability" and s.payload == b"online")
    finally:
        tap.close()
        watcher.close()
