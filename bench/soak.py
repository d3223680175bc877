"""A soak: the whole box for a bounded time with faults injected on a schedule.

    .venv/bin/python -m bench.soak [--minutes 3]        # 30 for the full soak

`tolk run` (restarting what dies, as systemd would) with a real-time microphone speaking an
utterance every few seconds, against the simulator. On a schedule: the service drops the
connection (every connection closes after a while of audio), a process is killed with
SIGKILL (round robin over capture, camera, session, playback), and the server turns bursty.
Printed: utterances in vs translations out, drops, underruns, reconnects, restarts, and the
RSS growth per hour of each process, over its longest life after its first minute. A long soak
spreads its six kills over the run, so each process lives long enough for that figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import zmq.asyncio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import feed, speaker_pcm, utterances, wait_status  # noqa: E402
from daemon.bus import Subscriber  # noqa: E402
from daemon.messages import Caption, Channel, Heartbeat  # noqa: E402
from services.simulator.faults import Faults  # noqa: E402
from services.simulator.server import running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, free_port, service_env, tolk_cmd  # noqa: E402

KILLED = ("capture", "camera", "session", "playback")
DROP_AFTER_AUDIO_S = 45.0
KILL_EVERY_S = 50.0  # at least; a long soak spreads its kills so that processes live long enough to measure
KILLS_PER_SOAK = 6
WARM_UP_S = 60.0  # RSS growth is measured from a process's first minute on, not through its start
BURSTY_EVERY_S = 40.0


async def _count_translations(runtime: Path, finals: set[tuple[int, str]], stop: asyncio.Event) -> None:
    """Final translation captions, keyed by the session process that made them: a restarted
    session numbers its utterances from u1 again."""
    ctx = zmq.asyncio.Context()
    sub = Subscriber(ctx, Channel.STATE, ["session"], [Caption, Heartbeat], runtime)
    pid = 0

    async def loop() -> None:
        nonlocal pid
        async for msg in sub:
            if isinstance(msg, Heartbeat):
                pid = msg.pid
            elif isinstance(msg, Caption) and msg.final and msg.kind == "translation":
                finals.add((pid, msg.utterance))

    task = asyncio.create_task(loop())
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    sub.close()
    ctx.term()


def _rss_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long (default 3; 30 for the full soak)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    kill_every = max(KILL_EVERY_S, seconds / KILLS_PER_SOAK)

    work = Path(tempfile.mkdtemp(prefix="tks", dir="/tmp"))
    (work / "state").mkdir()
    pcm, utterances_in = utterances(work, seconds)
    mic = PulseMic(work / "pulse")
    home = alsa_home(work, mic.asoundrc("soak_mic") + speaker_pcm("soak_spk", work / "speaker.raw"))
    faults = Faults(close_after_audio_s=DROP_AFTER_AUDIO_S)
    with running_in_thread(faults=faults) as sim:
        http_port = free_port()
        config = work / "tolk.toml"
        config.write_text(
            f'[languages]\nsource = "en"\ntarget = "de"\n[service]\nurl = "{sim.url}"\n'
            f'[audio]\ncapture_device = "soak_mic"\nplayback_device = "soak_spk"\n'
            f'[control]\nlisten = "127.0.0.1:{http_port}"\n[log]\nlevel = "warning"\n'
        )
        box = subprocess.Popen(tolk_cmd("run", "--config", str(config)), env=service_env(work, HOME=str(home)),
                               cwd=REPO)  # fmt: skip
        finals: set[tuple[int, str]] = set()
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        counter = threading.Thread(target=loop.run_until_complete,
                                   args=(_count_translations(work, finals, stop),), daemon=True)  # fmt: skip
        counter.start()
        feeder_stop = threading.Event()
        try:
            wait_status(http_port)
            rss = _RssTrack()
            feeder = threading.Thread(target=feed, args=(mic, pcm, feeder_stop), daemon=True)
            t0 = time.monotonic()
            feeder.start()
            kills = bursts = 0
            next_kill, next_burst = kill_every, BURSTY_EVERY_S
            counters: dict[tuple[str, int], dict[str, float]] = {}
            while feeder.is_alive():
                elapsed = time.monotonic() - t0
                with_status = _status(http_port)
                for name, proc in (with_status or {}).get("processes", {}).items():
                    if proc.get("pid"):
                        counters[(name, proc["pid"])] = proc.get("counters", {})
                        rss.sample(name, proc["pid"])
                if elapsed >= next_kill and with_status:
                    victim = KILLED[kills % len(KILLED)]
                    pid = with_status["processes"][victim]["pid"]
                    print(f"[{elapsed:6.1f} s] kill -9 {victim} ({pid})", flush=True)
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    next_kill += kill_every
                if elapsed >= next_burst:
                    faults.bursty = not faults.bursty
                    bursts += faults.bursty
                    print(f"[{elapsed:6.1f} s] server {'bursty' if faults.bursty else 'steady'}", flush=True)
                    next_burst += BURSTY_EVERY_S
                feeder.join(2.0)
            time.sleep(4.0)  # the last responses
            duration = time.monotonic() - t0
            final = _status(http_port) or {}
            for name, proc in final.get("processes", {}).items():
                counters[(name, proc["pid"])] = proc.get("counters", {})
                rss.sample(name, proc["pid"])
        finally:
            feeder_stop.set()
            box.terminate()
            box.wait(60)
            loop.call_soon_threadsafe(stop.set)
            counter.join(5)
            mic.close()
        answered = sim.responses
        connections = len(sim.connections)

    def total(name: str, key: str) -> float:
        return sum(c.get(key, 0) for (n, _), c in counters.items() if n == name)

    print(f"\ntolk soak — {duration / 60:.1f} min, {os.cpu_count()} CPUs, {os.uname().machine}")
    print(f"utterances in: {utterances_in}; answered by the service: {answered}; "
          f"translations out (final captions): {len(finals)}")  # fmt: skip
    print(f"connections: {connections} (dropped by the service every {DROP_AFTER_AUDIO_S:.0f} s of audio); "
          f"processes killed: {kills}; bursty phases: {bursts}")  # fmt: skip
    print(f"capture overruns: {total('capture', 'overruns'):.0f}; session backlog dropped: "
          f"{total('session', 'backlog_dropped'):.0f}; playback underruns: {total('playback', 'underruns'):.0f}; "
          f"playback dropped chunks: {total('playback', 'dropped_chunks'):.0f}")  # fmt: skip
    print("\nRSS of each process's longest life, from its first minute on (earlier is start-up)")
    print(f"{'process':<10} {'measured min':>12} {'RSS from MB':>12} {'RSS to MB':>10} {'growth MB/h':>12}")
    for name, (span, start, end) in sorted(rss.longest().items()):
        growth = (end - start) / 1024 / span * 3600 if span > 0 else float("nan")
        print(f"{name:<10} {span / 60:>12.1f} {start / 1024:>12.1f} {end / 1024:>10.1f} {growth:>12.1f}")
    return 0


class _RssTrack:
    """RSS samples of every (process, pid) seen, kept from each one's warm-up on."""

    def __init__(self) -> None:
        self._born: dict[tuple[str, int], float] = {}
        self._first: dict[tuple[str, int], tuple[float, int]] = {}
        self._last: dict[tuple[str, int], tuple[float, int]] = {}

    def sample(self, name: str, pid: int) -> None:
        now = time.monotonic()
        key = (name, pid)
        born = self._born.setdefault(key, now)
        kb = _rss_kb(pid)
        if kb is None or now - born < WARM_UP_S:
            return
        self._first.setdefault(key, (now, kb))
        self._last[key] = (now, kb)

    def longest(self) -> dict[str, tuple[float, int, int]]:
        """Per process name: (seconds measured, RSS kB at the start, at the end) of its longest-lived pid."""
        best: dict[str, tuple[float, int, int]] = {}
        for key, (t0, kb0) in self._first.items():
            t1, kb1 = self._last[key]
            if key[0] not in best or t1 - t0 > best[key[0]][0]:
                best[key[0]] = (t1 - t0, kb0, kb1)
        return best


def _status(port: int) -> dict[str, Any] | None:
    try:
        return dict(httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json())
    except (httpx.HTTPError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())
