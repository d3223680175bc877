"""``file:/path``: a still image, a folder of images or a video, replayed in a loop.

For tests and demos. Frames come at ``[camera] file_fps`` (a video keeps its own frame rate).
``file_speed`` above 1 replays the scene faster than real time while stamping each frame with
the scene's own clock, so 30 s of a recorded scene go through the real sampling policy in a
second or two.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

from services.camera.pictures import FrameError, Picture
from services.camera.sources import Frame, FrameSource, SourceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"})
#: Decoded folder images kept (a folder replayed in a loop is decoded once per image, not per pass).
FOLDER_CACHE = 64


class ReplayClock:
    """Frame k is stamped ``start + k/fps`` (scene time) and due ``start + k/(fps·speed)`` (real time)."""

    def __init__(self, fps: float, speed: float) -> None:
        self.fps = fps
        self.speed = speed
        self.start = time.monotonic_ns()
        self.count = 0

    def stamp(self, picture: Picture) -> Frame:
        k = self.count
        self.count += 1
        scene_ns = int(k * 1e9 / self.fps)
        return Frame(picture, t=self.start + scene_ns, not_before=self.start + int(scene_ns / self.speed))

    def describe(self) -> str:
        speed = f", replayed ×{self.speed:g}" if self.speed != 1 else ""
        return f"{self.fps:g} fps{speed}"


def _read_picture(path: Path) -> Picture:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{path} is gone") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Picture(data=data)
    except FrameError as exc:
        raise FrameError(f"{path.name}: {exc}") from None


class StillSource:
    """One image, again and again: a scene that never changes."""

    def __init__(self, path: Path, fps: float, speed: float) -> None:
        try:
            self.picture = _read_picture(path)
        except FrameError as exc:
            raise SourceError(f"{path} is not an image: {exc}") from None
        self.clock = ReplayClock(fps, speed)
        w, h = self.picture.size
        self.description = f"file {path} (still image {w}×{h}, {self.clock.describe()})"

    def read(self) -> Frame:
        return self.clock.stamp(self.picture)

    def close(self) -> None:
        pass


class FolderSource:
    """The images of a folder in name order, one per frame; the folder is re-listed each pass."""

    def __init__(self, path: Path, fps: float, speed: float) -> None:
        self.path = path
        self.clock = ReplayClock(fps, speed)
        self._images = self._list()
        self._next = 0
        self._cache: OrderedDict[Path, tuple[tuple[int, int], Picture]] = OrderedDict()
        self.description = f"file {path} (folder of {len(self._images)} images, {self.clock.describe()})"

    def _list(self) -> list[Path]:
        try:
            names = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except FileNotFoundError:
            raise SourceError(f"folder {self.path} is gone") from None
        except OSError as exc:
            raise SourceError(f"cannot list {self.path}: {exc.strerror}") from None
        if not names:
            raise SourceError(f"no images in {self.path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return names

    def read(self) -> Frame:
        if self._next >= len(self._images):
            self._images, self._next = self._list(), 0  # images added or removed show up next pass
        path = self._images[self._next]
        self._next += 1
        return self.clock.stamp(self._picture(path))

    def _picture(self, path: Path) -> Picture:
        try:
            st = path.stat()
        except OSError:
            raise SourceError(f"{path} is gone") from None
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            self._cache.move_to_end(path)
            return cached[1]
        picture = _read_picture(path)
        self._cache[path] = (key, picture)
        while len(self._cache) > FOLDER_CACHE:
            self._cache.popitem(last=False)
        return picture

    def close(self) -> None:
        self._cache.clear()


class VideoSource:
    """A video file decoded by OpenCV (MJPEG, H.264, PNG sequences ...), looped at its end."""

    def __init__(self, path: Path, fps: float, speed: float) -> None:
        import cv2

        self._cv2 = cv2
        self.path = path
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{path} is neither an image nor a video OpenCV can read")
        native = self._cap.get(cv2.CAP_PROP_FPS)
        self.clock = ReplayClock(native if 0 < native <= 240 else fps, speed)
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.description = f"file {path} (video {w}×{h}, {self.clock.describe()})"

    def read(self) -> Frame:
        ok, bgr = self._cap.read()
        if not ok:  # the end: start again
            self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
            if not ok:
                raise SourceError(f"cannot read frames from {self.path}")
        return self.clock.stamp(Picture(pixels=bgr, bgr=True))

    def close(self) -> None:
        self._cap.release()


def open_file_source(path: Path, fps: float, speed: float) -> FrameSource:
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return FolderSource(path, fps, speed)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return StillSource(path, fps, speed)
    return VideoSource(path, fps, speed)
