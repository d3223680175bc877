"""The frame-source seam: every camera is something that hands out frames, one at a time.

``open_source(spec)`` turns a ``[camera] source`` value into a :class:`FrameSource`:

- ``picamera2``: the Raspberry Pi camera through libcamera (imported only when asked for);
- ``v4l2:/dev/videoN``: a USB/V4L2 webcam through OpenCV, MJPEG straight from the camera;
- ``file:/path``: a still image, a folder of images or a video, replayed in a loop (tests, demos).

A source is owned by one thread (the sampler's): ``read()`` blocks until the next frame and
raises :class:`SourceError` when the camera is gone or failed; ``close()`` releases it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon.cameras import SourceError
from services.camera.pictures import Picture

__all__ = ["Frame", "FrameSource", "SourceError", "SourceSpec", "open_source"]


@dataclass
class Frame:
    picture: Picture
    #: Capture time, ``time.monotonic_ns()``. A file replayed faster than real time stamps its
    #: frames on the scene's own clock instead (so the policy sees the scene as it was filmed).
    t: int
    #: ``time.monotonic_ns()`` before which the frame must not be handed on (a file's pacing); 0: now.
    not_before: int = 0


class FrameSource(Protocol):
    description: str

    def read(self) -> Frame: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class SourceSpec:
    """What opening a source needs from the config (a change to any of it reopens the camera)."""

    source: str
    max_tokens: float
    file_fps: float = 5.0
    file_speed: float = 1.0


def open_source(spec: SourceSpec) -> FrameSource:
    """Open the configured camera; raises SourceError saying why it cannot."""
    if spec.source == "picamera2":
        from services.camera.sources.picamera import PiCameraSource

        return PiCameraSource(spec.max_tokens)
    if spec.source.startswith("v4l2:"):
        from services.camera.sources.webcam import WebcamSource

        return WebcamSource(spec.source.removeprefix("v4l2:"), spec.max_tokens)
    if spec.source.startswith("file:"):
        from services.camera.sources.files import open_file_source

        return open_file_source(Path(spec.source.removeprefix("file:")), spec.file_fps, spec.file_speed)
    raise SourceError(f"unknown camera source {spec.source!r}")
