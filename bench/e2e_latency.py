"""What the box adds to the service's latency, end to end, with every process real.

    .venv/bin/python -m bench.e2e_latency [--seconds 60] [--camera]

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

With ``--camera`` tolk runs twice on the same speech, without and then with camera frames (a
recorded kiosk scene through the camera's file source at 2 frames/s, any change sent), so the
cost of images on the bus and on the wire shows next to the audio-only run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq.asyncio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PERIOD, feed, pct, proc_usage, row, speaker_pcm, speech, wait_status  # noqa: E402
from daemon.bus import Subscriber  # noqa: E402
from daemon.messages import AudioIn, Channel, PlaybackState  # noqa: E402
from services.simulator import conversation as sim_conversation  # noqa: E402
from services.simulator import server as sim_server  # noqa: E402
from services.simulator.server import Simulator, running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, free_port, service_env, tolk_cmd  # noqa: E402


class TimedSimulator(Simulator):
    """The simulator, stamping when each append arrives."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrivals: list[tuple[int, bytes]] = []
        self.images = 0

    def record_event(self, record: Any, event: dict[str, Any], payload: bytes) -> None:
        if event.get("type") == "input_audio_buffer.append":
            self.arrivals.append((time.monotonic_ns(), payload))
        elif event.get("type") == "input_image_buffer.append":
            self.images += 1
        super().record_event(record, event, payload)


def _stamp_first_deltas() -> list[dict[str, int]]:
    """Wrap the simulator's send to stamp each response's first audio.delta into ``holder[0]``."""
    original = sim_conversation.Conversation.send
    holder: list[dict[str, int]] = [{}]

    async def send(self: Any, event: Any) -> None:
        if isinstance(event, dict) and event.get("type") == "response.audio.delta":
            holder[0].setdefault(event.get("response_id", ""), time.monotonic_ns())
        await original(self, event)

    sim_conversation.Conversation.send = send  # type: ignore[method-assign]
    return holder


async def _collect(runtime: Path, periods: dict[bytes, int], started: dict[str, int], stop: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context()
    audio = Subscriber(ctx, Channel.BULK, ["capture"], [AudioIn], runtime)
    state = Subscriber(ctx, Channel.STATE, ["playback"], [PlaybackState], runtime)

    async def audio_loop() -> None:
        async for msg in audio:
            assert isinstance(msg, AudioIn)
            # Muted periods are zero-filled, all alike: they cannot be told apart, so are not timed.
            # Timed in 20 ms pieces, each stamped with its own end, whatever capture's period.
            count = len(msg.pcm) // PERIOD
            for k in range(count if not msg.muted else 0):
                if any(piece := msg.pcm[k * PERIOD : (k + 1) * PERIOD]):
                    periods.setdefault(piece, msg.t - (count - 1 - k) * 20_000_000)

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


def _measure_tolk(
    sim: TimedSimulator, work: Path, pcm: bytes, first_delta_sent: dict[str, int], video: Path | None = None
) -> dict[str, Any]:
    tag = "cam" if video else "tolk"
    mic = PulseMic(work / f"pulse-{tag}")
    speaker = work / f"{tag}-speaker.raw"
    home = alsa_home(work, mic.asoundrc("bench_mic") + speaker_pcm("bench_spk", speaker))
    periods: dict[bytes, int] = {}
    started: dict[str, int] = {}
    http_port = free_port()
    config = work / f"{tag}.toml"
    camera = f'[camera]\nsource = "file:{video}"\nmax_fps = 2\nchange_threshold = 0\nfile_fps = 10\n' if video else ""
    config.write_text(
        f'[languages]\nsource = "en"\ntarget = "de"\n[service]\nurl = "{sim.url}"\n'
        f'[audio]\ncapture_device = "bench_mic"\nplayback_device = "bench_spk"\n'
        f'[control]\nlisten = "127.0.0.1:{http_port}"\n[log]\nlevel = "warning"\n{camera}'
    )
    box = subprocess.Popen(tolk_cmd("run", "--config", str(config), "--no-restart"),
                           env=service_env(work, HOME=str(home)), cwd=REPO)  # fmt: skip
    stop_collect = asyncio.Event()
    loop = asyncio.new_event_loop()
    collector = threading.Thread(
        target=loop.run_until_complete, args=(_collect(work, periods, started, stop_collect),), daemon=True
    )
    collector.start()
    first_arrival, first_image = len(sim.arrivals), sim.images
    try:
        status = wait_status(http_port)
        pids = {name: p["pid"] for name, p in status["processes"].items()}
        before = {name: proc_usage(pid)[0] for name, pid in pids.items()}
        t0 = time.monotonic()
        feed(mic, pcm, threading.Event())
        elapsed = time.monotonic() - t0
        usage = {name: proc_usage(pid) for name, pid in pids.items()}
        counters = {name: p.get("counters", {}) for name, p in wait_status(http_port)["processes"].items()}
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
        "images": sim.images - first_image, "responses": len(first_delta_sent),
        "cpu_per_min": {n: (cpu - before[n]) / elapsed * 60 for n, (cpu, _) in usage.items()},
        "rss_mb": {n: hwm / 1024 for n, (_, hwm) in usage.items()},
        "playback_chunk_p50": counters.get("playback", {}).get("latency_ms_p50"),
    }  # fmt: skip


