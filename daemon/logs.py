"""Logging: journald with structured fields under systemd, plain stderr elsewhere; secrets redacted.

Structured fields: every line carries ``TOLK_SERVICE``; a process adds what it knows with
``annotate()`` (sticky for the rest of the process: the session process has one live session,
one utterance at a time) and per line with ``extra=fields(error_code=...)``. Under journald they
become journal fields (``journalctl TOLK_SESSION_ID=...``); on stderr they end the line in
brackets, so the same facts are there when no journal is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

#: Our names for the structured fields, and the journal field each becomes.
FIELDS: dict[str, str] = {
    "session_id": "TOLK_SESSION_ID",
    "utterance_id": "TOLK_UTTERANCE_ID",
    "error_code": "TOLK_ERROR_CODE",
}
_MAX_FIELD_CHARS = 200

_sticky: dict[str, str] = {}
_sticky_lock = threading.Lock()


def _journal_name(name: str) -> str:
    try:
        return FIELDS[name]
    except KeyError:
        raise ValueError(f"unknown log field {name!r}; fields are {', '.join(FIELDS)}") from None


def fields(**values: object) -> dict[str, str]:
    """``extra=`` for one log call: ``log.error("...", extra=fields(error_code="InvalidApiKey"))``."""
    return {_journal_name(k): str(v)[:_MAX_FIELD_CHARS] for k, v in values.items() if v not in (None, "")}


def annotate(**values: object) -> None:
    """Attach fields to every later line of this process; ``None`` or ``""`` removes one."""
    with _sticky_lock:
        for name, value in values.items():
            key = _journal_name(name)
            if value in (None, ""):
                _sticky.pop(key, None)
            else:
                _sticky[key] = str(value)[:_MAX_FIELD_CHARS]


class FieldsFilter(logging.Filter):
    """Puts the sticky fields on each record (a per-call ``extra=`` wins) and a text suffix."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _sticky_lock:
            sticky = dict(_sticky)
        for key, value in sticky.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        present = [(name, getattr(record, key)) for name, key in FIELDS.items() if hasattr(record, key)]
        record.tolk_fields = (" [" + " ".join(f"{n}={v}" for n, v in present) + "]") if present else ""
        return True


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


def stderr_is_journal() -> bool:
    """systemd.exec(5): ``$JOURNAL_STREAM`` is ``DEV:INODE`` of the journal stream; it counts
    only when stderr still is that stream (a child whose output was redirected inherits the
    variable, and its lines must go where its stderr goes)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup(service: str, level: str = "info") -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=f"tolk-{service}", TOLK_SERVICE=service)
        # The fields travel as journal fields: the message text stays clean.
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s tolk-{service}[%(process)d] %(levelname)s %(name)s: %(message)s%(tolk_fields)s"
            )
        )
    handler.addFilter(FieldsFilter())
    handler.addFilter(_redact)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("websockets", "uvicorn.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
