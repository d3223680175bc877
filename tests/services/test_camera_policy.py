"""The camera's cost rules in isolation: token estimate, sizing, JPEG limits, the sampling policy.

Pictures are real JPEG/PNG bytes made with Pillow and decoded by the same code the camera runs;
the policy is driven with explicit frame times (ns), as the sampler drives it.
"""

from __future__ import annotations

import io
from itertools import pairwise

import numpy as np
import pytest
from PIL import Image

from services.camera.pictures import MAX_JPEG_BYTES, FrameError, Picture, encode, fit_size, image_tokens
from services.camera.policy import Decision, PolicySettings, SamplingPolicy

S = 1_000_000_000  # ns


def _jpeg(pixels: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _scene(rng: np.random.Generator, width: int = 1280, height: int = 720, noise: float = 0.0) -> np.ndarray:
    """A kiosk-like picture: a gradient wall, a desk, a head; plus sensor noise (standard deviation ``noise``)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.float32)
    img[..., 0] = 90 + 60 * x / width
    img[..., 1] = 110 + 40 * y / height
    img[..., 2] = 140
    img[int(height * 0.7) :, :] = (120, 85, 50)  # desk
    head = (x - width / 2) ** 2 + (y - height * 0.4) ** 2 < (height * 0.15) ** 2
    img[head] = (210, 170, 140)
    if noise:
        img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _without_huffman_tables(jpeg: bytes) -> bytes:
    """The same JPEG with its DHT segments cut out, as many webcams send MJPEG frames."""
    out, i = bytearray(jpeg[:2]), 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[i:]
            break
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker != 0xC4:
            out += jpeg[i : i + 2 + length]
        i += 2 + length
    return bytes(out)


# --- what a frame costs ----------------------------------------------------------------------


def test_token_estimate_follows_the_28_px_tiles() -> None:
    assert image_tokens(640, 360) == 149.5  # 23 x 13 tiles: about 12 s of audio at 12.5 tokens/s
    assert image_tokens(28, 28) == 0.5
    assert image_tokens(1280, 720) == 46 * 26 / 2
    assert image_tokens(10, 10) == 0.5  # the smallest image is still one tile


@pytest.mark.parametrize(
    ("source", "budget"),
    [((1280, 720), 150), ((1920, 1080), 150), ((640, 480), 150), ((4608, 2592), 300), ((1280, 720), 64)],
)
def test_frames_are_scaled_down_to_the_token_budget_keeping_their_shape(source: tuple[int, int], budget: int) -> None:
    width, height = fit_size(*source, budget)
    assert image_tokens(width, height) <= budget
    assert abs(width / height - source[0] / source[1]) < 0.02
    assert width % 2 == 0 and height % 2 == 0
    # Not needlessly small: within 15 % of the pixels the budget pays for.
    assert width * height >= 0.85 * budget * 2 * 28 * 28


def test_a_frame_within_budget_is_never_scaled_up() -> None:
    assert fit_size(640, 360, 150) == (640, 360)
    assert fit_size(320, 240, 600) == (320, 240)


def test_a_camera_jpeg_that_fits_goes_out_untouched() -> None:
    data = _jpeg(_scene(np.random.default_rng(1), 640, 360))
    out = encode(Picture(data=data), max_tokens=150, quality=80)
    assert out.jpeg == data and (out.width, out.height) == (640, 360) and out.quality == 0


def test_an_mjpeg_frame_without_huffman_tables_is_re_encoded() -> None:
    data = _without_huffman_tables(_jpeg(_scene(np.random.default_rng(2), 640, 360)))
    assert b"\xff\xc4" not in data
    out = encode(Picture(data=data), max_tokens=150, quality=80)
    assert out.jpeg != data and b"\xff\xc4" in out.jpeg
    assert Image.open(io.BytesIO(out.jpeg)).size == (640, 360)


def test_a_noisy_large_frame_is_re_encoded_under_500_kb() -> None:
    # Pure noise at quality 95 and 720p is well over 1 MB as a first try.
    noise = np.random.default_rng(3).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    out = encode(Picture(pixels=noise), max_tokens=600, quality=95)
    assert len(out.jpeg) <= MAX_JPEG_BYTES
    img = Image.open(io.BytesIO(out.jpeg))
    assert img.format == "JPEG" and img.size == (out.width, out.height)
    assert image_tokens(out.width, out.height) <= 600
    assert out.quality < 95


def test_undecodable_bytes_are_a_frame_error_not_a_crash() -> None:
    with pytest.raises(FrameError, match="cannot decode"):
        Picture(data=b"\xff\xd8\xff\xe0 this is not a jpeg")
    truncated = _jpeg(_scene(np.random.default_rng(4), 640, 360))[:2000]
    with pytest.raises(FrameError):
        Picture(data=truncated).image()


# --- the scene-change test -------------------------------------------------------------------


def test_sensor_noise_is_not_a_change_but_a_hand_is() -> None:
    rng = np.random.default_rng(5)
    base = _scene(rng)
    still = SamplingPolicy(PolicySettings(max_fps=2, change_threshold=0.05))
    first = Picture(data=_jpeg(np.clip(base.astype(int) + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)))
    assert still.consider(0, True, 1, first.thumbnail) is Decision.FIRST
    for k in range(1, 6):
        noisy = _scene(rng, noise=6.0)  # same scene, new sensor noise
        decision = still.consider(k * S, True, 1, Picture(data=_jpeg(noisy)).thumbnail)
        assert decision is Decision.UNCHANGED, f"noise frame {k} counted as a change"
    hand = base.copy()
    hand[250:600, 900:1180] = (200, 160, 130)  # a hand held up beside the head: ~10 % of the picture
    assert still.consider(7 * S, True, 1, Picture(data=_jpeg(hand)).thumbnail) is Decision.CHANGED


# --- the policy ------------------------------------------------------------------------------


class _Thumbs:
    """Thumbnails on demand, counting how often the policy asked (it should ask only when needed)."""

    def __init__(self) -> None:
        self.asked = 0
        self.value = np.zeros((48, 64), np.uint8)

    def __call__(self) -> np.ndarray:
        self.asked += 1
        return self.value

    def change(self) -> None:
        self.value = (255 - self.value).astype(np.uint8)


def test_silence_sends_nothing_and_costs_no_decoding() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=2))
    thumbs = _Thumbs()
    for k in range(100):
        assert policy.consider(k * S // 10, False, 0, thumbs) is Decision.SILENT
    assert thumbs.asked == 0


def test_a_static_scene_during_an_utterance_sends_its_first_frame_only() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=2))
    thumbs = _Thumbs()
    decisions = [policy.consider(k * S // 10, True, 1, thumbs) for k in range(300)]  # 30 s at 10 fps
    assert decisions[0] is Decision.FIRST
    assert sum(d.send for d in decisions) == 1
    # The next utterance's first frame goes at once, same scene or not.
    assert policy.consider(31 * S, True, 2, thumbs) is Decision.FIRST


def test_a_changing_scene_is_held_to_max_fps() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=2))
    thumbs = _Thumbs()
    sent = []
    for k in range(300):  # 30 s at 10 fps, every frame different
        thumbs.change()
        if policy.consider(k * S // 10, True, 1, thumbs).send:
            sent.append(k * S // 10)
    assert 58 <= len(sent) <= 61
    assert min(b - a for a, b in pairwise(sent)) >= S // 2


def test_the_first_frame_of_an_utterance_still_respects_max_fps() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=1))
    thumbs = _Thumbs()
    assert policy.consider(0, True, 1, thumbs).send
    assert policy.consider(S // 2, True, 2, thumbs) is Decision.TOO_SOON
    assert policy.consider(S, True, 2, thumbs) is Decision.FIRST


def test_always_mode_ignores_speech_and_sends_on_change() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=1, when="always"))
    thumbs = _Thumbs()
    assert policy.consider(0, False, 0, thumbs) is Decision.FIRST
    assert policy.consider(2 * S, False, 0, thumbs) is Decision.UNCHANGED
    assert policy.consider(3 * S, True, 5, thumbs) is Decision.UNCHANGED  # speech starts: not a new scene
    thumbs.change()
    assert policy.consider(4 * S, False, 5, thumbs) is Decision.CHANGED


def test_a_source_restarted_on_an_earlier_clock_is_not_stuck() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=2))
    thumbs = _Thumbs()
    assert policy.consider(100 * S, True, 1, thumbs).send
    assert policy.consider(5 * S, True, 2, thumbs) is Decision.FIRST


def test_a_zero_threshold_sends_at_max_fps() -> None:
    policy = SamplingPolicy(PolicySettings(max_fps=2, change_threshold=0.0))
    thumbs = _Thumbs()
    sent = sum(policy.consider(k * S // 10, True, 1, thumbs).send for k in range(100))
    assert sent == 20
