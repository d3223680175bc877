"""Config changes from HTTP: validated like the file, stored in the overlay file, atomically.

A PATCH body has the shape of the config file, as JSON, partially, and merges like RFC 7386
(JSON merge patch): objects merge key by key, a value replaces, ``null`` removes the key from
the overlay (back to the config file's value or the default). The result (file + overlay) is
validated with the same model as the file before anything is written; a refused change leaves
the disk and memory untouched.

The overlay is edited with tomlkit so that comments someone wrote in it survive, written to a
temporary file in the same directory, fsynced, renamed over the old one, and the directory
fsynced: after a power cut the file is the old version or the new one, never half of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from daemon import config as config_mod
from daemon.messages import ConfigChanged, Message

OVERLAY_HEADER = (
    "Changes made through tolk's HTTP API (PATCH /api/config), layered over the config file.\n"
    "Delete a key to go back to the config file's value. Comments written here are kept."
)

# Any key that looks like it carries or locates a secret: the API key never travels over HTTP.
_SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password|credentials?)(_|$)", re.IGNORECASE)


class PatchRejected(Exception):
    """A change that cannot be applied; ``problems`` names each key, its value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class OverlayUnreadable(Exception):
    """The overlay on disk cannot be parsed: a person must fix or delete it."""


def is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def secret_problems(changes: Mapping[str, Any], prefix: str = "") -> list[str]:
    """One line per key in ``changes`` that would set (or point at) a secret."""
    problems = []
    for key, value in changes.items():
        dotted = f"{prefix}{key}"
        if is_secret_key(str(key)):
            problems.append(
                f"{dotted}: secrets cannot be set over HTTP; the API key comes from DASHSCOPE_API_KEY, "
                f"[service] api_key_file in the config file, or the systemd credential "
                f"{config_mod.CREDENTIAL_NAME!r}"
            )
        elif isinstance(value, Mapping):
            problems.extend(secret_problems(value, f"{dotted}."))
    return problems


def merge_patch(target: MutableMapping[str, Any], patch: Mapping[str, Any], new_table: Callable[[], Any]) -> None:
    """Apply a JSON merge patch to ``target`` in place; emptied tables are removed."""
    for key, value in patch.items():
        if value is None:
            if key in target:
                del target[key]
        elif isinstance(value, Mapping):
            existed = isinstance(target.get(key), MutableMapping)
            if not existed:
                # An object replaces a value that is not one (RFC 7386), even an empty object:
                # {"log": {"level": {}}} must fail validation, not vanish.
                target[key] = new_table()
            merge_patch(target[key], value, new_table)
            if existed and not target[key]:
                del target[key]  # emptied by removals: drop the table header too
        else:
            target[key] = copy.deepcopy(value)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ConfigStore:
    """The running config as control knows it, and the only writer of the overlay file."""

    def __init__(
        self,
        config: config_mod.Config,
        config_path: str | None,
        overlay: Path | None = None,
        vet: Callable[[config_mod.Config], list[str]] | None = None,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self.overlay = overlay or config_mod.overlay_path()
        #: Checks beyond the model that a change must pass (e.g. a LAN address needs a token).
        self.vet = vet or (lambda _config: [])
        # A threading lock, not an asyncio one: the write runs in a worker thread, and a request
        # cancelled mid-write must not let the next PATCH start while that thread still writes.
        self._lock = threading.Lock()
        self.writes = 0

    @property
    def current(self) -> config_mod.Config:
        return self._config

    def announcement(self, sections: set[str] | list[str]) -> ConfigChanged:
        """What the bus is told of a change: the sections, and the config as validated here."""
        return ConfigChanged(sections=sorted(sections), config=config_mod.validated_data(self._config),
                             base=config_mod.layers_named(self._config_path))  # fmt: skip

    def replace(self, config: config_mod.Config) -> None:
        """The lifecycle reloaded the config (SIGHUP, or our own ConfigChanged)."""
        self._config = config

    def public(self) -> dict[str, Any]:
        return config_mod.public_dict(self._config)

    async def patch(self, changes: Mapping[str, Any]) -> tuple[config_mod.Config, set[str]]:
        """Validate and store ``changes``; the new config and the sections that changed.

        Raises PatchRejected (nothing changed) or OverlayUnreadable.
        """
        if problems := secret_problems(changes):
            raise PatchRejected(problems)
        return await asyncio.to_thread(self._patch_locked, changes)

    def _patch_locked(self, changes: Mapping[str, Any]) -> tuple[config_mod.Config, set[str]]:
        with self._lock:
            doc = self._read_overlay()
            overlay = doc.unwrap()
            merge_patch(overlay, changes, dict)
            new = self._validate(overlay)
            if problems := self._type_problems(changes) or self.vet(new):
                raise PatchRejected(problems)
            merge_patch(doc, changes, tomlkit.table)
            write_atomic(self.overlay, tomlkit.dumps(doc))
            self.writes += 1
            old, self._config = self._config, new
            return new, config_mod.changed_sections(old, new)

    @staticmethod
    def _type_problems(changes: Mapping[str, Any]) -> list[str]:
        # Imported here: the patch schema is derived from this module's notion of secrets.
        from services.control.patch_schema import type_problems

        return type_problems(changes)

    def remove_stale_temporaries(self) -> int:
        """Temp files a crash left mid-write (the rename never happened): they are never read."""
        removed = 0
        for stale in self.overlay.parent.glob(f".{self.overlay.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
                removed += 1
        return removed

    def _read_overlay(self) -> tomlkit.TOMLDocument:
        try:
            text = self.overlay.read_text(encoding="utf-8")
        except FileNotFoundError:
            doc = tomlkit.document()
            for line in OVERLAY_HEADER.splitlines():
                doc.add(tomlkit.comment(line))
            doc.add(tomlkit.nl())
            return doc
        except OSError as exc:
            raise OverlayUnreadable(f"cannot read {self.overlay}: {exc.strerror}") from None
        try:
            return tomlkit.parse(text)
        except TOMLKitError as exc:
            raise OverlayUnreadable(f"{self.overlay} is not valid TOML ({exc}); fix or delete it") from None

    def _validate(self, overlay: Mapping[str, Any]) -> config_mod.Config:
        """The same checks as config.load(): the file on its own, then the file with the overlay."""
        path = config_mod.config_path(self._config_path)
        try:
            base = config_mod.read_toml(path) if path is not None else {}
            config_mod.validate(base, str(path))
        except config_mod.ConfigError as exc:
            # Not the request's fault, but nothing can be stored on top of a broken file.
            raise PatchRejected([f"{exc.source}: {problem}" for problem in exc.problems]) from None
        try:
            return config_mod.validate(config_mod.deep_merge(base, overlay), "PATCH /api/config")
        except config_mod.ConfigError as exc:
            raise PatchRejected(exc.problems) from None


async def apply_patch(store: ConfigStore, publish: Callable[[Message], None], changes: Mapping[str, Any]) -> set[str]:
    """The one way a change from outside the box's config file is applied (``PATCH /api/config``,
    the fleet's broker): validated and stored by ``store``, then announced on the bus, so that each
    process applies what concerns it. The sections that changed; raises PatchRejected or
    OverlayUnreadable with nothing changed."""
    _, changed = await store.patch(changes)
    if changed:
        publish(store.announcement(changed))
    return changed
