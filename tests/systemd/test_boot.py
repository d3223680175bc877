"""The shipped units under a real systemd: booted as PID 1 in private namespaces on a throwaway
overlay of this machine (tests/systemd/boot/), installed by the real ``tolk install``.

Shown in order on one boot: the target starts the units its config needs (hardened, as the
``tolk`` user, logging structured fields to journald; the camera's is skipped without a source,
and started when the admin page sets one; the mqtt one likewise without a broker); ``kill -9`` of
one is restarted and the others keep running; ``systemctl reload tolk.target`` applies a language
change without restarting capture; a capture whose microphone stops delivering is restarted by
the watchdog; the engine's socket starts the engine on a connection, and it leaves when idle.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.helpers import rmtree, short_tmpdir, wait_until
from tests.systemd.boot.container import INNER_REPO, BootRefused, Container, booted, namespaces_refused, running

#: What the boot's config runs: no camera source, the simulator on loopback (no engine standing by).
UNITS = [f"tolk-{name}.service" for name in ("capture", "session", "playback", "control")]


REFUSED = namespaces_refused()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"cannot boot systemd in namespaces here: {REFUSED}")


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    workdir = short_tmpdir("tkboot")
    try:
        with booted(workdir) as container:
            yield container
    except BootRefused as exc:
        pytest.fail(f"systemd did not boot: {exc}")
    finally:
        rmtree(workdir)


def main_pids(box: Container) -> dict[str, str]:
    return {unit: box.show(unit, "MainPID") for unit in UNITS}


def test_the_target_starts_the_units_its_config_needs(box: Container) -> None:
    # Type=notify: "active" means the process sent READY=1.
    wait_until(lambda: all(running(box, u) for u in UNITS), 60, what="all four units active")
    # No camera source: the camera unit is skipped by its condition, not failed, not left idle.
    assert box.show("tolk-camera.service", "ActiveState") == "inactive"
    assert box.show("tolk-camera.service", "Result") != "failed"
    for unit in UNITS:
        pid = box.show(unit, "MainPID")
        owner = box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip()
        assert owner == "tolk", f"{unit} runs as {owner}"
        assert box.show(unit, "StatusText"), f"{unit} says nothing in systemctl status"
    # Structured journal fields, through the real journald.
    wait_until(lambda: "session live" in box.journal("-u", "tolk-session.service"), 20, what="a live session")
    entries = [json.loads(line) for line in box.journal("-o", "json", "TOLK_SERVICE=session").splitlines()]
    live = next(e for e in entries if "session live" in e.get("MESSAGE", ""))
    assert live["SYSLOG_IDENTIFIER"] == "tolk-session" and live["TOLK_SESSION_ID"].startswith("sess_")
    assert live["_SYSTEMD_UNIT"] == "tolk-session.service"


def test_kill_9_of_one_unit_is_restarted_and_the_others_keep_running(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    before = main_pids(box)
    restarts = int(box.show("tolk-session.service", "NRestarts"))
    box.run("systemctl", "kill", "--signal=KILL", "--kill-whom=main", "tolk-session.service")
    wait_until(
        lambda: running(box, "tolk-session.service") and box.show("tolk-session.service", "MainPID") != before[
            "tolk-session.service"],
        20, what="tolk-session back with a new process",
    )  # fmt: skip
    assert int(box.show("tolk-session.service", "NRestarts")) == restarts + 1
    after = main_pids(box)
    assert {u: p for u, p in after.items() if u != "tolk-session.service"} == {
        u: p for u, p in before.items() if u != "tolk-session.service"
    }, "another unit was restarted with it"


def test_reload_applies_a_language_change_without_restarting_capture(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    before = main_pids(box)
    box.run("sed", "-i", 's/^target = "en"/target = "ja"/', "/etc/tolk/tolk.toml")
    box.run("systemctl", "reload", "tolk.target")
    wait_until(
        lambda: "sending the new configuration to the live session" in box.journal("-u", "tolk-session.service"),
        15, what="the session to send the new languages",
    )  # fmt: skip
    # Capture applies the same change in its own process: its line may reach the journal after the session's.
    wait_until(lambda: "config changed: languages" in box.journal("-u", "tolk-capture.service"), 10, what="capture")
    wait_until(lambda: "zh → ja" in box.show("tolk-session.service", "StatusText"), 10, what="session on zh → ja")
    assert main_pids(box) == before, "a reload restarted a process"


def test_a_stalled_capture_is_restarted_by_the_watchdog(box: Container) -> None:
    wait_until(lambda: running(box, "tolk-capture.service"), 30, what="capture active")
    pid = box.show("tolk-capture.service", "MainPID")
    restarts = int(box.show("tolk-capture.service", "NRestarts"))
    # The microphone stops delivering; capture's process and event loop stay perfectly alive.
    box.run("systemctl", "kill", "--signal=STOP", "tolk-boot-mic.service")
    stalled = time.monotonic()
    try:
        wait_until(lambda: int(box.show("tolk-capture.service", "NRestarts")) > restarts, 40, what="a restart")
        took = time.monotonic() - stalled
    finally:
        box.run("systemctl", "kill", "--signal=CONT", "tolk-boot-mic.service")
    assert "tolk-capture.service: Watchdog timeout" in box.journal("-u", "tolk-capture.service")
    # Not before the work had been stale for fresh_within_s plus WatchdogSec.
    assert took > 10, took
    wait_until(
        lambda: running(box, "tolk-capture.service") and box.show("tolk-capture.service", "MainPID") != pid,
        20, what="capture back",
    )  # fmt: skip
    wait_until(lambda: box.show("tolk-capture.service", "StatusText").startswith("capturing boot_mic"), 10)


_PUT_KEY_AND_DOWNLOAD = """
import json, os, stat, urllib.request
key = os.environ["KEY"]
put = urllib.request.Request("http://127.0.0.1:8080/api/key", data=json.dumps({"api_key": key}).encode(),
                             method="PUT", headers={"Content-Type": "application/json", "Host": "127.0.0.1:8080"})
