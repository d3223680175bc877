"""Hold-to-talk buttons on a Pi's GPIO pins, optional (``[languages] direction_buttons``).

Two push buttons, one per side of the counter, each between a GPIO pin (BCM numbering) and
ground: held, the box translates from that side's language (``a-to-b`` for the source side,
``b-to-a`` for the other); released, it goes back to choosing by itself (``auto``), exactly
as the captions page's buttons and ``POST /api/direction`` do. gpiozero is imported only when
buttons are configured, so the box runs without it; ``pin_factory`` is the seam for tests
(gpiozero's MockFactory) and for a board without the default pin library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DIRECTIONS = ("a-to-b", "b-to-a")
#: Ignore contact bounce shorter than this (seconds).
BOUNCE_S = 0.03


class DirectionButtons:
    def __init__(self, pins: list[int], send: Callable[[str], None], pin_factory: Any = None) -> None:
        """``send`` is called from gpiozero's own thread: make it thread-safe."""
        from gpiozero import Button  # optional dependency (the "gpio" extra)

        self._buttons: list[Any] = []
        try:
            for pin, direction in zip(pins, DIRECTIONS, strict=True):
                button = Button(pin, bounce_time=BOUNCE_S, pin_factory=pin_factory)
                button.when_pressed = _call(send, direction)
                button.when_released = _call(send, "auto")
                self._buttons.append(button)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for button in self._buttons:
            button.close()
        self._buttons.clear()


def _call(send: Callable[[str], None], direction: str) -> Callable[[], None]:
    return lambda: send(direction)
