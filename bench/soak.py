"""A soak: the whole box for a bounded time with faults injected on a schedule.

    .venv/bin/python -m bench.soak [--minutes 3]        # 30 for the full soak

`tolk run` (restarting what dies, as systemd would) with a real-time microphone speaking an
utterance every few seconds, against the simulator. On a schedule: the service drops the
connection (every connection closes after a while of audio), a process is killed with
SIGKILL (round robin over capture, session, playback: without a camera no camera process
runs), and the server turns bursty.
Printed: utterances in vs translations out, drops, underruns, reconnects, restarts, and the
RSS growth per hour of each process, over its longest life after its first minute. A long soak
spreads its six kills over the run, so each process lives long enough for that figure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_right
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import zmq.asyncio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import ledger  # noqa: E402
from bench.common import PERIOD, feed, speaker_pcm, utterance_spans, wait_status  # noqa: E402
from daemon.bus import Subscriber  # noqa: E402
from daemon.messages import (  # noqa: E402
    AudioIn,
    AudioOut,
    Caption,
    Channel,
    Heartbeat,
    PlaybackState,
    SessionStatus,
    SpeechActivity,
)
from services.simulator.faults import Faults  # noqa: E402
from services.simulator.server import Simulator, running_in_thread  # noqa: E402
from tests.helpers import PulseMic, alsa_home, free_port, service_env, tolk_cmd  # noqa: E402

PERIOD_NS = 20_000_000  # PERIOD (20 ms) in nanoseconds
KILLED = ("capture", "session", "playback")
DROP_AFTER_AUDIO_S = 45.0
KILL_EVERY_S = 50.0  # at least; a long soak spreads its kills so that processes live long enough to measure
KILLS_PER_SOAK = 6
WARM_UP_S = 60.0  # RSS growth is measured from a process's first minute on, not through its start
BURSTY_EVERY_S = 40.0
ECHO_TAIL_MS = 400  # [audio] echo_tail_ms's default, written out so the accountant knows it
_STEP, _KEY = 32, 16  # bytes: content lookup of fed audio (see _fed_index)
_RESPONSE = re.compile(r"resp_sim(\d+)x(\d+)")


class _Watch:
    """Everything the accountant needs from the bus, gathered on a thread of its own: capture's
    loud published periods, speech starts and heartbeats; the session's states, captions and
    answers; playback's runs; every service's heartbeats (for when a killed one is back)."""

    def __init__(self, runtime: Path, loud_rms: float, fed_at: dict[bytes, int]) -> None:
        self.runtime = runtime
        self.loud_rms = loud_rms
        self.fed_at = fed_at
        self.heard_at: dict[bytes, int] = {}  # a published period's digest -> its offset in what was fed
        self.heard: list[ledger.Heard] = []
        self.speech_starts: list[int] = []
        self.capture_beats: list[ledger.CaptureBeat] = []
        self.beats: list[tuple[str, int, int, str]] = []  # (service, t, pid, state)
        self.live: list[int] = []  # SessionStatus "live"
        self.finals: set[tuple[int, str]] = set()  # final translation captions, by session pid
        self.audio_out: dict[str, list[int]] = {}  # response id -> [first t, last t, bytes]
        self.runs: list[ledger.Run] = []
        self._open_run: tuple[int, int] | None = None  # (pid, started t)
        self._pid: dict[str, int] = {}
        self.rejected = 0

    async def run(self, stop: asyncio.Event) -> None:
        ctx = zmq.asyncio.Context()
        state = Subscriber(ctx, Channel.STATE, KILLED, [Heartbeat, SpeechActivity, SessionStatus, Caption,
                                                          PlaybackState], self.runtime)  # fmt: skip
        bulk = Subscriber(ctx, Channel.BULK, ["capture", "session"], [AudioIn, AudioOut], self.runtime)
        tasks = [asyncio.create_task(self._state(state)), asyncio.create_task(self._bulk(bulk))]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.rejected = state.rejected + bulk.rejected
        state.close()
        bulk.close()
        ctx.term()

    async def _state(self, sub: Subscriber) -> None:
        async for msg in sub:
            if isinstance(msg, Heartbeat):
                self._pid[msg.service] = msg.pid
                self.beats.append((msg.service, msg.t, msg.pid, msg.state))
                if msg.service == "capture":
                    c = msg.counters
                    self.capture_beats.append(ledger.CaptureBeat(msg.t, msg.pid, c.get("chunks", 0),
                                                                 c.get("muted_chunks", 0)))  # fmt: skip
            elif isinstance(msg, SpeechActivity) and msg.speaking:
                self.speech_starts.append(msg.t)
            elif isinstance(msg, SessionStatus) and msg.state == "live":
                self.live.append(msg.t)
            elif isinstance(msg, Caption) and msg.final and msg.kind == "translation":
                self.finals.add((self._pid.get("session", 0), msg.utterance))
            elif isinstance(msg, PlaybackState):
                self._playback(msg)

    def _playback(self, msg: PlaybackState) -> None:
        pid = self._pid.get("playback", 0)
        if msg.state == "started":
            if self._open_run is not None:  # a new playback's first run: the old one never drained
                self.runs.append(ledger.Run(self._open_run[0], self._open_run[1], None, 0))
            self._open_run = (pid, msg.t)
        elif msg.state == "drained" and self._open_run is not None:
            self.runs.append(ledger.Run(self._open_run[0], self._open_run[1], msg.t, msg.frames))
            self._open_run = None

    async def _bulk(self, sub: Subscriber) -> None:
        async for msg in sub:
            if isinstance(msg, AudioIn) and not msg.muted:
                # Followed in 20 ms periods (as fed and as found at the service), whatever capture's period.
                count = len(msg.pcm) // PERIOD
                for k in range(count):
                    pcm = msg.pcm[k * PERIOD : (k + 1) * PERIOD]
                    if _rms(pcm) > self.loud_rms:
                        digest = _digest(pcm)
                        self.heard.append(ledger.Heard(msg.t - (count - 1 - k) * PERIOD_NS, digest))
                        if (offset := _find(self.fed_at, pcm)) is not None:
                            self.heard_at[digest] = offset
            elif isinstance(msg, AudioOut) and msg.response_id:
                seen = self.audio_out.setdefault(msg.response_id, [msg.t, msg.t, 0])
                seen[1] = max(seen[1], msg.t)
                seen[2] += len(msg.pcm)

    def runs_so_far(self) -> list[ledger.Run]:
        extra = [ledger.Run(self._open_run[0], self._open_run[1], None, 0)] if self._open_run else []
        return self.runs + extra

    def up_after(self, name: str, pid: int, t: int) -> int | None:
        """When a killed process's successor was up: the session live again, any other running."""
        if name == "session":
            return next((x for x in self.live if x > t), None)
        return next((bt for svc, bt, bpid, st in self.beats if svc == name and bpid != pid and bt > t
                     and st == "running"), None)  # fmt: skip


