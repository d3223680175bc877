"""What the whole box costs in memory and CPU, idle and translating, next to the baseline client.

    .venv/bin/python -m bench.footprint [--seconds 60] [--idle-seconds 60] [--engine]

``tolk run`` on its defaults with a key set (``backend = "auto"``: the cloud, the local engine's
socket held for the cloud's outages, no engine process), against the simulator in this process, a
microphone with a clock of its own, as a sound card has (the monitor of a PulseAudio null sink the
speech is played into in real time), and an alsa-lib ``file`` speaker. Two phases: idle (a faint
noise floor, no one speaking) and translating (the bench's dialogue); then the baseline client
(bench/baseline_client.py, what the service's sample client does) on the same speech.

For each process: PSS (``/proc/PID/smaps_rollup``: shared pages divided among the processes that
map them, so the sum is what the box takes from the machine) at the end of each phase and its peak
while translating, and CPU seconds per minute of each phase. The supervisor (``tolk run`` itself)
is counted; under systemd there is none.

``--engine`` also measures the local engine in use: ``backend = "local"``, a cold start (the
models load on the first connection), the first translation's latency, PSS while serving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import proc_pss, proc_usage, speaker_pcm, speech, utterance_spans  # noqa: E402
from services.simulator.server import running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, free_port, service_env, tolk_cmd  # noqa: E402


def _quiet(seconds: float) -> bytes:
    """A microphone in an empty room: a faint noise floor."""
    rng = np.random.default_rng(11)
    return rng.integers(-6, 7, size=int(seconds * 16000)).astype("<i2").tobytes()


def _children(supervisor: int) -> dict[str, int]:
    """The supervisor's service processes by name, from the process tree (control's status may not list them all)."""
    kids = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    named = {}
    for pid in kids:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"service" in argv:
            named[argv[argv.index(b"service") + 1].decode()] = int(pid)
    return named


def _status(port: int) -> dict[str, Any]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).json())


def _wait_up(port: int, expected: set[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            status = _status(port)
            procs = status["processes"]
            if expected <= {n for n, p in procs.items() if p.get("up")} and status["session"]["state"] == "live":
                return status
        time.sleep(0.2)
    raise SystemExit(f"the box did not come up with {sorted(expected)}")


class _Phase:
    """CPU seconds and PSS of a set of processes over one phase, PSS also sampled for its peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu0 = {n: proc_usage(p)[0] for n, p in pids.items()}
        self.t0 = time.monotonic()
        self.peak_total_kb = 0
        self.peak_kb = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError):
                now = {n: proc_pss(p) for n, p in self.pids.items()}
                self.peak_total_kb = max(self.peak_total_kb, sum(now.values()))
                for n, kb in now.items():
                    self.peak_kb[n] = max(self.peak_kb[n], kb)

    def end(self) -> dict[str, Any]:
        self._stop.set()
        self._sampler.join()
        elapsed = time.monotonic() - self.t0
        pss = {n: proc_pss(p) / 1024 for n, p in self.pids.items()}
        cpu = {n: (proc_usage(p)[0] - self.cpu0[n]) / elapsed * 60 for n, p in self.pids.items()}
        peak = {n: kb / 1024 for n, kb in self.peak_kb.items()}
        return {"pss": pss, "cpu": cpu, "peak": peak, "peak_total": self.peak_total_kb / 1024, "seconds": elapsed}


@contextlib.contextmanager
def _box(
    work: Path, tag: str, body: str, env: dict[str, str], languages: tuple[str, str] = ("en", "de")
) -> Iterator[tuple[PulseMic, int, subprocess.Popen[bytes]]]:
    mic = PulseMic(work / f"pulse-{tag}")
    room = mic.asoundrc("bench_mic", mic.add_room())
    home = alsa_home(work, room + speaker_pcm("bench_spk", work / f"{tag}-speaker.raw"))
    port = free_port()
    config = work / f"{tag}.toml"
    config.write_text(
        f'[languages]\nsource = "{languages[0]}"\ntarget = "{languages[1]}"\n{body}'
        f'[audio]\ncapture_device = "bench_mic"\nplayback_device = "bench_spk"\n'
        f'[control]\nlisten = "127.0.0.1:{port}"\n[log]\nlevel = "warning"\n'
    )
    box = subprocess.Popen(tolk_cmd("run", "--config", str(config), "--no-restart"),
                           env=service_env(work, HOME=str(home), **env), cwd=REPO)  # fmt: skip
    try:
        yield mic, port, box
    finally:
        box.terminate()
        box.wait(30)
        mic.close()


