"""More language pairs for the engine: CTranslate2 Marian models the user installs (``[engine] marian_dir``).

Whisper transcribes the source language, a Marian model translates the text, and the target is
spoken as for any other pair. Each pair is a folder named with the project's language codes
(``daemon/languages.py``)::

    <marian_dir>/
      de-fr/
        model.bin  config.json  shared_vocabulary.json   (CTranslate2's converter writes these)
        source.spm  target.spm                            (OPUS-MT's SentencePiece models, copied)

An OPUS-MT release (https://github.com/Helsinki-NLP/OPUS-MT-train/tree/master/models) unpacks
into the Marian ``.npz``, its ``.vocab.yml``, ``decoder.yml`` and the two ``.spm`` files; convert
it on any machine with ``pip install ctranslate2`` and copy the SentencePiece models beside it::

    ct2-marian-converter --model_path opus.spm32k-spm32k.transformer-align.model1.npz.best-perplexity.npz \\
        --vocab_paths opus.spm32k-spm32k.vocab.yml --output_dir <marian_dir>/de-fr --quantization int8
    cp source.spm target.spm <marian_dir>/de-fr/

(``ct2-opus-mt-converter --model_dir <unpacked release> --output_dir … --quantization int8`` does
the same, reading the file names from ``decoder.yml``.)

Or, from a Hugging Face ``Helsinki-NLP/opus-mt-de-fr`` checkout (needs ``transformers``)::

    ct2-transformers-converter --model ./opus-mt-de-fr --output_dir <marian_dir>/de-fr \\
        --quantization int8 --copy_files source.spm target.spm

A model with one target language only: multi-target models want a ``>>fra<<`` token in front,
which this path does not add. Pairs are found by listing the folder
(``daemon.engine_languages.marian_pairs``); a model is loaded on its first utterance and kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon import engine_languages as eng_lang
from services.engine.model import ModelError
from services.engine.tts import sentences

log = logging.getLogger("tolk.engine")

#: A small beam, as for Whisper: on a kiosk latency matters more than the last word, and on
#: sentence-length input a beam of 2 costs little more than greedy decoding.
BEAM_SIZE = 2
#: How to make a pair folder, for errors about one.
HOW_TO = (
    "convert the model with ct2-marian-converter (or ct2-transformers-converter) into that folder and "
    "copy the model's source.spm and target.spm beside it"
)


@dataclass(frozen=True)
class LoadedPair:
    translator: Any  # ctranslate2.Translator
    source_spm: Any  # sentencepiece.SentencePieceProcessor
    target_spm: Any


def load_pair(folder: Path, threads: int = 0) -> LoadedPair:
    """The pair in ``folder``, loaded on the CPU (int8 where the CPU has it); ModelError says what is wrong."""
    if missing := eng_lang.marian_missing(folder):
        raise ModelError(f"the Marian pair folder {folder} is incomplete: it lacks {', '.join(missing)}; {HOW_TO}")
    try:
        import ctranslate2
        import sentencepiece
    except ImportError:
        raise ModelError("Marian pairs need ctranslate2 and sentencepiece: pip install 'tolk[engine]'") from None
    compute_type = "int8" if "int8" in ctranslate2.get_supported_compute_types("cpu") else "default"
    try:
        translator = ctranslate2.Translator(
            str(folder),
            device="cpu",
            compute_type=compute_type,
            inter_threads=1,  # the engine runs one job at a time
            intra_threads=threads or (os.cpu_count() or 1),
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(f"the Marian model in {folder} cannot be loaded ({exc}); {HOW_TO}") from exc
    processors = []
    for name in ("source.spm", "target.spm"):
        try:
            processors.append(sentencepiece.SentencePieceProcessor(model_file=str(folder / name)))
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"{folder / name} is not a SentencePiece model ({exc}); {HOW_TO}") from exc
    return LoadedPair(translator, *processors)


class MarianTranslator:
    """Text → text for the pairs in ``folder``; blocking CPU work (the engine's model thread)."""

    def __init__(self, folder: Path, threads: int = 0, max_tokens: int = 128) -> None:
        self.folder = folder
        self.threads = threads
        self.max_tokens = max_tokens
        self._loaded: dict[tuple[str, str], LoadedPair] = {}
        self._lock = threading.Lock()

    def pairs(self) -> frozenset[tuple[str, str]]:
        """The installed pairs (lists the folder: a pair added while the engine runs is found)."""
        return eng_lang.marian_pairs(self.folder)

    def translate(self, text: str, source: str, target: str) -> str:
        return self.translate_scored(text, source, target)[0]

    def translate_scored(self, text: str, source: str, target: str) -> tuple[str, float | None]:
        """The translation, and the model's mean log-probability per token (of its least sure sentence)."""
        model = self._pair(source, target)
        # Marian models are trained on sentences: one hypothesis per sentence, in one batch.
        batch = [model.source_spm.encode(part, out_type=str) for part in sentences(text) or [text]]
        batch = [pieces for pieces in batch if pieces]
        if not batch:
            return "", None
        results = model.translator.translate_batch(
            batch, beam_size=BEAM_SIZE, max_decoding_length=self.max_tokens, return_scores=True
        )
        translated = " ".join(str(model.target_spm.decode(r.hypotheses[0])).strip() for r in results).strip()
        # CTranslate2's score is the hypothesis' log-probability divided by its length (length_penalty 1).
        return translated, min(float(r.scores[0]) for r in results)

    def _pair(self, source: str, target: str) -> LoadedPair:
        with self._lock:
            if (source, target) not in self._loaded:
                # Not cached when it fails: the next utterance tries again (the folder may be fixed).
                started = time.monotonic()
                folder = self.folder / f"{source}-{target}"
                self._loaded[(source, target)] = load_pair(folder, self.threads)
                log.info(
                    "Marian pair %s->%s loaded from %s in %.1f s", source, target, folder, time.monotonic() - started
                )
            return self._loaded[(source, target)]
