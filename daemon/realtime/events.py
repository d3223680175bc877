"""Building the realtime service's server events: ids in its styles, the session object, errors.

Shared by every server of the protocol the box runs: the simulator and the local engine.
"""

from __future__ import annotations

import itertools
import json
from typing import Any


class Ids:
    """Server-side ids in the service's styles (``event_…``, ``resp_…``, ``item_…``), named after
    the server that made them (``sim``, ``local``) and its connection, so a log tells them apart."""

    def __init__(self, server: str, tag: str) -> None:
        self._stem = f"{server}{tag}"
        self._counter = itertools.count(1)

    def next(self, prefix: str) -> str:
        return f"{prefix}_{self._stem}x{next(self._counter)}"

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": self.next("event"), "type": kind, **fields}


def usage(audio_in: int = 0, text_in: int = 0, audio_out: int = 0, text_out: int = 0) -> dict[str, Any]:
    """``response.done``'s usage in the documented shape (the session's parser reads it back)."""
    return {
        "total_tokens": audio_in + text_in + audio_out + text_out,
        "input_tokens": audio_in + text_in,
        "output_tokens": audio_out + text_out,
        "input_tokens_details": {"text_tokens": text_in, "audio_tokens": audio_in},
        "output_tokens_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def session_object(session_id: str, model: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"id": session_id, "object": "realtime.session", "model": model, **config}


def error_event(ids: Ids, message: str, code: str, param: str = "", event_id: str = "") -> dict[str, Any]:
    error: dict[str, Any] = {
        "type": "invalid_request_error",
        "code": code,
        "message": message,
        "param": param,
    }
    if event_id:
        error["event_id"] = event_id
    return ids.event("error", error=error)