def _measure_box(sim_url: str, work: Path, pcm: bytes, idle_s: float) -> dict[str, Any]:
    body = f'[service]\nurl = "{sim_url}"\n'
    with _box(work, "tolk", body, {"DASHSCOPE_API_KEY": "sk-bench"}) as (mic, port, box):
        _wait_up(port, {"capture", "session", "playback", "control"})
        pids = {**_children(box.pid), "supervisor": box.pid}
        mic.speak(_quiet(5.0))  # settled: the first heartbeats and status out
        idle = _Phase(pids)
        mic.speak(_quiet(idle_s))
        idle_figures = idle.end()
        talk = _Phase(pids)
        mic.speak(pcm)
        talk_figures = talk.end()
        final = _status(port)
    return {"idle": idle_figures, "talk": talk_figures, "processes": sorted(pids),
            "tokens": final.get("usage", {})}  # fmt: skip


def _measure_baseline(sim_url: str, work: Path, pcm: bytes) -> dict[str, Any]:
    mic = PulseMic(work / "pulse-base")
    room = mic.asoundrc("bench_mic", mic.add_room())
    home = alsa_home(work, room + speaker_pcm("bench_spk", work / "base-speaker.raw"))
    seconds = len(pcm) / 32000
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_client", "--url", sim_url, "--capture", "bench_mic",
         "--playback", "bench_spk", "--seconds", f"{seconds + 10.0:.1f}", "--stamps", str(work / "base.jsonl")],
        env=service_env(work, HOME=str(home)), cwd=REPO,
    )  # fmt: skip
    try:
        time.sleep(1.5)  # connected and configured, as the box was before its feed
        phase = _Phase({"baseline": proc.pid})
        mic.speak(pcm)
        figures = phase.end()
    finally:
        if proc.poll() is None:
            proc.kill()
        mic.close()
    return figures


def _measure_engine(work: Path, seconds: float) -> dict[str, Any]:
    """The cloud unreachable: the fallback starts the engine (PSS just started, serving), load time, first answer."""
    pcm, spans = utterance_spans(work, seconds)
    listen = f"127.0.0.1:{free_port()}"
    body = (f'[service]\nurl = "ws://127.0.0.1:{free_port()}/api-ws/v1/realtime"\nfallback_after_s = 3\n'
            f'[engine]\nlisten = "{listen}"\n')  # fmt: skip
    with _box(work, "engine", body, {"DASHSCOPE_API_KEY": "sk-bench"}, languages=("en", "pt")) as (mic, port, box):
        started = time.monotonic()
        pid = None
        while pid is None and time.monotonic() - started < 30:
            with contextlib.suppress(OSError, KeyError):
                pid = _children(box.pid)["engine"]
            time.sleep(0.1)
        assert pid is not None, "no engine process"
        time.sleep(1.0)
        started_mb = proc_pss(pid) / 1024
        _wait_up(port, {"capture", "session", "playback", "control", "engine"}, timeout=120)
        fell_back = time.monotonic() - started
        phase = _Phase({"engine": pid})
        feeding = threading.Thread(target=mic.speak, args=(pcm,), daemon=True)
        t0 = time.monotonic()
        feeding.start()
        first_caption = None
        while time.monotonic() - t0 < seconds + 30:
            if any(c.get("translation") for c in _status(port).get("captions", [])):
                first_caption = time.monotonic() - t0 - spans[0][1] / 32000
                break
            time.sleep(0.05)
        feeding.join()
        figures = phase.end()
        counters = _status(port)["processes"]["engine"].get("counters", {})
    return {"pss_started": started_mb, "pss_serving": figures["peak"]["engine"], "cpu": figures["cpu"]["engine"],
            "fallback_s": fell_back, "first_caption_after_speech_s": first_caption, "counters": counters}  # fmt: skip