def _rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def _fed_index(pcm: bytes, spans: list[tuple[int, int]]) -> dict[bytes, int]:
    """Where each utterance's audio lies in what is fed: 8 samples every 16, by their bytes (the
    faint noise floor makes them unique), so any 20 ms period capture publishes can be found."""
    index: dict[bytes, int] = {}
    for a, b in spans:
        for p in range(a - a % _STEP, b, _STEP):
            index.setdefault(pcm[p : p + _KEY], p)
    return index


def _find(index: dict[bytes, int], pcm: bytes) -> int | None:
    """The offset in what was fed of a period whose samples came through unchanged."""
    for j in range(0, min(_STEP, len(pcm) - _KEY + 1), 2):
        if (p := index.get(pcm[j : j + _KEY])) is not None:
            return p - j
    return None


def _digest(pcm: bytes) -> bytes:
    return hashlib.blake2b(pcm, digest_size=8).digest()


def _fed(pcm: bytes, spans: list[tuple[int, int]], written: list[int], loud_rms: float) -> list[ledger.Fed]:
    """The utterances the feeder wrote in full, on its clock."""
    fed = []
    for index, (a, b) in enumerate(spans, 1):
        first, last = a // PERIOD, (b - 1) // PERIOD
        if last >= len(written):
            break
        loud = sum(_rms(pcm[n * PERIOD : (n + 1) * PERIOD]) > loud_rms for n in range(first, last + 1))
        fed.append(ledger.Fed(index, written[first], written[last], loud))
    return fed


