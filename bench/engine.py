"""The local engine on this CPU: end of speech → first translated audio, and each stage's real-time factor.

For each utterance length, espeak-ng German is streamed in real time (100 ms appends) to an
in-process engine over a real WebSocket; the engine's own end-of-speech decision is the start of
the clock, the first ``response.audio.delta`` its end. Real-time factor = compute seconds / audio
seconds per stage (VAD on the input, ASR+translate on the utterance, TTS on the speech it made).

    .venv/bin/python -m bench.engine [--runs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

from daemon.config import EngineConfig
from services.engine.core import Engine
from services.engine.loader import ModelLoader
from services.engine.server import EngineServer
from tests.helpers import espeak_wav, wav_pcm

SENTENCES = {
    "short": "Guten Morgen.",
    "medium": "Guten Morgen und willkommen im Museum. Die Ausstellung beginnt um neun.",
    "long": (
        "Guten Morgen und willkommen im Museum. Die Ausstellung beginnt um neun. Bitte lassen Sie Ihre "
        "Taschen an der Garderobe und fotografieren Sie nicht mit Blitz. Die Führung dauert eine Stunde."
    ),
}
CHUNK = 3200  # 100 ms of 16 kHz s16


async def one(server: EngineServer, pcm: bytes) -> tuple[float, float, float]:
    """(seconds end of speech → first audio, seconds of speech, VAD real-time factor) for one utterance."""
    async with connect(f"{server.url}?model=qwen3-livetranslate-flash-realtime", max_size=2**24) as ws:
        await ws.recv()
        session = {
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "de"},
            "translation": {"language": "en"},
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
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if event["type"] == "response.done":
                break
        await ws.send(json.dumps({"event_id": "f", "type": "session.finish"}))
        async for _ in ws:
            pass
        vad_rtf = conversation.segmenter.vad_seconds / (len(audio) / 32000)
        return conversation.first_audio_s or float("nan"), len(pcm) / 32000, vad_rtf


async def main(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tolk-bench-engine-"))
    started = time.monotonic()
    engine = Engine(EngineConfig(), work)
    print(f"models assembled, verified and loaded in {time.monotonic() - started:.1f} s")
    server = EngineServer(ModelLoader(engine.cfg, work, engine), "127.0.0.1", 0)
    await server.start()
    try:
        for name, text in SENTENCES.items():
            pcm = wav_pcm(espeak_wav(text, work / f"{name}.wav", voice="de"))
            engine.stages.seconds.clear()
            engine.stages.audio_s.clear()
            latencies, vads = [], []
            for _ in range(runs):
                latency, seconds, vad = await one(server, pcm)
                latencies.append(latency)
                vads.append(vad)
            st, au = engine.stages.seconds, engine.stages.audio_s
            rtf = {k: st[k] / au[k] for k in ("translate", "asr", "tts") if au.get(k)}
            print(
                f"{name:6s} {seconds:4.1f} s speech: end of speech → first audio "
                f"{min(latencies):.2f}-{max(latencies):.2f} s; RTF ASR+translate {rtf.get('translate', 0):.2f}, "
                f"ASR (source captions) {rtf.get('asr', 0):.2f}, TTS {rtf.get('tts', 0):.3f}, VAD {max(vads):.4f}"
            )
    finally:
        await server.stop()
        engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    asyncio.run(main(parser.parse_args().runs))
