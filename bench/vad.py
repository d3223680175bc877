"""What voice activity detection costs on this machine, per window and per second of audio.

    .venv/bin/python bench/vad.py [--seconds 30]

Runs each detector over espeak-ng speech (or noise when espeak-ng is missing) mixed with quiet
noise, through ``SpeechDetector`` exactly as capture does (quiet windows skip the model), and
prints µs per window, CPU % of one core in real time, and how many windows reached the model.
Figures, not a pass/fail.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.vad import SileroVad, SpeechDetector, WebRtcVad

RATE = 16000


def speech(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(1)
    if shutil.which("espeak-ng") and shutil.which("sox"):
        with tempfile.TemporaryDirectory() as tmp:
            raw, out = Path(tmp) / "a.wav", Path(tmp) / "b.wav"
            text = "The exhibition opens at nine tomorrow morning. Tickets are sold at the door."
            subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
            with wave.open(str(out)) as w:
                voice = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    else:
        voice = rng.normal(0, 3000, RATE * 3)
    pause = np.zeros(RATE * 2)
    one = np.concatenate((voice, pause))
    signal = np.tile(one, int(seconds * RATE // len(one)) + 1)[: int(seconds * RATE)]
    return np.clip(signal + rng.normal(0, 30, signal.size), -32768, 32767).astype("<i2")


def run(name: str, detector: SpeechDetector, audio: bytes, period: int) -> None:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for offset in range(0, len(audio), period):
        detector.feed(audio[offset : offset + period])
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    windows = detector.windows + detector.skipped
    seconds = len(audio) / 2 / RATE
    print(
        f"{name:>7}: {cpu / max(1, windows) * 1e6:7.1f} µs CPU per {detector.vad.window}-sample window "
        f"({cpu / max(1, detector.windows) * 1e6:.1f} µs per model call), "
        f"{cpu / seconds * 100:.2f} % of one core, {detector.windows}/{windows} windows scored, wall {wall:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    audio = speech(args.seconds).tobytes()
    print(f"{args.seconds:g} s of speech with 2 s pauses, 20 ms periods, as capture feeds the detector")
    run("silero", SpeechDetector(SileroVad()), audio, 640)
    run("webrtc", SpeechDetector(WebRtcVad()), audio, 640)


if __name__ == "__main__":
    main()
