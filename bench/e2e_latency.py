"""What the box adds to the service's latency, end to end, with every process real.

    .venv/bin/python -m bench.e2e_latency [--seconds 60]

`tolk run` with a microphone fed in real time (alsa-lib's pulse plugin on a private
PulseAudio pipe-source, paced by this script), the simulator in this process, and the
translated audio going to an alsa-lib `file` PCM. Figures, all from CLOCK_MONOTONIC, which
every process on the box shares:

- in:  end of a capture period (AudioIn.t, stamped by capture) -> the append that carries it
       arriving at the simulator. Measured for the last period of each 100 ms append (what the
       box adds) and for the first (what the 100 ms chunking adds on top).
- out: the simulator sending a response's first audio.delta -> playback handing that
       response's first samples to ALSA (PlaybackState "started"), which includes the start
       buffer; and playback's own per-chunk figure (session receipt -> handed to ALSA).
- CPU seconds per minute and peak RSS of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import zmq.asyncio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.bus import Subscriber  # noqa: E402
from daemon.messages import AudioIn, Channel, PlaybackState  # noqa: E402
from services.simulator import conversation as sim_conversation  # noqa: E402
from services.simulator import server as sim_server  # noqa: E402
from services.simulator.server import Simulator, running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, espeak_wav, free_port, service_env, tolk_cmd, wav_pcm  # noqa: E402

PERIOD = 640  # 20 ms at 16 kHz, 16-bit
SENTENCES = [
    "The exhibition opens at nine.",
    "Tickets are sold at the front desk.",
    "Please keep your bags with you.",
    "The cafe is on the second floor.",
    "Photography without flash is allowed.",
]


class TimedSimulator(Simulator):
    """The simulator, stamping when each append arrives."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: list[tuple[int, bytes]] = []

    def record_event(self, record: Any, event: dict[str, Any], payload: bytes) -> None:
        if event.get("type") == "input_audio_buffer.append":
            self.arrivals.append((time.monotonic_ns(), payload))
        super().record_event(record, event, payload)


def _stamp_first_deltas(sent: dict[str, int]) -> None:
    """Wrap the simulator's send to stamp each response's first audio.delta."""
    original = sim_conversation.Conversation.send

    async def send(self: Any, event: Any) -> None:
        if isinstance(event, dict) and event.get("type") == "response.audio.delta":
            sent.setdefault(event.get("response_id", ""), time.monotonic_ns())
        await original(self, event)

    sim_conversation.Conversation.send = send  # type: ignore[method-assign]


