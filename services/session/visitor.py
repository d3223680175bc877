"""A visitor's language: the captions screen's buttons (``[control] visitor_languages``).

A visitor taps a language: the session translates into it from the next words on (a
``session.update`` on the live connection), and goes back to the configured target once the
room has been quiet for ``[control] captions_clear_s`` (when the screen forgets the captions
too), so the next visitor starts from what the staff set. One-way mode only: in conversation
mode both languages are the staff's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from daemon.bus import Subscriber
from daemon.config import Config
from daemon.messages import SpeechActivity
from services.session.direction import Direction


class VisitorChoice:
    def __init__(
        self,
        direction: Direction,
        changed: Callable[[], None],
        quiet_s: Callable[[], float],
        log: logging.Logger,
    ) -> None:
        self.direction = direction
        self._changed = changed  # the session follows: captions, and the update to the service
        self._quiet_s = quiet_s  # [control] captions_clear_s, as the config says now
        self.log = log
        self._speaking = False
        self._timer: asyncio.TimerHandle | None = None  # the quiet that ends the choice, counting

    def choose(self, language: object, cfg: Config) -> str:
        """A tap on the screen ("" lets go); why it was refused, or "". On the event loop."""
        if language in ("", None):
            self._set(None, "let go")
            return ""
        if cfg.languages.mode == "conversation":
            return "refused: in conversation mode both languages are set by the staff"
        offered = cfg.control.visitor_languages
        if language not in offered:
            return f"refused: {language!r} is not offered ([control] visitor_languages: {', '.join(offered) or 'none'})"
        assert isinstance(language, str)
        self._set(language, "chosen on the screen")
        self._count_quiet()  # the quiet that ends it starts now
        return ""

    def configured(self, cfg: Config) -> None:
        """The config changed: a choice no longer offered ends."""
        chosen = self.direction.visitor
        if chosen is not None and (chosen not in cfg.control.visitor_languages or cfg.languages.mode != "one-way"):
            self._set(None, "no longer offered")

    async def follow(self, speech: Subscriber) -> None:
        """Speech holds the choice; the quiet after it counts down to its end."""
        async for msg in speech:
            if isinstance(msg, SpeechActivity):
                self._speaking = msg.speaking
                self._count_quiet()

    def _count_quiet(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        quiet_s = self._quiet_s()
        if self.direction.visitor is not None and not self._speaking and quiet_s > 0:
            self._timer = asyncio.get_running_loop().call_later(quiet_s, self._quiet, quiet_s)

    def _quiet(self, quiet_s: float) -> None:
        self._timer = None
        self._set(None, f"the room was quiet for {quiet_s:g} s")

    def _set(self, language: str | None, why: str) -> None:
        if self.direction.visitor_language(language):
            self.log.info("visitor language %s (%s)", language or "back to the configured target", why)
            self._changed()
