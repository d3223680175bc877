"""What the echo canceller costs and achieves on this machine, per second of audio.

    .venv/bin/python bench/aec.py [--delays 30,80,120] [--gain 0.5]

Runs the capture pipeline over the simulated room of ``tests/services/aec_room.py`` (espeak-ng
speech: the box speaking German, a talker speaking English over it) with ``echo = "aec"`` and
with ``echo = "off"``, and prints the CPU time the canceller adds per second of audio (the
difference between the two runs, and the canceller's own calls alone), the ERLE while only the
box speaks, and the talker's envelope correlation during double talk. Figures, not a pass/fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.capture.aec import FRAME, WebRtcCanceller
from tests.services.aec_room import (
    RATE,
    Room,
    erle_db,
    make_scene,
    make_voices,
    run_capture,
    talker_envelope_correlation,
)


def canceller_alone(seconds: float) -> float:
    """CPU seconds of WebRTC AEC3 per second of audio, its calls only (speech-like noise in both)."""
    rng = np.random.default_rng(1)
    canceller = WebRtcCanceller()
    frames = int(seconds * 100)
    far = (rng.normal(0, 3000, (frames, FRAME))).astype(np.int16)
    mic = (far * 0.5 + rng.normal(0, 300, (frames, FRAME))).astype(np.int16)
    start = time.process_time()
    for k in range(frames):
        canceller.process(mic[k], far[k])
    return (time.process_time() - start) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delays", default="30,80,120", help="room delays in ms")
    parser.add_argument("--gain", type=float, default=0.5, help="the room's gain from speaker to microphone")
    args = parser.parse_args()
    alone = canceller_alone(20.0)
    print(f"WebRTC AEC3 (livekit) alone: {alone * 1000:.1f} ms CPU per second of audio ({alone * 100:.2f} % of a core)")
    with tempfile.TemporaryDirectory() as tmp:
        voices = make_voices(Path(tmp))
        for delay in (int(d) for d in args.delays.split(",")):
            scene = make_scene(voices, Room(delay_ms=delay, gain=args.gain))
            seconds = len(scene.mic) / RATE
            cpu = {}
            for mode in ("off", "aec"):
                start = time.process_time()
                out, _ = run_capture(voices, scene, mode)
                cpu[mode] = time.process_time() - start
            added = (cpu["aec"] - cpu["off"]) / seconds
            print(
                f"room delay {delay:3d} ms, gain {args.gain}: the capture step adds {added * 1000:.1f} ms CPU per "
                f"second of audio; ERLE {erle_db(scene, out):.1f} dB; double-talk envelope correlation "
                f"{talker_envelope_correlation(scene, out):.3f}"
            )


if __name__ == "__main__":
    main()
