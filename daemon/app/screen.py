"""``tolk screen``: the captions page full screen on the attached display (tolk-screen.service).

On Raspberry Pi OS Lite (no desktop) the browser runs inside ``cage``, a kiosk Wayland
compositor that shows one application full screen; under a desktop session (Pi OS with desktop,
``WAYLAND_DISPLAY`` or ``DISPLAY`` set) Chromium opens there directly. Either way Chromium runs in
kiosk mode with no chrome, no error dialogs, no "restore session" bubble (a fresh profile in the
runtime directory each start), and reads the page on loopback, where it needs no token. The page
reconnects by itself when control restarts; the unit restarts the browser when it dies.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from daemon import config as config_mod
from daemon.bus import runtime_dir

BROWSERS = ("chromium", "chromium-browser")
KIOSK_FLAGS = (
    "--kiosk",
    "--noerrdialogs",
    "--disable-infobars",
    "--disable-session-crashed-bubble",
    "--disable-features=Translate,TranslateUI",
    "--no-first-run",
    "--no-default-browser-check",
    "--overscroll-history-navigation=0",
    "--check-for-update-interval=31536000",
    "--password-store=basic",
    "--autoplay-policy=no-user-gesture-required",
)


class ScreenUnavailable(Exception):
    pass


def page_url(cfg: config_mod.Config) -> str:
    """The captions page on loopback, whatever address control listens on."""
    host, _, port = cfg.control.listen.rpartition(":")
    host = host.strip("[]")
    local = host if host in ("127.0.0.1", "::1", "localhost") else "127.0.0.1"
    return f"http://{'[::1]' if local == '::1' else local}:{port}/"


def command(cfg: config_mod.Config, env: dict[str, str], profile: Path) -> list[str]:
    """The browser's command line (inside cage when there is no desktop session)."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name, path=env.get("PATH")))), None)
    if browser is None:
        raise ScreenUnavailable(f"no browser: install one of {', '.join(BROWSERS)} (apt install chromium)")
    argv = [browser, *KIOSK_FLAGS, f"--user-data-dir={profile}", page_url(cfg)]
    if env.get("WAYLAND_DISPLAY") or env.get("DISPLAY"):
        return argv
    cage = shutil.which("cage", path=env.get("PATH"))
    if cage is None:
        raise ScreenUnavailable("no desktop session and no cage: apt install cage (Raspberry Pi OS Lite)")
    return [cage, "-s", "--", *argv]


def main(config_path: str | None, dry_run: bool = False) -> int:
    try:
        cfg = config_mod.load(config_path)
        profile = runtime_dir() / "screen-profile"
        argv = command(cfg, dict(os.environ), profile)
    except (config_mod.ConfigError, ScreenUnavailable) as exc:
        print(f"tolk screen: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        print(" ".join(argv))
        return 0
    shutil.rmtree(profile, ignore_errors=True)  # a fresh profile: nothing to restore, no stale tabs
    os.execv(argv[0], argv)
    return 1  # not reached
