"""``tolk run`` hands the API key only to the processes that use it, as the systemd units do.

The units give the ``dashscope-api-key`` credential to the session (and to the engine, which
must know whether it stands by for the cloud); capture, camera, playback and control never see
it. ``tolk run`` is started as a real process with the key in its environment, and each child's
environment is read from ``/proc/PID/environ``.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import free_port, running, service_env, tolk_cmd, wait_until

KEY = "sk-test-run-7c1e55"
HOLDERS = {"session"}
OTHERS = {"capture", "camera", "playback", "control"}


def _children(pid: int) -> dict[str, int]:
    """The box's processes under ``tolk run`` by service name (``daemon.app.cli service NAME``)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"service" in argv:
                found[argv[argv.index(b"service") + 1].decode()] = int(child)
    return found


def _environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in entries if e)


def test_only_the_session_gets_the_key(rundir: Path) -> None:
    config = rundir / "tolk.toml"
    # The cloud backend with no engine standing by (fallback off): the session is the only user.
    # A camera source (missing: the process says so and retries) so that the camera runs too.
    config.write_text(
        f"""
[service]
url = "ws://127.0.0.1:{free_port()}/api-ws/v1/realtime"
backend = "cloud"
[audio]
capture_device = "null"
playback_device = "null"
[camera]
source = "v4l2:/dev/video7"
[control]
listen = "127.0.0.1:{free_port()}"
"""
    )
    env = service_env(rundir, DASHSCOPE_API_KEY=KEY)
    with running(tolk_cmd("run", "--config", str(config), "--no-restart"), env, rundir / "run.log") as box:
        children = wait_until(
            lambda: c if set(c := _children(box.pid)) >= HOLDERS | OTHERS else None, 40, 0.2, "every process"
        )
        environs = {name: _environ(pid) for name, pid in children.items()}
        box.send_signal(signal.SIGTERM)
        box.wait(30)
    assert environs["session"].get("DASHSCOPE_API_KEY") == KEY
    for name in OTHERS:
        leaked = [k for k, v in environs[name].items() if KEY in v]
        assert not leaked, f"{name} holds the API key in {leaked}"
