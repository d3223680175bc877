"""Logging: journald with structured fields under systemd, plain stderr elsewhere; secrets redacted."""

from __future__ import annotations

import logging
import os
import sys


class RedactFilter(logging.Filter):
    """Replaces any registered secret in a record's final text: a key must never reach a log line."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in self.secrets:
                if secret and secret in text:
                    text = text.replace(secret, "********")
            record.msg, record.args = text, None
        return True


_redact = RedactFilter()


def redact(secret: str | None) -> None:
    """Register a secret to scrub from every log line of this process."""
    if secret and len(secret) >= 4:
        _redact.secrets.add(secret)


def setup(service: str, level: str = "info") -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM"):
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=f"tolk-{service}", TOLK_SERVICE=service)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s tolk-{service}[%(process)d] %(levelname)s %(name)s: %(message)s")
        )
    handler.addFilter(_redact)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("websockets", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
