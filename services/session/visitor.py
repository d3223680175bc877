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
import time
from collections.abc import Callable

from daemon.bus import Subscriber
from daemon.config import Config
from daemon.messages import SpeechActivity
from services.session.direction import Direction


class VisitorChoice:
    def __init__(self, direction: Direction, changed: Callable[[], None], log: logging.Logger) -> None:
        self.direction = direction
        self._changed = changed  # the session follows: captions, and the update to the service
        self.log = log
        self._chosen = asyncio.Event()
        self._speaking = False
        self._quiet_since = time.monotonic()

    def choose(self, language: object, cfg: Config) -> str:
        """A tap on the screen ("" lets go); why it was refused, or ""."""
        if language in ("", None):
            self._set(None, "let go")
            return ""
        if cfg.languages.mode == "conversation":
            return "refused: in conversation mode both languages are set by the staff"
        offered = cfg.control.visitor_languages
        if language not in offered:
            return f"refused: {language!r} is not offered ([control] visitor_languages: {', '.join(offered) or 'none'})"
        assert isinstance(language, str)
        self._quiet_since = time.monotonic()  # the quiet that ends it starts now
        self._set(language, "chosen on the screen")
        return ""

    def configured(self, cfg: Config) -> None:
        """The config changed: a choice no longer offered ends."""
        chosen = self.direction.visitor
        if chosen is not None and (chosen not in cfg.control.visitor_languages or cfg.languages.mode != "one-way"):
            self._set(None, "no longer offered")

    async def follow(self, speech: Subscriber, quiet_s: Callable[[], float]) -> None:
        """End the choice after ``quiet_s()`` without speech: a blocking read with that deadline."""
        reading: asyncio.Future[object] | None = None
        try:
            while True:
                deadline = None
                if self.direction.visitor is not None and not self._speaking and quiet_s() > 0:
                    deadline = max(0.0, self._quiet_since + quiet_s() - time.monotonic())
                reading = reading or asyncio.ensure_future(speech.recv())
                chosen: asyncio.Future[object] = asyncio.ensure_future(self._chosen.wait())
                waited: set[asyncio.Future[object]] = {reading, chosen}
                done, _ = await asyncio.wait(waited, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
                chosen.cancel()
                self._chosen.clear()
                if reading in done:
                    msg, reading = reading.result(), None
                    if isinstance(msg, SpeechActivity):
                        self._speaking, self._quiet_since = msg.speaking, time.monotonic()
                elif not done:  # the deadline passed: the room was quiet long enough
                    self._set(None, f"the room was quiet for {quiet_s():g} s")
        finally:
            if reading is not None:
                reading.cancel()

    def _set(self, language: str | None, why: str) -> None:
        if self.direction.visitor_language(language):
            self.log.info("visitor language %s (%s)", language or "back to the configured target", why)
            self._chosen.set()
            self._changed()