def _table(box: dict[str, Any], base: dict[str, Any]) -> None:
    idle, talk = box["idle"], box["talk"]
    names = sorted(idle["pss"], key=lambda n: (n == "supervisor", n))
    print(f"\n{'process':<16} {'PSS idle MB':>12} {'PSS talk MB':>12} {'peak MB':>9} {'CPU idle s/min':>15} "
          f"{'CPU talk s/min':>15}")  # fmt: skip
    for n in names:
        print(f"{n:<16} {idle['pss'][n]:>12.1f} {talk['pss'][n]:>12.1f} {talk['peak'][n]:>9.1f} "
              f"{idle['cpu'][n]:>15.2f} {talk['cpu'][n]:>15.2f}")  # fmt: skip

    def total(d: dict[str, float], supervisor: bool) -> float:
        return sum(v for n, v in d.items() if supervisor or n != "supervisor")

    peak_services = talk["peak_total"] - talk["peak"].get("supervisor", 0.0)
    for label, sup in (("services", False), ("+ supervisor", True)):
        peak = talk["peak_total"] if sup else peak_services
        print(f"{label:<16} {total(idle['pss'], sup):>12.1f} {total(talk['pss'], sup):>12.1f} {peak:>9.1f} "
              f"{total(idle['cpu'], sup):>15.2f} {total(talk['cpu'], sup):>15.2f}")  # fmt: skip
    print(f"{'baseline':<16} {'':>12} {base['pss']['baseline']:>12.1f} {base['peak']['baseline']:>9.1f} "
          f"{'':>15} {base['cpu']['baseline']:>15.2f}")  # fmt: skip
    cpu_base = base["cpu"]["baseline"]
    ratio = total(talk["cpu"], True) / cpu_base if cpu_base else float("nan")
    print("\n'services' are what a kiosk runs (systemd supervises them); 'tolk run' adds its supervisor.")
    print(f"goals, the services: PSS translating {peak_services:.1f} MB (≤ 150), idle {total(idle['pss'], False):.1f} "
          f"MB (≤ 120); with the supervisor, CPU translating {ratio:.2f}× the baseline (≤ 2), idle "
          f"{total(idle['cpu'], True):.2f} s/min (≤ 0.3)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of speech to feed (default 60)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="seconds of an empty room (default 60)")
    parser.add_argument("--engine", action="store_true", help="also measure the local engine in use, cold start")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tkf", dir="/tmp"))
    (work / "state").mkdir()
    pcm = speech(work, args.seconds)
    with running_in_thread() as sim:
        box = _measure_box(sim.url, work, pcm, args.idle_seconds)
        base = _measure_baseline(sim.url, work, pcm)
        violations = len(sim.violations)
    print(f"\ntolk footprint — idle {args.idle_seconds:.0f} s, then {len(pcm) / 32000:.0f} s of dialogue; "
          f"{os.cpu_count()} CPUs, {os.uname().machine}; processes: {', '.join(box['processes'])}")  # fmt: skip
    _table(box, base)
    print(f"simulator violations: {violations}")
    figures: dict[str, Any] = {"box": box, "baseline": base}
    if args.engine:
        engine = _measure_engine(work, 20.0)
        figures["engine"] = engine
        c = engine["counters"]
        print(f"\nlocal engine, the cloud unreachable (fallback after 3 s): no process until the session's "
              f"fallback connection started it; PSS {engine['pss_started']:.1f} MB just started, "
              f"{engine['pss_serving']:.1f} MB serving; session live on it {engine['fallback_s']:.1f} s "
              f"after the box started (models loaded {c.get('model_loads', 0):.0f}× in {c.get('model_load_s')} s); "
              f"first caption {engine['first_caption_after_speech_s']:.2f} s after the first utterance ended; "
              f"CPU serving {engine['cpu']:.1f} s/min")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
