"""The last hour of tolk's logs, from journald, for the admin page's download.

What each process logs is already scrubbed of the API key and the control token (``daemon.logs``
redacts them); the download scrubs both again, so that a line logged before a key was set on the
page, or by a process that never held it, cannot carry it out.
"""

from __future__ import annotations

import shutil
import subprocess

from daemon import config as config_mod
from services.control.security import load_token

WINDOW = "-1h"
MAX_BYTES = 8 * 2**20
TIMEOUT_S = 10.0


class JournalUnavailable(Exception):
    pass


def last_hour(cfg: config_mod.Config) -> str:
    """Every line the tolk units logged in the last hour, oldest first; JournalUnavailable says why not."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise JournalUnavailable("no journalctl here: the box's logs are in journald only under systemd")
    cmd = [journalctl, "--no-pager", "--quiet", "-o", "short-iso", f"--since={WINDOW}", "--unit=tolk*"]
    try:
        result = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JournalUnavailable(f"journalctl did not answer: {exc}") from None
    if result.returncode != 0:
        why = result.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {result.returncode}"
        if "No data available" in why:  # the journal holds no line of a tolk unit yet
            return ""
        raise JournalUnavailable(f"journalctl: {why}")
    text = result.stdout[-MAX_BYTES:].decode("utf-8", "replace")
    for secret in (config_mod.api_key(cfg)[0], load_token(cfg)[0]):
        if secret:
            text = text.replace(secret, config_mod.mask(secret))
    return text