status = urllib.request.urlopen(put, timeout=10).status
logs = urllib.request.urlopen("http://127.0.0.1:8080/api/logs", timeout=20)
text = logs.read().decode()
stored = os.stat("/var/lib/tolk/api-key")
print(json.dumps({"put": status, "disposition": logs.headers["Content-Disposition"], "text": text[-20000:],
                  "key_in_logs": key in text, "mode": stat.S_IMODE(stored.st_mode), "uid": stored.st_uid}))
"""


def test_a_key_entered_over_http_is_kept_and_never_in_the_logs_download(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    key = "sk-boot-entered-key-5d2c"
    python = str(INNER_REPO / ".venv/bin/python")
    out = box.run("env", f"KEY={key}", python, "-c", _PUT_KEY_AND_DOWNLOAD, timeout=60).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["put"] == 204 and result["mode"] == 0o600
    assert box.run("id", "-u", "tolk").stdout.strip() == str(result["uid"])  # the box's user owns it
    # The session reconnected with it, and the download holds tolk's own lines, never the key.
    wait_until(lambda: "the API key changed" in box.journal("-u", "tolk-session.service"), 15, what="a reconnect")
    assert "tolk-session" in result["text"] and "tolk-control" in result["text"]
    assert not result["key_in_logs"] and "attachment" in result["disposition"]
    assert key not in box.journal("-u", "tolk-session.service", "-u", "tolk-control.service")


_SET_CAMERA = """
import json, urllib.request
request = urllib.request.Request("http://127.0.0.1:8080/api/config", method="PATCH",
                                 data=json.dumps({"camera": {"source": "v4l2:/dev/video7"}}).encode(),
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=20).status)
"""


def test_a_camera_set_on_the_admin_page_starts_the_camera_unit(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    assert not running(box, "tolk-camera.service")
    python = str(INNER_REPO / ".venv/bin/python")
    assert box.run(python, "-c", _SET_CAMERA, timeout=60).stdout.strip().splitlines()[-1] == "200"
    # The overlay written by control wakes tolk-camera.path; the unit's condition now passes.
    wait_until(lambda: running(box, "tolk-camera.service"), 30, what="the camera unit started")
    assert "/dev/video7" in box.show("tolk-camera.service", "StatusText")  # missing: said, and retried


_SET_BROKER = """
import json, urllib.request
mqtt = {"broker": "mqtt://127.0.0.1:1883", "box_id": "boot"}
request = urllib.request.Request("http://127.0.0.1:8080/api/config", method="PATCH",
                                 data=json.dumps({"mqtt": mqtt}).encode(),
                                 headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(request, timeout=20).status)
