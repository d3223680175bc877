"""First boot without a key: where staff go to set the box up, and a one-time way in.

The captions screen shows the admin page's address, a QR code of it, and (when control listens
off loopback, where ``/admin`` needs the control token) a one-time setup code, also printed in
the journal: ``/admin?setup=CODE`` logs in once, as the token would. The code ends when it is
used, when a key is set, or when control restarts.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import socket

import segno

from daemon import config as config_mod


class SetupCode:
    def __init__(self) -> None:
        self.code: str | None = None

    def issue(self) -> str:
        digits = f"{secrets.randbelow(10**8):08d}"
        self.code = f"{digits[:4]}-{digits[4:]}"
        return self.code

    def redeem(self, presented: str) -> bool:
        """Whether ``presented`` is the code; a right one is spent."""
        code = self.code
        if code is None or not hmac.compare_digest(presented.strip().encode("utf-8", "replace"), code.encode()):
            return False
        self.code = None
        return True

    def withdraw(self) -> None:
        self.code = None


def admin_url(listen: str) -> str:
    """The admin page as a phone on the same network reaches it (this box's address when
    control listens on every address)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = _own_address()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/admin"


def _own_address() -> str:
    """The address this box's default route leaves from (no packet is sent), else its name."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup only
            return str(probe.getsockname()[0])
        except OSError:
            return f"{socket.gethostname()}.local"


@functools.lru_cache(maxsize=4)  # asked every second by each screen; the address rarely changes
def qr_svg(text: str) -> str:
    """A QR code of ``text`` as inline SVG (white on the screen's dark background)."""
    return str(segno.make(text, error="m").svg_inline(scale=6, dark="#ffffff", light=None, border=2))


def view(cfg: config_mod.Config, code: SetupCode, has_key: bool) -> dict[str, str] | None:
    """What the screen shows while no key is set (None once one is, or when the box is offline-only)."""
    if cfg.service.backend == "local" or has_key:
        return None
    url = admin_url(cfg.control.listen)
    target = f"{url}?setup={code.code}" if code.code else url  # scanned, it logs in too
    return {"url": url, "qr": qr_svg(target), "code": code.code or ""}
