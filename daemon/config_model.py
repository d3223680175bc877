"""What the config's classes are built on: pydantic where a config is validated, a plain record where
one is only read.

Validating needs pydantic's schema machinery, ~9 MB of every process that imports it (bench/README.md).
Control (the HTTP API validates every PATCH), the command line and the validator below need it; the
audio, session, camera, engine and mqtt processes only read a config that was validated already. A
process of the second kind calls ``read_only()`` before it first imports ``daemon.config``: the same
classes (``daemon/config_sections.py``, ``daemon/config.py``) are then built on ``Record``, which keeps
their fields, defaults, properties and methods and skips their validators, and ``daemon.config.load``
hands the validation to a child process (``python -m daemon.config_validated``) that prints the
validated config, or what is wrong with it, as JSON. A config that control has just validated comes
along in its ``ConfigChanged``, so a change made on the admin page costs no child at all.
tests/daemon/test_config_model.py holds a read-only build to the validated one, field by field.
"""

from __future__ import annotations

import copy
import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

_READ_ONLY = False
_BUILT_ON = ("daemon.config_sections", "daemon.config")


def read_only() -> None:
    """This process reads configs validated elsewhere: call before ``daemon.config`` is imported."""
    global _READ_ONLY
    if imported := [name for name in _BUILT_ON if name in sys.modules]:
        raise RuntimeError(f"read_only() after {', '.join(imported)} was imported: its classes are built already")
    _READ_ONLY = True


def is_read_only() -> bool:
    return _READ_ONLY


class FieldInfo:
    """A field's default, as ``Field(...)`` declares it (the constraints are the validator's business)."""

    def __init__(self, default: Any = ..., *, default_factory: Callable[[], Any] | None = None, **_: Any) -> None:
        self.default = default
        self.default_factory = default_factory

    def make_default(self) -> Any:
        if self.default_factory is not None:
            return self.default_factory()
        return copy.copy(self.default)


def _field(default: Any = ..., **kwargs: Any) -> Any:
    return FieldInfo(default, **kwargs)


def _passthrough(*_args: Any, **_kwargs: Any) -> Callable[[Any], Any]:
    """``field_validator(...)``/``model_validator(...)``: the validator stays a plain (unused) method."""
    return lambda method: method


class Record:
    """A config class's fields as plain attributes; built from data a validator already accepted."""

    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    model_config: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls.model_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if name.startswith("_") or "ClassVar" in str(annotation):
                continue
            declared = cls.__dict__.get(name, ...)
            fields[name] = declared if isinstance(declared, FieldInfo) else FieldInfo(declared)
            if name in cls.__dict__:
                delattr(cls, name)  # the instance holds the value
        cls.model_fields = fields

    def __init__(self, **values: Any) -> None:
        for name, info in self.model_fields.items():
            if name in values:
                setattr(self, name, values[name])
            elif info.default is not ... or info.default_factory is not None:
                setattr(self, name, info.make_default())
            else:
                raise TypeError(f"{type(self).__name__}: {name} is required")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.model_fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, like pydantic's models

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.model_fields)
        return f"{type(self).__name__}({inner})"

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Any:
        out = copy.copy(self)
        for name, value in (update or {}).items():
            setattr(out, name, value)
        return out

    def model_dump(self, *, mode: str = "python", exclude: set[str] | None = None) -> dict[str, Any]:
        return {name: _plain(getattr(self, name), mode) for name in self.model_fields if name not in (exclude or ())}


def _plain(value: Any, mode: str) -> Any:
    if isinstance(value, Record):
        return value.model_dump(mode=mode)
    if isinstance(value, Path) and mode == "json":
        return str(value)
    if isinstance(value, list):
        return [_plain(v, mode) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v, mode) for k, v in value.items()}
    return value


def build(cls: type[Any], data: Mapping[str, Any]) -> Any:
    """An instance of a ``Record`` class from validated JSON data (nested records and paths restored)."""
    hints = _hints(cls)
    values = {}
    for name, value in data.items():
        if name not in cls.model_fields:
            raise ValueError(f"{cls.__name__} has no field {name!r}: the validator and this process disagree")
        values[name] = _restore(hints[name], value)
    return cls(**values)


def _restore(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if isinstance(option, type) and issubclass(option, Record) and isinstance(value, Mapping):
            return build(option, value)
        if option is Path and isinstance(value, str):
            return Path(value)
    return value


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    if (known := _HINTS.get(cls)) is None:
        known = _HINTS[cls] = typing.get_type_hints(cls)
    return known


if TYPE_CHECKING:  # the type checker sees pydantic's, whatever a process builds on
    from pydantic import BaseModel as BaseModel
    from pydantic import ConfigDict as ConfigDict
    from pydantic import Field as Field
    from pydantic import field_validator as field_validator
    from pydantic import model_validator as model_validator
else:

    def __getattr__(name: str) -> Any:
        """The building blocks, read when ``daemon.config_sections`` is imported: pydantic's or ours."""
        if not _READ_ONLY:
            import pydantic

            if name in ("BaseModel", "ConfigDict", "Field", "field_validator", "model_validator"):
                return getattr(pydantic, name)
        else:
            light = {"BaseModel": Record, "ConfigDict": dict, "Field": _field,
                     "field_validator": _passthrough, "model_validator": _passthrough}  # fmt: skip
            if name in light:
                return light[name]
        raise AttributeError(name)