def _on_feeder_clock(heard: list[ledger.Heard], at: dict[bytes, int], written: list[int]) -> list[ledger.Heard]:
    out = []
    for h in heard:
        offset = at.get(h.digest)
        fed_ns = None
        if offset is not None and offset // PERIOD < len(written):
            fed_ns = written[offset // PERIOD] + (offset % PERIOD) * 31_250  # 31.25 µs a byte at 16 kHz
        out.append(ledger.Heard(h.t_ns, h.digest, fed_ns))
    return out


def _connections(sim: Simulator, loud_rms: float) -> tuple[list[ledger.Connection], list[str]]:
    """What the simulator heard on each connection: each loud period, and the utterance it fell in."""
    out, notes = [], []
    for record in sim.connections:
        audio = bytes(record.audio)
        usable = len(audio) - len(audio) % PERIOD
        frames = np.frombuffer(audio[:usable], dtype="<i2").astype(np.float64).reshape(-1, PERIOD // 2)
        loud = np.sqrt(np.mean(frames * frames, axis=1)) > loud_rms if usable else np.zeros(0, dtype=bool)
        offsets = [m.offset for m in record.marks]
        periods = {}
        for n in np.flatnonzero(loud):
            mark = bisect_right(offsets, n * PERIOD) - 1
            if mark >= 0:
                periods[_digest(audio[n * PERIOD : (n + 1) * PERIOD])] = record.marks[mark].utterances_before + 1
        completed = record.sent.count("response.done")
        if len(record.sent) >= 1000:  # the list keeps the last 1000: count what was begun instead
            completed = record.replies
            notes.append(f"connection {record.number}: sent events trimmed, {record.replies} responses counted")
        out.append(ledger.Connection(record.number, record.opened_ns, record.closed_ns, record.close_code, periods,
                                     record.replies, completed))  # fmt: skip
    return out, notes


def _answers(audio_out: dict[str, list[int]]) -> list[ledger.Answer]:
    """Each response the session passed on, ranked on its connection (the simulator numbers its
    ids in the order it sends them, so the k-th on a connection is its k-th response)."""
    by_conn: dict[int, list[tuple[int, str]]] = {}
    for rid in audio_out:
        if m := _RESPONSE.fullmatch(rid):
            by_conn.setdefault(int(m[1]), []).append((int(m[2]), rid))
    answers = []
    for number, rids in by_conn.items():
        for rank, (_, rid) in enumerate(sorted(rids), 1):
            first, last, size = audio_out[rid]
            answers.append(ledger.Answer(rid, number, rank, first, last, size))
    return answers


def _rss_kb(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long (default 3; 30 for the full soak)")
    parser.add_argument("--echo", choices=("half-duplex", "aec", "off"), default="half-duplex",
                        help='[audio] echo (default "half-duplex", the config\'s default)')  # fmt: skip
    args = parser.parse_args()
    seconds = args.minutes * 60
    kill_every = max(KILL_EVERY_S, seconds / KILLS_PER_SOAK)

    work = Path(tempfile.mkdtemp(prefix="tks", dir="/tmp"))
    (work / "state").mkdir()
    pcm, spans = utterance_spans(work, seconds)
    mic = PulseMic(work / "pulse")
    home = alsa_home(work, mic.asoundrc("soak_mic") + speaker_pcm("soak_spk", work / "speaker.raw"))
    faults = Faults(close_after_audio_s=DROP_AFTER_AUDIO_S)
    written: list[int] = []  # the feeder's clock: when each period went into the microphone
    kills: list[tuple[str, int, int]] = []
    with running_in_thread(faults=faults) as sim:
        loud_rms = float(sim.endpointer_options["threshold_rms"])  # loud: what the service counts as speech
        http_port = free_port()
        config = work / "tolk.toml"
        config.write_text(
            f'[languages]\nsource = "en"\ntarget = "de"\n[service]\nurl = "{sim.url}"\n'
            f'[audio]\ncapture_device = "soak_mic"\nplayback_device = "soak_spk"\necho = "{args.echo}"\n'
            f"echo_tail_ms = {ECHO_TAIL_MS}\n"
            f'[control]\nlisten = "127.0.0.1:{http_port}"\n[log]\nlevel = "warning"\n'
        )
        print(f"settings: [audio] echo = {args.echo!r}, echo_tail_ms = {ECHO_TAIL_MS}, streaming and barge_in "
              f"as configured by default; the service drops each connection after {DROP_AFTER_AUDIO_S:.0f} s "
              f"of audio; kill -9 every {kill_every:.0f} s (round robin {', '.join(KILLED)}); bursty server "
              f"every other {BURSTY_EVERY_S:.0f} s", flush=True)  # fmt: skip
        box = subprocess.Popen(tolk_cmd("run", "--config", str(config)), env=service_env(work, HOME=str(home)),
                               cwd=REPO)  # fmt: skip
        watch = _Watch(work, loud_rms, _fed_index(pcm, spans))
        stop = asyncio.Event()
        loop = asyncio.new_event_loop()
        watcher = threading.Thread(target=loop.run_until_complete, args=(watch.run(stop),), daemon=True)
        watcher.start()
        feeder_stop = threading.Event()
        try:
            wait_status(http_port)
            rss = _RssTrack()
            feeder = threading.Thread(target=feed, args=(mic, pcm, feeder_stop, lambda _, t: written.append(t)),
                                      daemon=True)  # fmt: skip
            t0 = time.monotonic()
            feeder.start()
            bursts = 0
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
                    victim = KILLED[len(kills) % len(KILLED)]
                    pid = with_status["processes"][victim]["pid"]
                    print(f"[{elapsed:6.1f} s] kill -9 {victim} ({pid})", flush=True)
                    kills.append((victim, pid, time.monotonic_ns()))
                    os.kill(pid, signal.SIGKILL)
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
            watcher.join(5)
            mic.close()
    answered = sim.responses
    connections, notes = _connections(sim, loud_rms)
    observations = ledger.Observations(
        fed=_fed(pcm, spans, written, loud_rms),
        heard=_on_feeder_clock(watch.heard, watch.heard_at, written),
        speech_starts=watch.speech_starts,
        capture_beats=watch.capture_beats,
        connections=connections,
        answers=_answers(watch.audio_out),
        runs=watch.runs_so_far(),
        kills=[ledger.Kill(name, pid, t, watch.up_after(name, pid, t)) for name, pid, t in kills],
        half_duplex=args.echo == "half-duplex",
        tail_ns=ECHO_TAIL_MS * 1_000_000,
    )
    fates = ledger.account(observations)

    def total(name: str, key: str) -> float:
        return sum(c.get(key, 0) for (n, _), c in counters.items() if n == name)

    print(f"\ntolk soak — {duration / 60:.1f} min, {os.cpu_count()} CPUs, {os.uname().machine}, echo {args.echo!r}")
    print(f"utterances in: {len(observations.fed)}; answered by the service: {answered}; "
          f"translations out (final captions): {len(watch.finals)}")  # fmt: skip
    print(f"connections: {len(connections)} (dropped by the service every {DROP_AFTER_AUDIO_S:.0f} s of audio); "
          f"processes killed: {len(kills)}; bursty phases: {bursts}")  # fmt: skip
    print(f"capture overruns: {total('capture', 'overruns'):.0f}; session backlog dropped: "
          f"{total('session', 'backlog_dropped'):.0f}; playback underruns: {total('playback', 'underruns'):.0f}; "
          f"playback dropped chunks: {total('playback', 'dropped_chunks'):.0f}; "
          f"barge-ins: {total('playback', 'barge_ins'):.0f}")  # fmt: skip
    for name, pid, t in kills:
        up = watch.up_after(name, pid, t)
        back = f"back after {(up - t) / 1e9:.1f} s" if up else "never back"
        print(f"  kill -9 {name} ({pid}) at {(t - written[0]) / 1e9:.1f} s of speech: {back}")
    found = sum(1 for h in watch.heard if any(h.digest in c.periods for c in connections))
    lags = sorted(h.t_ns - h.fed_ns for h in observations.heard if h.fed_ns is not None)
    if lags:
        low, mid, high = (x / 1e6 for x in (lags[0], lags[len(lags) // 2], lags[-1]))
        print(f"capture behind the feeder (periods found by content: {len(lags)} of {len(watch.heard)}): "
              f"min {low:.0f} ms, median {mid:.0f} ms, max {high:.0f} ms")  # fmt: skip
    print(f"loud periods capture published: {len(watch.heard)}, of which the service received {found}; "
          f"playback runs: {len(observations.runs)}; bus frames rejected: {watch.rejected}")  # fmt: skip
    for note in notes:
        print(f"  note: {note}")
    print()
    print(ledger.report(fates))
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
