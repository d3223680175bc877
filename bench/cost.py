"""What running the box costs: CPU and memory per process, and tokens per hour, by policy.

    .venv/bin/python -m bench.cost [--phase-seconds 30]

For each streaming policy (`[audio] streaming = "always"` and `"speech"`), `tolk run` goes
through three phases with a real-time microphone and the simulator as the service:

- idle:        the room is quiet (a faint noise floor);
- listening:   background noise, nobody speaks to the box;
- translating: someone speaks 30 % of the time (utterances, then pauses).

Printed per phase: CPU seconds per minute and RSS of each process and of the whole box, the
seconds of audio sent to the service, and the input audio tokens per hour that implies
(12.5 tokens per second of audio, the service's rate), plus output tokens per hour.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import feed, proc_usage, speaker_pcm, wait_status  # noqa: E402
from services.simulator.server import running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, espeak_wav, free_port, service_env, tolk_cmd, wav_pcm  # noqa: E402

TOKENS_PER_AUDIO_SECOND = 12.5
RATE = 16000


def _noise(seconds: float, level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, level, int(seconds * RATE))


def _phases(work: Path, seconds: float) -> dict[str, bytes]:
    """The microphone's input for each phase, 16 kHz mono s16."""
    spoken = [
        wav_pcm(espeak_wav(text, work / f"u{i}.wav"))
        for i, text in enumerate(["Where is the ticket office?", "The museum closes at six today.",
                                  "Could you repeat that, please?"])
    ]  # fmt: skip
    quiet = _noise(seconds, 4.0, 1)
    # Background chatter stand-in: band-limited noise with slow swells, well above the floor.
    rng = np.random.default_rng(2)
    swell = 0.5 + 0.5 * np.sin(np.linspace(0, seconds * 0.8, int(seconds * RATE)))
    background = np.convolve(rng.normal(0, 900.0, int(seconds * RATE)), np.ones(8) / 8, mode="same") * swell
    talk = quiet.copy()
    position, i = int(0.5 * RATE), 0
    while position < talk.size:
        utterance = np.frombuffer(spoken[i % len(spoken)], dtype="<i2").astype(np.float64)
        end = min(talk.size, position + utterance.size)
        talk[position:end] += utterance[: end - position]
        # 30 % speech: each utterance is followed by a pause of about 7/3 its length.
        position = end + int(utterance.size * 7 / 3)
        i += 1

    def pcm(samples: np.ndarray) -> bytes:
        return np.clip(samples, -32768, 32767).astype("<i2").tobytes()

    return {"idle": pcm(quiet), "listening": pcm(background + quiet), "translating": pcm(talk)}


def _measure(policy: str, work: Path, phases: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    mic = PulseMic(work / f"pulse-{policy}")
    home = alsa_home(work, mic.asoundrc("cost_mic") + speaker_pcm("cost_spk", work / f"{policy}-speaker.raw"))
    results: dict[str, dict[str, Any]] = {}
    with running_in_thread() as sim:
        port = free_port()
        config = work / f"{policy}.toml"
        config.write_text(
            f'[languages]\nsource = "en"\ntarget = "de"\n[service]\nurl = "{sim.url}"\n'
            f'[audio]\ncapture_device = "cost_mic"\nplayback_device = "cost_spk"\nstreaming = "{policy}"\n'
            f'[control]\nlisten = "127.0.0.1:{port}"\n[log]\nlevel = "warning"\n'
        )
        box = subprocess.Popen(tolk_cmd("run", "--config", str(config), "--no-restart"),
                               env=service_env(work, HOME=str(home)), cwd=REPO)  # fmt: skip
        try:
            status = wait_status(port)
            pids = {name: p["pid"] for name, p in status["processes"].items()}
            for phase, pcm in phases.items():
                before_cpu = {n: proc_usage(pid)[0] for n, pid in pids.items()}
                before = wait_status(port)
                t0 = time.monotonic()
                feed(mic, pcm, threading.Event())
                elapsed = time.monotonic() - t0
                after = wait_status(port)
                usage = {n: proc_usage(pid) for n, pid in pids.items()}
                sent = _session(after, "audio_seconds_sent") - _session(before, "audio_seconds_sent")
                out_tokens = (after.get("usage") or {}).get("output_tokens", 0) - (before.get("usage") or {}).get(
                    "output_tokens", 0
                )
                results[phase] = {
                    "cpu": {n: (cpu - before_cpu[n]) / elapsed * 60 for n, (cpu, _) in usage.items()},
                    "rss": {n: _rss_mb(pid) for n, pid in pids.items()},
                    "peak": {n: hwm / 1024 for n, (_, hwm) in usage.items()},
                    "sent_fraction": sent / elapsed,
                    "in_tokens_per_hour": sent / elapsed * 3600 * TOKENS_PER_AUDIO_SECOND,
                    "out_tokens_per_hour": out_tokens / elapsed * 3600,
                }
        finally:
            box.terminate()
            box.wait(30)
            mic.close()
    return results


def _session(status: dict[str, Any], counter: str) -> float:
    return float(status["processes"]["session"].get("counters", {}).get(counter, 0.0))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="length of each phase (default 30)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tkc", dir="/tmp"))
    (work / "state").mkdir()
    phases = _phases(work, args.phase_seconds)
    results = {policy: _measure(policy, work, phases) for policy in ("always", "speech")}

    print(f"\ntolk running cost — phases of {args.phase_seconds:.0f} s; {os.cpu_count()} CPUs, {os.uname().machine}")
    names = list(next(iter(results["speech"].values()))["cpu"])
    for policy, phases_out in results.items():
        print(f"\nstreaming = {policy!r}")
        print(f"{'phase':<12}" + "".join(f"{n:>10}" for n in names) + f"{'all':>9}  {'RSS MB':>7}"
              f"{'audio sent':>11} {'in tok/h':>9} {'out tok/h':>9}")  # fmt: skip
        for phase, r in phases_out.items():
            cpu = "".join(f"{r['cpu'][n]:>10.2f}" for n in names)
            tokens = f"{r['in_tokens_per_hour']:>9.0f} {r['out_tokens_per_hour']:>9.0f}"
            print(f"{phase:<12}{cpu}{sum(r['cpu'].values()):>9.2f}  {sum(r['rss'].values()):>7.0f}"
                  f"{r['sent_fraction']:>10.0%} {tokens}")  # fmt: skip
    print("\n(CPU in CPU-seconds per minute; audio sent = share of the phase's audio streamed to the service)")
    speech, always = results["speech"], results["always"]
    for phase in ("idle", "translating"):
        a, s = always[phase]["in_tokens_per_hour"], speech[phase]["in_tokens_per_hour"]
        print(f"{phase}: input audio tokens per hour, always {a:,.0f} vs speech {s:,.0f} ({s / a if a else 0:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
