"""One camera frame's picture, and what it costs: the token estimate, the size, the JPEG.

A :class:`Picture` is decoded only as far as someone asks, and once: most frames are looked at
as a 64x48 grayscale thumbnail (a JPEG is decoded at 1/4 or 1/8 scale for that, which costs a
fraction of a full decode) or not at all (silence, or too soon after the last one sent).

Images are billed at 0.5 token per 28x28 pixels. Counted here as whole tiles, each side rounded
up (the session's usage estimate counts the same way, and a rounded-up estimate never hides a
cost): a 640x360 frame is 23 x 13 tiles = 149.5 tokens, about 12 s of audio.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# numpy and Pillow are imported where a picture is handled, not here: a box without a camera
# keeps its camera process light (bench/footprint.py).

TILE_PX = 28
TOKENS_PER_TILE = 0.5
#: The service refuses images over 500 KB (protocol.md); read as 500,000 bytes, as the session does.
MAX_JPEG_BYTES = 500_000
#: The thumbnail the scene-change test compares: small enough that sensor noise averages out.
THUMB_SIZE = (64, 48)
#: A thumbnail pixel counts as changed when it moved by more than this (of 255): above noise,
#: below a hand or a sign entering the picture.
PIXEL_DELTA = 20
#: Qualities tried in turn when a JPEG comes out over MAX_JPEG_BYTES.
_FALLBACK_QUALITIES = (60, 45, 30)


class FrameError(Exception):
    """A picture that cannot be decoded (a corrupt file, a truncated camera buffer)."""


def image_tokens(width: int, height: int) -> float:
    """Tokens one image of this size costs (each side rounded up to whole 28 px tiles)."""
    tiles_w = max(1, math.ceil(width / TILE_PX))
    tiles_h = max(1, math.ceil(height / TILE_PX))
    return tiles_w * tiles_h * TOKENS_PER_TILE


def fit_size(width: int, height: int, max_tokens: float) -> tuple[int, int]:
    """The largest size with this aspect ratio that costs at most ``max_tokens``; never larger.

    Sides are even (JPEG's 4:2:0 chroma halves them). 1280x720 at 150 tokens gives 640x360.
    """
    if image_tokens(width, height) <= max_tokens:
        return width, height
    scale = math.sqrt(max_tokens / TOKENS_PER_TILE * TILE_PX * TILE_PX / (width * height))
    while True:
        w = max(2, int(width * scale) // 2 * 2)
        h = max(2, int(height * scale) // 2 * 2)
        if image_tokens(w, h) <= max_tokens or (w, h) == (2, 2):
            return w, h
        scale *= 0.99


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """The share of thumbnail pixels that changed by more than PIXEL_DELTA (0.0 to 1.0)."""
    import numpy as np

    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(np.count_nonzero(diff > PIXEL_DELTA)) / diff.size


class Picture:
    """An image as the source gave it: encoded bytes (JPEG from a camera or a file) or pixels.

    ``pixels`` is an H x W x 3 uint8 array, RGB, or B, G, R when ``bgr`` (OpenCV's and
    libcamera's order; swapping channels in Pillow is ten times cheaper than a numpy flip).
    """

    def __init__(self, *, data: bytes | None = None, pixels: np.ndarray | None = None, bgr: bool = False) -> None:
        if (data is None) == (pixels is None):
            raise ValueError("a Picture is made of encoded data or of pixels")
        import numpy as np
        from PIL import Image

        self.data = data
        self._image: Image.Image | None = None
        self._thumb: np.ndarray | None = None
        self.format = ""
        if pixels is not None:
            image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
            if bgr:
                blue, green, red = image.split()
                image = Image.merge("RGB", (red, green, blue))
            self._image = image
            self.size: tuple[int, int] = image.size
        else:
            assert data is not None
            with _decoding():
                header = Image.open(io.BytesIO(data))
                self.size = header.size
                self.format = header.format or ""

    @property
    def jpeg(self) -> bytes | None:
        """The bytes as they came, when they are a JPEG the service takes as it is."""
        if self.data is None or self.format != "JPEG":
            return None
        # Many webcams send MJPEG frames without Huffman tables (decoders assume the standard
        # ones); such a frame is re-encoded rather than sent as it is.
        return self.data if b"\xff\xc4" in self.data else None

    def image(self) -> Image.Image:
        """The full picture, RGB (decoded on first use)."""
        if self._image is not None:
            return self._image
        assert self.data is not None
        from PIL import Image

        with _decoding():
            image = Image.open(io.BytesIO(self.data)).convert("RGB")
        self._image = image
        return image

    def thumbnail(self) -> np.ndarray:
        """A THUMB_SIZE grayscale array, area-averaged (cheap: JPEGs decode at reduced scale)."""
        if self._thumb is None:
            import numpy as np
            from PIL import Image

            if self._image is None and self.data is not None:
                with _decoding():
                    img = Image.open(io.BytesIO(self.data))
                    img.draft("L", (THUMB_SIZE[0] * 2, THUMB_SIZE[1] * 2))
                    gray = img.convert("L")
            else:
                gray = self.image().convert("L")
            self._thumb = np.asarray(gray.resize(THUMB_SIZE, Image.Resampling.BOX), dtype=np.uint8)
        return self._thumb


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    width: int
    height: int
    quality: int  # 0 when the camera's own JPEG went out untouched

    @property
    def tokens(self) -> float:
        return image_tokens(self.width, self.height)


def encode(picture: Picture, max_tokens: float, quality: int, limit: int = MAX_JPEG_BYTES) -> Encoded:
    """The picture as a JPEG within the token budget and ``limit`` bytes.

    A camera's own JPEG that already fits goes out as it is (no decode, no re-encode). Otherwise
    the picture is scaled to the budget and encoded at ``quality``, then at lower qualities, then
    smaller, until it fits: the service refuses anything over 500 KB.
    """
    width, height = fit_size(*picture.size, max_tokens)
    own = picture.jpeg
    if own is not None and (width, height) == picture.size and len(own) <= limit:
        return Encoded(own, width, height, 0)
    from PIL import Image

    image = picture.image()
    while True:
        scaled = image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)
        for q in (quality, *(q for q in _FALLBACK_QUALITIES if q < quality)):
            out = io.BytesIO()
            scaled.save(out, "JPEG", quality=q)
            if out.tell() <= limit:
                return Encoded(out.getvalue(), width, height, q)
        # Even the lowest quality is too big (a huge budget and a noisy scene): go smaller.
        width, height = max(2, int(width * 0.7) // 2 * 2), max(2, int(height * 0.7) // 2 * 2)


@contextmanager
def _decoding() -> Iterator[None]:
    """Turns a decoder's complaint about bad bytes into a FrameError that names it."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise FrameError(f"cannot decode the picture: {exc}") from exc
