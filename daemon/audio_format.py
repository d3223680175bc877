"""What a device really took, and the conversion between that and what tolk speaks.

tolk speaks 16 kHz mono S16_LE in (capture) and 24 kHz mono S16_LE out (playback). The
recommended device names convert in alsa-lib itself: ``plughw:CARD=Device`` (or ``default``,
or PipeWire/PulseAudio) accept any rate and channel count. A raw ``hw:`` device takes only what
the chip does, and alsa-lib silently picks the nearest rate and channel count; ``Converter``
then bridges the difference with soxr (a real resampler) and a channel mix, so a ``hw:`` name
works too. A sample format other than S16_LE is refused with the advice to use ``plughw:``.

NumPy and soxr load only when a conversion is needed: a box whose devices take tolk's own format
(the usual ``plughw:``/``default`` names) never maps them into the process that plays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

BYTES_PER_SAMPLE = 2


class FormatError(ValueError):
    pass


@dataclass(frozen=True)
class DeviceFormat:
    rate: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * BYTES_PER_SAMPLE


def device_format(info: dict[str, Any], device: str) -> DeviceFormat:
    """The negotiated format from ``pcm.info()``; FormatError if it is not S16_LE."""
    name = str(info.get("format_name", "S16_LE"))
    if name != "S16_LE":
        raise FormatError(
            f"device {device!r} does not take 16-bit samples (it offers {name}); "
            f"use its plughw: name, which converts in alsa-lib"
        )
    return DeviceFormat(int(info["rate"]), int(info["channels"]))


class Converter:
    """S16 interleaved at one rate/channel count to S16 at another, streaming (keeps filter state)."""

    def __init__(self, src: DeviceFormat, dst: DeviceFormat) -> None:
        self.src = src
        self.dst = dst
        self.identity = src == dst
        self._resampler = None
        if src.rate != dst.rate:
            import soxr

            self._resampler = soxr.ResampleStream(src.rate, dst.rate, dst.channels, dtype="int16", quality="HQ")

    def convert(self, pcm: bytes) -> bytes:
        if self.identity:
            return pcm
        import numpy as np

        frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, self.src.channels)
        frames = self._channels(frames)
        if self._resampler is not None:
            frames = self._resampler.resample_chunk(np.ascontiguousarray(frames))
        return np.ascontiguousarray(frames, dtype="<i2").tobytes()

    def _channels(self, frames: np.ndarray) -> np.ndarray:
        import numpy as np

        have, want = self.src.channels, self.dst.channels
        if have == want:
            return frames
        if want == 1:
            # Mono from several: the mean, so a stereo mic's two equal channels stay at level.
            return frames.mean(axis=1, dtype=np.float64).round().astype("<i2").reshape(-1, 1)
        if have == 1:
            return np.repeat(frames, want, axis=1)
        raise FormatError(f"cannot map {have} channels to {want}")


def scaled(pcm: bytes, volume: float) -> bytes:
    """S16 samples times ``volume`` (0..1)."""
    import numpy as np

    return (np.frombuffer(pcm, dtype="<i2") * np.float32(volume)).astype("<i2").tobytes()