def _speech(work: Path, seconds: float) -> bytes:
    """Utterances with pauses, over a faint noise floor so every 20 ms period is unique."""
    pieces = []
    for i, text in enumerate(SENTENCES):
        pieces.append(wav_pcm(espeak_wav(text, work / f"s{i}.wav")))
    rng = np.random.default_rng(7)
    out = bytearray()
    i = 0
    while len(out) < seconds * 32000:
        out += pieces[i % len(pieces)] + bytes(int(1.2 * 32000))
        i += 1
    out += bytes(3 * 32000)  # a microphone never stops: the last response comes back while it runs
    samples = np.frombuffer(bytes(out), dtype="<i2").astype(np.int32)
    samples += rng.integers(-6, 7, size=samples.size)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def _feed(mic: PulseMic, pcm: bytes, stop: threading.Event) -> None:
    start = time.monotonic()
    for n, offset in enumerate(range(0, len(pcm), PERIOD)):
        if stop.is_set():
            return
        mic.write(pcm[offset : offset + PERIOD])
        delay = start + (n + 1) * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def _collect(runtime: Path, periods: dict[bytes, int], started: dict[str, int], stop: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context()
    audio = Subscriber(ctx, Channel.BULK, ["capture"], [AudioIn], runtime)
    state = Subscriber(ctx, Channel.STATE, ["playback"], [PlaybackState], runtime)

    async def audio_loop() -> None:
        async for msg in audio:
            assert isinstance(msg, AudioIn)
            # Muted periods are zero-filled, all alike: they cannot be told apart, so are not timed.
            if not msg.muted and any(msg.pcm):
                periods.setdefault(msg.pcm, msg.t)

    async def state_loop() -> None:
        async for msg in state:
            assert isinstance(msg, PlaybackState)
            if msg.state == "started":
                started.setdefault(msg.response_id, msg.t)

    tasks = [asyncio.create_task(audio_loop()), asyncio.create_task(state_loop())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    audio.close()
    state.close()
    ctx.term()


def _proc_usage(pid: int) -> tuple[float, int]:
    """CPU seconds used and peak RSS (kB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))  # fmt: skip
    return cpu, hwm


def _speaker_pcm(name: str, path: Path) -> str:
    return f'pcm.{name} {{\n type file\n slave.pcm null\n file "{path}"\n format raw\n}}\n'


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _row(name: str, values: list[float]) -> str:
    return (f"{name:<52} n={len(values):<5} p50={_pct(values, 50):7.2f}  p95={_pct(values, 95):7.2f}  "
            f"p99={_pct(values, 99):7.2f}  max={max(values, default=float('nan')):7.2f} ms")  # fmt: skip


def _measure_tolk(sim: TimedSimulator, work: Path, pcm: bytes, first_delta_sent: dict[str, int]) -> dict[str, Any]:
    mic = PulseMic(work / "pulse-tolk")
    speaker = work / "tolk-speaker.raw"
    home = alsa_home(work, mic.asoundrc("bench_mic") + _speaker_pcm("bench_spk", speaker))
    periods: dict[bytes, int] = {}
    started: dict[str, int] = {}
    http_port = free_port()
    config = work / "tolk.toml"
    config.write_text(
        f'[languages]\nsource = "en"\ntarget = "de"\n[service]\nurl = "{sim.url}"\n'
        f'[audio]\ncapture_device = "bench_mic"\nplayback_device = "bench_spk"\n'
        f'[control]\nlisten = "127.0.0.1:{http_port}"\n[log]\nlevel = "warning"\n'
    )
    box = subprocess.Popen(tolk_cmd("run", "--config", str(config), "--no-restart"),
                           env=service_env(work, HOME=str(home)), cwd=REPO)  # fmt: skip
    stop_collect = asyncio.Event()
    loop = asyncio.new_event_loop()
    collector = threading.Thread(
        target=loop.run_until_complete, args=(_collect(work, periods, started, stop_collect),), daemon=True
    )
    collector.start()
    first_arrival = len(sim.arrivals)
    try:
        status = _wait_status(http_port)
        pids = {name: p["pid"] for name, p in status["processes"].items()}
        before = {name: _proc_usage(pid)[0] for name, pid in pids.items()}
        t0 = time.monotonic()
        _feed(mic, pcm, threading.Event())
        elapsed = time.monotonic() - t0
        usage = {name: _proc_usage(pid) for name, pid in pids.items()}
        counters = {name: p.get("counters", {}) for name, p in _wait_status(http_port)["processes"].items()}
    finally:
        box.terminate()
        box.wait(30)
        loop.call_soon_threadsafe(stop_collect.set)
        collector.join(5)
        mic.close()
    ins_last, ins_first = [], []
    for arrived, payload in sim.arrivals[first_arrival:]:
        if (last := periods.get(payload[-PERIOD:])) is not None:
            ins_last.append((arrived - last) / 1e6)
        if (first := periods.get(payload[:PERIOD])) is not None:
            ins_first.append((arrived - first) / 1e6)
    outs = [(started[rid] - sent) / 1e6 for rid, sent in first_delta_sent.items() if rid in started]
    return {
        "in_last": ins_last, "in_first": ins_first, "out": outs, "appends": len(sim.arrivals) - first_arrival,
        "cpu_per_min": {n: (cpu - before[n]) / elapsed * 60 for n, (cpu, _) in usage.items()},
        "rss_mb": {n: hwm / 1024 for n, (_, hwm) in usage.items()},
        "playback_chunk_p50": counters.get("playback", {}).get("latency_ms_p50"),
    }  # fmt: skip


def _measure_baseline(sim: TimedSimulator, work: Path, pcm: bytes, first_delta_sent: dict[str, int]) -> dict[str, Any]:
    from bench.baseline_client import digest

    mic = PulseMic(work / "pulse-base")
    speaker = work / "base-speaker.raw"
    home = alsa_home(work, mic.asoundrc("bench_mic") + _speaker_pcm("bench_spk", speaker))
    stamps = work / "baseline-stamps.jsonl"
    first_arrival = len(sim.arrivals)
    seconds = len(pcm) / 32000
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_client", "--url", sim.url, "--capture", "bench_mic",
         "--playback", "bench_spk", "--seconds", f"{seconds - 0.5:.1f}", "--stamps", str(stamps)],
        env=service_env(work, HOME=str(home)), cwd=REPO,
    )  # fmt: skip
    try:
        time.sleep(1.0)  # connected and configured, as tolk was before its feed started
        t0 = time.monotonic()
        _feed(mic, pcm, threading.Event())
        _, _status, rusage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - t0 + 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
        mic.close()
    reads: dict[str, int] = {}
    played: dict[str, int] = {}
    for line in stamps.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "read":
            reads.setdefault(entry["hash"], entry["t"])
        else:
            played[entry["response_id"]] = entry["t"]
    ins = [(arrived - reads[h]) / 1e6 for arrived, payload in sim.arrivals[first_arrival:]
           if any(payload[-PERIOD:]) and (h := digest(payload[-PERIOD:])) in reads]  # fmt: skip
    outs = [(played[rid] - sent) / 1e6 for rid, sent in first_delta_sent.items() if rid in played]
    return {
        "in_last": ins, "out": outs, "appends": len(sim.arrivals) - first_arrival,
        "cpu_per_min": {"baseline": (rusage.ru_utime + rusage.ru_stime) / elapsed * 60},
        "rss_mb": {"baseline": rusage.ru_maxrss / 1024},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of speech to feed (default 60)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tkb", dir="/tmp"))
    (work / "state").mkdir()
    pcm = _speech(work, args.seconds)
    sim_server.Simulator = TimedSimulator  # type: ignore[misc,assignment]  # running_in_thread builds this class
    with running_in_thread() as sim:
        assert isinstance(sim, TimedSimulator)
        tolk_sent: dict[str, int] = {}
        _stamp_first_deltas(tolk_sent)
        tolk = _measure_tolk(sim, work, pcm, tolk_sent)
        base_sent: dict[str, int] = {}
        _stamp_first_deltas(base_sent)
        base = _measure_baseline(sim, work, pcm, base_sent)
        violations = len(sim.violations)

    print(f"\ntolk end-to-end latency — {len(pcm) / 32000:.0f} s of speech, {tolk['appends']} appends, "
          f"{len(tolk_sent)} responses; {os.cpu_count()} CPUs, {os.uname().machine}")  # fmt: skip
    print(_row("tolk in: period end -> append at service (last)", tolk["in_last"]))
    print(_row("tolk in: period end -> append at service (first)", tolk["in_first"]))
    print(_row("tolk out: first delta sent -> first sample to ALSA", tolk["out"]))
    print(f"{'tolk out: per chunk, session receipt -> ALSA (p50)':<52} {tolk['playback_chunk_p50']} ms")
    print(_row("baseline in: block read -> append at service", base["in_last"]))
    print(_row("baseline out: first delta sent -> first write", base["out"]))
    print(f"\n{'process':<10} {'CPU s/min':>10} {'peak RSS MB':>12}")
    for name in tolk["cpu_per_min"]:
        print(f"{name:<10} {tolk['cpu_per_min'][name]:>10.2f} {tolk['rss_mb'][name]:>12.1f}")
    tolk_cpu, tolk_rss = sum(tolk["cpu_per_min"].values()), sum(tolk["rss_mb"].values())
    base_cpu, base_rss = base["cpu_per_min"]["baseline"], base["rss_mb"]["baseline"]
    print(f"{'tolk (all)':<10} {tolk_cpu:>10.2f} {tolk_rss:>12.1f}")
    print(f"{'baseline':<10} {base_cpu:>10.2f} {base_rss:>12.1f}")
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    print("\ntolk / baseline: "
          f"in p50 {ratio(_pct(tolk['in_last'], 50), _pct(base['in_last'], 50)):.2f}, "
          f"in p99 {ratio(_pct(tolk['in_last'], 99), _pct(base['in_last'], 99)):.2f}, "
          f"out p50 {ratio(_pct(tolk['out'], 50), _pct(base['out'], 50)):.2f}, "
          f"CPU {ratio(tolk_cpu, base_cpu):.2f}, RSS {ratio(tolk_rss, base_rss):.2f}")  # fmt: skip
    print(f"simulator violations over both runs: {violations}")
    return 0


def _wait_status(port: int, timeout: float = 40.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()
            procs = status.get("processes", {})
            if len(procs) == 5 and all(p.get("up") for p in procs.values()) and status["session"]["state"] == "live":
                return dict(status)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit("the box did not come up")


if __name__ == "__main__":
    sys.exit(main())
