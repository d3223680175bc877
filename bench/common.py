"""Shared pieces of the benchmarks: speech to feed, a real-time microphone feeder, /proc figures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.helpers import PulseMic, espeak_wav, wav_pcm

PERIOD = 640  # 20 ms at 16 kHz, 16-bit
#: The processes every configuration runs.
BOX = frozenset({"capture", "session", "playback", "control"})
SENTENCES = [
    "The exhibition opens at nine.",
    "Tickets are sold at the front desk.",
    "Please keep your bags with you.",
    "The cafe is on the second floor.",
    "Photography without flash is allowed.",
]


def speech(work: Path, seconds: float) -> bytes:
    return utterances(work, seconds)[0]


def utterances(work: Path, seconds: float) -> tuple[bytes, int]:
    """Utterances with pauses, over a faint noise floor so every 20 ms period is unique; and their count."""
    pcm, spans = utterance_spans(work, seconds)
    return pcm, len(spans)


def utterance_spans(work: Path, seconds: float) -> tuple[bytes, list[tuple[int, int]]]:
    """As ``utterances``, with each utterance's byte span in the audio (start, end)."""
    pieces = []
    for i, text in enumerate(SENTENCES):
        pieces.append(wav_pcm(espeak_wav(text, work / f"s{i}.wav")))
    rng = np.random.default_rng(7)
    out = bytearray()
    spans: list[tuple[int, int]] = []
    while len(out) < seconds * 32000:
        piece = pieces[len(spans) % len(pieces)]
        spans.append((len(out), len(out) + len(piece)))
        out += piece + bytes(int(1.2 * 32000))
    out += bytes(3 * 32000)  # a microphone never stops: the last response comes back while it runs
    samples = np.frombuffer(bytes(out), dtype="<i2").astype(np.int32)
    samples += rng.integers(-6, 7, size=samples.size)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes(), spans


def feed(mic: PulseMic, pcm: bytes, stop: threading.Event, on_write: Callable[[int, int], None] | None = None) -> None:
    """Write ``pcm`` in real time, one period at a time; ``on_write(offset, monotonic_ns)`` after each."""
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), PERIOD)):
        if stop.is_set():
            return
        mic.write(pcm[offset : offset + PERIOD])
        if on_write is not None:
            on_write(offset, time.monotonic_ns())
        delay = start + (n + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds used and peak RSS (kB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))  # fmt: skip
    return cpu, hwm


def proc_pss(pid: int) -> int:
    """Proportional set size (kB) of a live process: its private pages plus its share of shared ones."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise OSError(f"no Pss for {pid}")


def speaker_pcm(name: str, path: Path) -> str:
    return f'pcm.{name} {{\n type file\n slave.pcm null\n file "{path}"\n format raw\n}}\n'


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def row(name: str, values: list[float]) -> str:
    return (f"{name:<52} n={len(values):<5} p50={pct(values, 50):7.2f}  p95={pct(values, 95):7.2f}  "
            f"p99={pct(values, 99):7.2f}  max={max(values, default=float('nan')):7.2f} ms")  # fmt: skip


def wait_status(port: int, timeout: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()
            procs = status.get("processes", {})
            # Every process the config runs (control lists them): the camera only with a source.
            if set(procs) >= BOX and all(p.get("up") for p in procs.values()) and status["session"]["state"] == "live":
                return dict(status)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit("the box did not come up")
