"""The local engine on this CPU: end of speech → first translated audio, and each stage's real-time factor.

For each utterance length, espeak-ng speech (German into English by default, ``--pair en-pt``
English into Portuguese) is streamed in real time (100 ms appends) to an in-process engine over a
real WebSocket; the engine's own end-of-speech decision is the start of the clock, the first
``response.audio.delta`` its end — the translation's speech, or the fixed phrase the engine says
instead of a translation it does not trust (counted as "uncertain"). Real-time factor = compute
seconds / audio seconds per stage (VAD on the input, ASR+translate on the utterance, TTS on the
speech it made).

    .venv/bin/python -m bench.engine [--runs 2] [--pair de-en|en-pt]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from daemon.config import EngineConfig
from services.engine.core import Engine
from services.engine.loader import ModelLoader
from services.engine.reliability import UNCERTAIN_MARK
from services.engine.server import EngineServer
from tests.helpers import espeak_wav, wav_pcm

SENTENCES = {
    "de": {
        "short": "Guten Morgen.",
        "medium": "Guten Morgen und willkommen im Museum. Die Ausstellung beginnt um neun.",
        "long": (
            "Guten Morgen und willkommen im Museum. Die Ausstellung beginnt um neun. Bitte lassen Sie Ihre "
            "Taschen an der Garderobe und fotografieren Sie nicht mit Blitz. Die Führung dauert eine Stunde."
        ),
    },
    "en": {
        "short": "Good morning.",
        "medium": "Welcome to the museum. How can I help you today?",
        "long": (
            "Good morning and welcome to the museum. The exhibition opens at nine. Please leave your bags "
            "in the cloakroom and do not take photographs with a flash. The guided tour takes one hour."
        ),
    },
}
VOICES = {"de": "de", "en": "en-us"}
CHUNK = 3200  # 100 ms of 16 kHz s16


async def one(server: EngineServer, pcm: bytes, source: str, target: str) -> tuple[float, float, float, bool]:
    """(seconds end of speech → first audio, seconds of speech, VAD real-time factor, marked uncertain)
    for one utterance."""
    async with connect(f"{server.url}?model=qwen3-livetranslate-flash-realtime", max_size=2**24) as ws:
        await ws.recv()
        session = {
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": source},
            "translation": {"language": target},
        }
        await ws.send(json.dumps({"event_id": "s", "type": "session.update", "session": session}))
        await ws.recv()
        conversation = server.live[max(server.live)]
        audio = bytes(CHUNK * 3) + pcm + bytes(CHUNK * 15)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n, i in enumerate(range(0, len(audio), CHUNK)):
            event = {"event_id": f"a{n}", "type": "input_audio_buffer.append"}
            event["audio"] = base64.b64encode(audio[i : i + CHUNK]).decode()
            await ws.send(json.dumps(event))
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.1 - loop.time()))
        caption = ""
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if event["type"] == "response.audio_transcript.done":
                caption = event["transcript"]
            if event["type"] == "response.done":
                break
        await ws.send(json.dumps({"event_id": "f", "type": "session.finish"}))
        async for _ in ws:
            pass
        vad_rtf = conversation.segmenter.vad_seconds / (len(audio) / 32000)
        uncertain = caption.endswith(UNCERTAIN_MARK)
        return conversation.first_audio_s or float("nan"), len(pcm) / 32000, vad_rtf, uncertain


async def main(runs: int, source: str, target: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="tolk-bench-engine-"))
    started = time.monotonic()
    engine = Engine(EngineConfig(), work)
    print(f"models assembled, verified and loaded in {time.monotonic() - started:.1f} s")
    server = EngineServer(ModelLoader(engine.cfg, work, engine), "127.0.0.1", 0)
    await server.start()
    try:
        for name, text in SENTENCES[source].items():
            pcm = wav_pcm(espeak_wav(text, work / f"{name}.wav", voice=VOICES[source]))
            engine.stages.seconds.clear()
            engine.stages.audio_s.clear()
            latencies, vads, uncertain = [], [], 0
            for _ in range(runs):
                latency, seconds, vad, marked = await one(server, pcm, source, target)
                latencies.append(latency)
                vads.append(vad)
                uncertain += marked
            st, au = engine.stages.seconds, engine.stages.audio_s
            rtf = {k: st[k] / au[k] for k in ("translate", "asr", "tts") if au.get(k)}
            print(
                f"{name:6s} {seconds:4.1f} s speech: end of speech → first audio "
                f"{min(latencies):.2f}-{max(latencies):.2f} s (median {statistics.median(latencies):.2f}); "
                f"RTF ASR+translate {rtf.get('translate', 0):.2f}, "
                f"ASR (source captions) {rtf.get('asr', 0):.2f}, TTS {rtf.get('tts', 0):.3f}, VAD {max(vads):.4f}; "
                f"uncertain {uncertain}/{runs}"
            )
    finally:
        await server.stop()
        engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--pair", choices=("de-en", "en-pt"), default="de-en")
    args = parser.parse_args()
    source, _, target = args.pair.partition("-")
    asyncio.run(main(args.runs, source, target))
