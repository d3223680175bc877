"""``tolk screen``: the browser's command line for the attached display, as the unit runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import service_env, tolk_cmd


def _bin(folder: Path, *names: str) -> str:
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


def _screen(tmp_path: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "tolk.toml"
    config.write_text('[control]\nlisten = "0.0.0.0:8123"\ntoken_file = "/nonexistent"\n')
    environment = service_env(tmp_path, PATH=path, **env)
    environment.pop("DISPLAY", None)
    environment.pop("WAYLAND_DISPLAY", None)
    environment.update(env)
    cmd = tolk_cmd("screen", "--config", str(config), "--dry-run")
    return subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=60)


def test_without_a_desktop_the_browser_runs_in_cage_on_loopback(tmp_path: Path) -> None:
    result = _screen(tmp_path, _bin(tmp_path / "bin", "cage", "chromium"))
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    assert argv[0].endswith("/cage") and argv[1:3] == ["-s", "--"] and argv[3].endswith("/chromium")
    assert {"--kiosk", "--noerrdialogs", "--disable-session-crashed-bubble", "--no-first-run"} <= set(argv)
    # Listening on every address, the screen still reads on loopback, where no token is asked.
    assert argv[-1] == "http://127.0.0.1:8123/"


def test_a_desktop_session_gets_the_browser_directly(tmp_path: Path) -> None:
    result = _screen(tmp_path, _bin(tmp_path / "bin", "chromium-browser"), WAYLAND_DISPLAY="wayland-0")
    assert result.returncode == 0 and result.stdout.split()[0].endswith("/chromium-browser"), result.stderr


def test_what_is_missing_is_named(tmp_path: Path) -> None:
    no_browser = _screen(tmp_path, _bin(tmp_path / "bin", "cage"))
    assert no_browser.returncode == 2 and "apt install chromium" in no_browser.stderr
    no_cage = _screen(tmp_path, _bin(tmp_path / "bin2", "chromium"))
    assert no_cage.returncode == 2 and "apt install cage" in no_cage.stderr