"""


def test_a_broker_set_in_the_config_starts_the_mqtt_unit(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    # No broker: skipped by its condition, not failed.
    assert box.show("tolk-mqtt.service", "ActiveState") == "inactive"
    assert box.show("tolk-mqtt.service", "Result") != "failed"
    python = str(INNER_REPO / ".venv/bin/python")
    assert box.run(python, "-c", _SET_BROKER, timeout=60).stdout.strip().splitlines()[-1] == "200"
    # tolk-mqtt.path wakes the unit; no password file exists, and its credential's empty default
    # lets it start; with no broker listening it says so and retries (READY without the network).
    wait_until(lambda: running(box, "tolk-mqtt.service"), 30, what="the mqtt unit started")
    wait_until(lambda: "retrying" in box.show("tolk-mqtt.service", "StatusText"), 20, what="a retry")
    pid = box.show("tolk-mqtt.service", "MainPID")
    assert box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "tolk"


_ENGINE_HANDSHAKE = """
import asyncio, json, websockets
async def main():
    url = "ws://127.0.0.1:8790/api-ws/v1/realtime?model=qwen3-livetranslate-flash-realtime"
    async with websockets.connect(url, open_timeout=120) as ws:
        print(json.loads(await asyncio.wait_for(ws.recv(), 120))["type"])
asyncio.run(main())
"""


def test_the_engine_starts_on_a_connection_and_leaves_when_idle(box: Container) -> None:
    """tolk-engine.socket listens; the first connection starts tolk-engine, which answers as the
    service does; idle for [engine] unload_after_s it exits, and the socket stays for the next."""
    assert box.show("tolk-engine.socket", "ActiveState") == "active"
    assert box.show("tolk-engine.service", "ActiveState") == "inactive"
    python = str(INNER_REPO / ".venv/bin/python")
    answer = box.run(python, "-c", _ENGINE_HANDSHAKE, timeout=180).stdout.strip().splitlines()
    assert answer[-1] == "session.created", answer
    pid = box.show("tolk-engine.service", "MainPID")
    assert pid != "0" and box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "tolk"
    wait_until(lambda: box.show("tolk-engine.service", "ActiveState") == "inactive", 60, what="the idle engine gone")
    assert box.show("tolk-engine.service", "Result") == "success"
    assert box.show("tolk-engine.socket", "ActiveState") == "active"
    # The engine said why before it exited; journald may file the line after systemd saw the exit.
    wait_until(lambda: "exiting (the next connection starts the engine" in box.journal("-u", "tolk-engine.service"), 5)


def test_the_screen_unit_waits_for_control_and_skips_a_box_without_a_display(box: Container) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 30, what="all four units active")
    assert "tolk-control.service" in box.show("tolk-screen.service", "After").split()
    box.run("systemctl", "start", "tolk-screen.service")
    # This box has no /dev/dri/card*: systemd skips the unit, and nothing else is disturbed.
    assert box.show("tolk-screen.service", "ConditionResult") == "no"
    assert box.show("tolk-screen.service", "ActiveState") == "inactive"
    assert all(running(box, u) for u in UNITS)