def _measure_baseline(sim: TimedSimulator, work: Path, pcm: bytes, first_delta_sent: dict[str, int]) -> dict[str, Any]:
    from bench.baseline_client import digest

    mic = PulseMic(work / "pulse-base")
    speaker = work / "base-speaker.raw"
    home = alsa_home(work, mic.asoundrc("bench_mic") + speaker_pcm("bench_spk", speaker))
    stamps = work / "baseline-stamps.jsonl"
    first_arrival = len(sim.arrivals)
    seconds = len(pcm) / 32000
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline_client", "--url", sim.url, "--capture", "bench_mic",
         "--playback", "bench_spk", "--seconds", f"{seconds - 0.5:.1f}", "--stamps", str(stamps)],
        env=service_env(work, HOME=str(home)), cwd=REPO,
    )  # fmt: skip
    # Peak RSS from /proc while it runs: wait4's ru_maxrss would count this (large) process's
    # pages, which the child shares between its fork and its exec.
    peak_kb = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.5):
            with contextlib.suppress(OSError, StopIteration):
                peak_kb[0] = max(peak_kb[0], proc_usage(proc.pid)[1])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        time.sleep(1.0)  # connected and configured, as tolk was before its feed started
        t0 = time.monotonic()
        feed(mic, pcm, threading.Event())
        _, _status, rusage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - t0 + 1.0
        sampling.set()
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
        "rss_mb": {"baseline": peak_kb[0] / 1024},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of speech to feed (default 60)")
    parser.add_argument("--camera", action="store_true", help="also run tolk with camera frames (a recorded scene)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tkb", dir="/tmp"))
    (work / "state").mkdir()
    pcm = speech(work, args.seconds)
    sim_server.Simulator = TimedSimulator  # type: ignore[misc,assignment]  # running_in_thread builds this class
    with running_in_thread() as sim:
        assert isinstance(sim, TimedSimulator)
        first_deltas = _stamp_first_deltas()
        tolk_sent = first_deltas[0]
        tolk = _measure_tolk(sim, work, pcm, tolk_sent)
        cam = None
        if args.camera:
            from bench.camera_tokens import record_scene

            video = work / "scene.avi"
            print(f"recording a camera scene to {video} ...", flush=True)
            record_scene(video)
            cam_sent = first_deltas[0] = {}
            cam = _measure_tolk(sim, work, pcm, cam_sent, video)
        base_sent = first_deltas[0] = {}
        base = _measure_baseline(sim, work, pcm, base_sent)
        violations = len(sim.violations)

    print(f"\ntolk end-to-end latency — {len(pcm) / 32000:.0f} s of speech, {tolk['appends']} appends, "
          f"{len(tolk_sent)} responses; {os.cpu_count()} CPUs, {os.uname().machine}")  # fmt: skip
    print(row("tolk in: period end -> append at service (last)", tolk["in_last"]))
    print(row("tolk in: period end -> append at service (first)", tolk["in_first"]))
    print(row("tolk out: first delta sent -> first sample to ALSA", tolk["out"]))
    print(f"{'tolk out: per chunk, session receipt -> ALSA (p50)':<52} {tolk['playback_chunk_p50']} ms")
    if cam is not None:
        print(f"with camera frames: {cam['images']} images sent, {cam['appends']} appends, "
              f"{cam['responses']} responses")  # fmt: skip
        print(row("tolk+camera in: period end -> append (last)", cam["in_last"]))
        print(row("tolk+camera in: period end -> append (first)", cam["in_first"]))
        print(row("tolk+camera out: first delta -> first sample to ALSA", cam["out"]))
    print(row("baseline in: block read -> append at service", base["in_last"]))
    print(f"{'  (its first 20 ms of each block waited 80 ms more)':<52}")
    print(row("baseline out: first delta sent -> first write", base["out"]))
    print(f"\n{'process':<10} {'CPU s/min':>10} {'peak RSS MB':>12}")
    for name in tolk["cpu_per_min"]:
        print(f"{name:<10} {tolk['cpu_per_min'][name]:>10.2f} {tolk['rss_mb'][name]:>12.1f}")
    tolk_cpu, tolk_rss = sum(tolk["cpu_per_min"].values()), sum(tolk["rss_mb"].values())
    base_cpu, base_rss = base["cpu_per_min"]["baseline"], base["rss_mb"]["baseline"]
    print(f"{'tolk (all)':<10} {tolk_cpu:>10.2f} {tolk_rss:>12.1f}")
    if cam is not None:
        for name in ("camera", "session"):
            print(f"{name + '+cam':<10} {cam['cpu_per_min'][name]:>10.2f} {cam['rss_mb'][name]:>12.1f}")
        cam_cpu, cam_rss = sum(cam["cpu_per_min"].values()), sum(cam["rss_mb"].values())
        print(f"{'tolk+cam':<10} {cam_cpu:>10.2f} {cam_rss:>12.1f}")
    print(f"{'baseline':<10} {base_cpu:>10.2f} {base_rss:>12.1f}")
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    print("\ntolk / baseline: "
          f"in p50 {ratio(pct(tolk['in_last'], 50), pct(base['in_last'], 50)):.2f}, "
          f"in p99 {ratio(pct(tolk['in_last'], 99), pct(base['in_last'], 99)):.2f}, "
          f"out p50 {ratio(pct(tolk['out'], 50), pct(base['out'], 50)):.2f}, "
          f"CPU {ratio(tolk_cpu, base_cpu):.2f}, RSS {ratio(tolk_rss, base_rss):.2f}")  # fmt: skip
    print(f"simulator violations over both runs: {violations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
