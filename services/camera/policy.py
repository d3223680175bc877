"""Which frames are worth their tokens.

One frame costs about as much as 12 s of audio, so the policy sends few:

- never more than ``max_fps`` (≤ 2, the service's limit), measured on the frames' own times;
- by default only while someone speaks (``when = "speech"``): a kiosk that nobody talks to
  costs nothing;
- the first frame of an utterance goes at once (the speaker's face, the sign they hold up);
- after that, a frame goes only when the scene changed since the last one sent: the share of
  a 64x48 grayscale thumbnail that moved by more than ~8 % of full scale must reach
  ``change_threshold``. Lips moving in a still face stay under it; a hand, a page or a new
  person entering the picture do not.

The policy is plain logic over (time, speaking, utterance, thumbnail): the sampler thread
drives it from a camera, the benchmark from a recorded scene.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from daemon.config import CameraConfig
from services.camera.pictures import changed_fraction

if TYPE_CHECKING:
    import numpy as np


class Decision(Enum):
    FIRST = "first"  # the first frame of an utterance (or of sampling, when always on)
    CHANGED = "changed"  # the scene changed enough since the last frame sent
    SILENT = "silent"  # nobody speaks (and frames go only with speech)
    TOO_SOON = "too_soon"  # within 1/max_fps of the last frame sent
    UNCHANGED = "unchanged"  # the scene looks as it did in the last frame sent

    @property
    def send(self) -> bool:
        return self in (Decision.FIRST, Decision.CHANGED)


@dataclass(frozen=True)
class PolicySettings:
    max_fps: float = 1.0
    when: Literal["speech", "always"] = "speech"
    change_threshold: float = 0.02
    max_tokens: float = 150
    jpeg_quality: int = 80

    @classmethod
    def from_config(cls, camera: CameraConfig) -> PolicySettings:
        return cls(
            max_fps=camera.max_fps,
            when=camera.when,
            change_threshold=camera.change_threshold,
            max_tokens=camera.max_tokens,
            jpeg_quality=camera.jpeg_quality,
        )

    @property
    def min_interval_ns(self) -> int:
        return int(1e9 / self.max_fps)


class SamplingPolicy:
    """Decides frame by frame; remembers the last frame sent and the utterance it belonged to."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings  # replaced whole on a config change (an atomic swap)
        self._last_sent_t: int | None = None
        self._last_thumb: np.ndarray | None = None
        self._utterance: int | None = None

    def consider(self, t: int, speaking: bool, utterance: int, thumbnail: Callable[[], np.ndarray]) -> Decision:
        """Whether the frame captured at ``t`` (ns) goes; ``thumbnail`` is called only if needed.

        ``utterance`` counts speech starts: a new value means a new utterance began.
        """
        settings = self.settings
        if settings.when == "always":
            utterance = 0
        elif not speaking:
            return Decision.SILENT
        last = self._last_sent_t
        if last is not None and t < last:
            last = self._last_sent_t = None  # the source restarted on an earlier clock
        if last is not None and t - last < settings.min_interval_ns:
            return Decision.TOO_SOON
        thumb = thumbnail()
        if utterance != self._utterance or self._last_thumb is None:
            decision = Decision.FIRST
        elif changed_fraction(thumb, self._last_thumb) >= settings.change_threshold:
            decision = Decision.CHANGED
        else:
            return Decision.UNCHANGED
        self._last_sent_t, self._last_thumb, self._utterance = t, thumb, utterance
        return decision
