"""The engine process standing by costs a light process: models on the first connection, let go after."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import websockets

from tests.helpers import (
    NotifySocket,
    espeak_wav,
    free_port,
    running,
    service_env,
    short_tmpdir,
    tolk_cmd,
    wait_until,
    wav_pcm,
)

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("faster_whisper") is None, reason="the engine extra is not installed"
)

#: The models (Whisper, the translator, the voices) are ~270 MB; the process without them ~35 MB.
LIGHT_MB = 90
LOADED_MB = 150


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Pss line")


async def _translate(url: str, pcm: bytes) -> str:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"event_id": "e1", "type": "session.update", "session": {
            "modalities": ["text"], "input_audio_format": "pcm16", "translation": {"language": "pt"},
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "en"}}}))  # fmt: skip
        audio = pcm + bytes(32000)
        for n, i in enumerate(range(0, len(audio), 3200)):
            chunk = base64.b64encode(audio[i : i + 3200]).decode()
            await ws.send(json.dumps({"event_id": f"a{n}", "type": "input_audio_buffer.append", "audio": chunk}))
        async with asyncio.timeout(60):
            async for raw in ws:
                event = json.loads(raw)
                assert event["type"] != "error", event
                if event["type"] == "response.text.done":
                    return str(event["text"])
    raise AssertionError("no translation")


def test_models_load_on_the_first_connection_and_go_after_a_quiet_while() -> None:
    work = short_tmpdir("tke")
    (work / "state").mkdir()
    port = free_port()
    config = work / "tolk.toml"
    config.write_text(
        f'[service]\nbackend = "local"\n[languages]\nsource = "en"\ntarget = "pt"\n'
        f'[engine]\nlisten = "127.0.0.1:{port}"\nunload_after_s = 2\n'
    )
    notify = NotifySocket(work)
    pcm = wav_pcm(espeak_wav("Where is the train station?", work / "en.wav", voice="en-us"))
    url = f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model=qwen3-livetranslate-flash-realtime"
    env = service_env(work, NOTIFY_SOCKET=notify.path)
    with running(tolk_cmd("service", "engine", "--config", str(config)), env, work / "engine.log") as proc:
        notify.wait_for("READY=1", timeout=60)
        standby = _pss_mb(proc.pid)
        assert standby < LIGHT_MB, f"standing by with {standby:.0f} MB: the models loaded before anyone asked"

        text = asyncio.run(_translate(url, pcm))
        assert "estação" in text.lower(), text
        serving = _pss_mb(proc.pid)
        assert serving > LOADED_MB, f"{serving:.0f} MB while serving: were the models loaded at all?"

        # Quiet for unload_after_s: the same process (same pid) starts afresh, light again.
        notify.messages.clear()
        notify.wait_for("RELOADING=1", timeout=30)
        notify.wait_for("READY=1", timeout=60)
        assert proc.poll() is None
        after = wait_until(lambda: (mb := _pss_mb(proc.pid)) < LIGHT_MB and mb, 10, what="the models let go")
        # One pid, started twice ("ready:" is logged just after READY=1 is sent: waited for).
        started = f"tolk-engine[{proc.pid}] INFO tolk.engine: ready:"
        wait_until(lambda: (work / "engine.log").read_text().count(started) == 2, 10, what="the second start logged")
        assert "models let go after 2 s without a connection" in (work / "engine.log").read_text()

        # And it serves again, loading them anew.
        assert "estação" in asyncio.run(_translate(url, pcm)).lower()
    notify.close()
    print(f"engine PSS: standing by {standby:.0f} MB, serving {serving:.0f} MB, afresh {after:.0f} MB")
