"""The box as the fleet sees it: the ``state`` document, folded from what the processes say on the bus.

Processes heartbeat each second; one is down after ``DOWN_AFTER_S`` without a heartbeat (on this
process's clock) or when it says it is stopping, stopped or failed, as control judges it. The
session's state and usage come with it; the languages and model from the running config.

``significant()`` is the part whose change is worth a message at once (a process up or down,
the session's state, the languages, an error, the mute); the rest (tokens per hour, status
lines) rides along with those and with the message every minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from daemon import config as config_mod
from daemon.messages import Heartbeat, Message, SessionStatus, Usage

DOWN_AFTER_S = 3.0
#: Just after this process started, a process not heard from yet is "starting", not an error.
STARTUP_GRACE_S = 5.0
DOWN_STATES = frozenset({"stopping", "stopped", "failed"})


@dataclass
class _Process:
    state: str = "unknown"
    status: str = ""
    heard_at: float | None = None
    counters: dict[str, float] = field(default_factory=dict)


class BoxView:
    def __init__(self, box: str, processes: Iterable[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.box = box
        self.clock = clock
        self.started_at = clock()
        self._processes = {name: _Process() for name in processes}
        self._session: SessionStatus | None = None
        self._usage: Usage | None = None

    def expect(self, processes: Iterable[str]) -> None:
        """The processes the config now runs (``daemon.backend.processes``)."""
        self._processes = {name: self._processes.get(name) or _Process() for name in processes}

    def handle(self, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            proc = self._processes.get(msg.service)
            if proc is not None:
                proc.state, proc.status, proc.heard_at = msg.state, msg.status, self.clock()
                proc.counters = dict(msg.counters)
        elif isinstance(msg, SessionStatus):
            self._session = msg
        elif isinstance(msg, Usage):
            self._usage = msg

    # --- the document ----------------------------------------------------------------------------

    def document(self, cfg: config_mod.Config) -> dict[str, Any]:
        now = self.clock()
        processes = {name: self._process(proc, now) for name, proc in self._processes.items()}
        problems = {name: p.pop("problem") for name, p in processes.items()}
        errors = [f"{name}: {problem}" for name, problem in problems.items() if problem]
        session = self._session
        if session is not None and session.state == "failed":
            errors.append(f"session: {session.detail or session.last_error}")
        capture = self._processes.get("capture")
        usage = self._usage
        return {
            "box": self.box,
            "status": "problem" if errors else "ok",
            "errors": errors,
            "processes": processes,
            "session": self._session_part(),
            "languages": {
                "source": cfg.languages.source,
                "target": cfg.languages.target,
                "mode": cfg.languages.mode,
                # A visitor's choice or a conversation's direction, as the session says it.
                "translating_into": (session.target if session is not None else "") or cfg.languages.target,
            },
            "model": cfg.service.model,
            "muted": bool(capture is not None and capture.counters.get("operator_muted")),
            "tokens_per_hour": round(usage.tokens_per_hour, 1) if usage is not None else 0.0,
            "cost_per_hour": usage.cost_per_hour if usage is not None else None,
            "updated": int(time.time()),
        }

    def _process(self, proc: _Process, now: float) -> dict[str, Any]:
        fresh = proc.heard_at is not None and now - proc.heard_at <= DOWN_AFTER_S
        up = fresh and proc.state not in DOWN_STATES
        problem = ""
        if proc.heard_at is None:
            problem = "no heartbeat" if now - self.started_at > STARTUP_GRACE_S else ""
        elif not fresh:
            problem = f"no heartbeat for {now - proc.heard_at:.0f} s"
        elif not up:
            problem = proc.state + (f" — {proc.status}" if proc.status and proc.status != proc.state else "")
        elif proc.state == "degraded":
            problem = proc.status or "degraded"  # running, but cannot do its work (a missing microphone)
        state = proc.state if up else ("starting" if proc.heard_at is None and not problem else "down")
        return {"up": up, "state": state, "status": proc.status, "problem": problem}

    def _session_part(self) -> dict[str, Any]:
        s = self._session
        if s is None:
            return {"state": "unknown", "detail": "", "backend": "", "reconnects": 0, "last_error": ""}
        return {
            "state": s.state,
            "detail": s.detail,
            "backend": s.backend,
            "reconnects": s.reconnects,
            "last_error": s.last_error,
        }


def significant(document: dict[str, Any]) -> Any:
    """What of the document is worth publishing at once when it changes."""
    return (
        document["status"],
        document["errors"],
        {name: (p["up"], p["state"]) for name, p in document["processes"].items()},
        (document["session"]["state"], document["session"]["backend"], document["session"]["last_error"]),
        document["languages"],
        document["model"],
        document["muted"],
    )
