"""Image tokens per minute of speech: sending frames naively vs. tolk's sampling policy.

    .venv/bin/python bench/camera_tokens.py [--video FILE --speech 0-6.5,8-15,...] [--keep DIR]

Without ``--video`` it records a scene first: 90 s of a kiosk counter at 10 fps, 1280x720 MJPEG,
with camera noise, a speaker whose lips and head move while they talk, a card held up to the
camera, a hand gesture and a second visitor stepping in, and a speech schedule of eight
utterances. The recording is replayed through the camera's own file source, sampling policy
and JPEG encoder (the code ``tolk service camera`` runs), frame by frame on the scene's clock.

Printed, per minute of speech: naive 2 fps at 640x360 (all the time, and only while someone
speaks), and tolk's policy at its defaults and at max_fps = 2. Audio costs 750 tokens a minute
(12.5 per second), for scale. Figures, not a pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.camera.pictures import encode, image_tokens
from services.camera.policy import PolicySettings, SamplingPolicy
from services.camera.sources.files import open_file_source

FPS = 10
SECONDS = 90
WIDTH, HEIGHT = 1280, 720
AUDIO_TOKENS_PER_MIN = 12.5 * 60
#: (start, end) of each utterance in the recorded scene, seconds.
SPEECH = [(0.5, 6.5), (8.0, 15.0), (17.0, 29.0), (31.0, 38.0), (41.0, 52.0), (55.0, 66.0), (68.0, 80.0), (82.0, 89.0)]


def speaking_at(spans: list[tuple[float, float]], t: float) -> int:
    """The 1-based utterance being spoken at ``t``, or 0 in silence."""
    for number, (start, end) in enumerate(spans, 1):
        if start <= t < end:
            return number
    return 0


def record_scene(path: Path) -> None:
    import cv2

    rng = np.random.default_rng(42)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    wall = np.zeros((HEIGHT, WIDTH, 3), np.int16)
    wall[..., 0], wall[..., 1], wall[..., 2] = 150 + 40 * x / WIDTH, 140 + 30 * y / HEIGHT, 120
    wall[int(HEIGHT * 0.72) :] = (60, 90, 130)  # the counter (B, G, R)
    # Sensor noise from a small pool (drawing 2.7 M normals per frame would dominate the run).
    noise = [rng.normal(0, 4, wall.shape).astype(np.int16) for _ in range(6)]
    heads: dict[int, np.ndarray] = {}
    visitor = (x - 260) ** 2 + (y - 330) ** 2 < 95**2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write an MJPEG video here")
    for k in range(SECONDS * FPS):
        t = k / FPS
        talking = speaking_at(SPEECH, t) > 0
        frame = wall.copy()
        # The speaker: a head that sways a little, lips that move while talking.
        cx, cy = WIDTH // 2 + int(6 * np.sin(t * 0.7)), int(HEIGHT * 0.40)
        if cx not in heads:
            heads[cx] = (x - cx) ** 2 + (y - cy) ** 2 < 110**2
        frame[heads[cx]] = (140, 170, 210)
        frame[cy + 150 : int(HEIGHT * 0.72), cx - 170 : cx + 170] = (90, 60, 40)  # shoulders
        mouth = 8 + (10 * abs(np.sin(t * 9)) if talking else 0)
        frame[cy + 45 : cy + 45 + int(mouth), cx - 30 : cx + 30] = (60, 50, 120)
        if 20 <= t < 28:  # a card with writing, held up to the camera
            frame[150:450, 820:1180] = (245, 245, 245)
            for line in range(6):
                frame[180 + line * 42 : 196 + line * 42, 850 : 1150 - 40 * (line % 3)] = (30, 30, 30)
        if 45 <= t < 50:  # a hand gesture sweeping across
            hx = int(250 + (t - 45) * 150)
            frame[300:520, hx : hx + 140] = (120, 150, 200)
        if t >= 60:  # a second visitor steps in at the side and stays
            frame[visitor] = (110, 140, 190)
            frame[450 : int(HEIGHT * 0.72), 120:400] = (40, 110, 60)
        frame += noise[int(rng.integers(len(noise)))]
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()


@dataclass
class Result:
    name: str
    frames: int = 0
    tokens: float = 0.0
    jpeg_bytes: int = 0


def replay(video: Path, spans: list[tuple[float, float]], policies: dict[str, PolicySettings]) -> list[Result]:
    """Every frame of the recording through each policy, on the scene's clock."""
    source = open_file_source(video, FPS, 1.0)
    state = {name: (SamplingPolicy(settings), Result(name)) for name, settings in policies.items()}
    start: int | None = None
    duration_s = max(end for _, end in spans) + 1
    try:
        while True:
            frame = source.read()
            start = frame.t if start is None else start
            t = (frame.t - start) / 1e9
            if t >= duration_s:
                break
            utterance = speaking_at(spans, t)
            for policy, result in state.values():
                if policy.consider(frame.t, utterance > 0, utterance, frame.picture.thumbnail).send:
                    settings = policy.settings
                    out = encode(frame.picture, settings.max_tokens, settings.jpeg_quality)
                    result.frames += 1
                    result.tokens += out.tokens
                    result.jpeg_bytes += len(out.jpeg)
    finally:
        source.close()
    return [result for _, result in state.values()]


def naive(name: str, seconds: float) -> Result:
    frames = int(seconds * 2)
    return Result(name, frames, frames * image_tokens(640, 360))


def parse_spans(text: str) -> list[tuple[float, float]]:
    spans = []
    for part in text.split(","):
        start, _, end = part.partition("-")
        spans.append((float(start), float(end)))
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, help="a recorded scene (default: record the built-in one)")
    parser.add_argument("--speech", type=parse_spans, help="utterances as START-END seconds, comma separated")
    parser.add_argument("--keep", type=Path, help="keep the recorded scene in this folder")
    args = parser.parse_args()
    spans = args.speech or SPEECH
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video
        if video is None:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            video = folder / "kiosk-scene.avi"
            print(f"recording a {SECONDS} s scene ({WIDTH}x{HEIGHT}, {FPS} fps) to {video} ...", flush=True)
            record_scene(video)
        results = replay(
            video,
            spans,
            {
                "tolk, defaults (max_fps 1, speech, change 2 %, 150 tokens)": PolicySettings(),
                "tolk, max_fps 2": PolicySettings(max_fps=2),
            },
        )
    speech_s = sum(end - start for start, end in spans)
    total_s = max(end for _, end in spans) + 1
    rows = [naive("naive 2 fps at 640x360, all the time", total_s), naive("naive 2 fps, only while speaking", speech_s)]
    rows += results
    print(f"\nscene: {total_s:.0f} s, of which {speech_s:.0f} s of speech in {len(spans)} utterances")
    print(f"audio, for scale: {AUDIO_TOKENS_PER_MIN:.0f} tokens per minute\n")
    print(f"{'':<60} {'frames':>7} {'tokens':>9} {'tokens/min of speech':>21} {'x audio':>8}")
    for row in rows:
        per_min = row.tokens / (speech_s / 60)
        print(
            f"{row.name:<60} {row.frames:>7} {row.tokens:>9.0f} {per_min:>21.0f} {per_min / AUDIO_TOKENS_PER_MIN:>8.2f}"
        )
    for row in results:
        if row.frames:
            print(f"  {row.name}: mean JPEG {row.jpeg_bytes / row.frames / 1024:.0f} KB")


if __name__ == "__main__":
    main()
