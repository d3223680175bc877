"""The JSON schema of a ``PATCH /api/config`` body, derived from the config model.

Same sections and keys as the file, every key optional and nullable (``null`` removes an HTTP
override), unknown keys refused, secrets left out (they are refused over HTTP), and the
allowed values spelled out where the model checks them in code (language codes, voices,
camera sources), so that ``/openapi.json`` tells a client what would be accepted. The
request itself is still validated by the config model, whose messages are the better ones.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from daemon import config as config_mod
from daemon import languages as lang
from daemon.realtime import profiles
from services.control.store import is_secret_key

_LANGUAGE = Literal[tuple(lang.LANGUAGE_NAMES)]  # type: ignore[valid-type]
_SOURCE = Literal[(*lang.LANGUAGE_NAMES, profiles.AUTO)]  # type: ignore[valid-type]
_VOICE = Literal[tuple(sorted(profiles.KNOWN_VOICES))]  # type: ignore[valid-type]

#: Keys whose allowed values the model checks in code: the schema says them instead.
_OVERRIDES: dict[str, tuple[Any, dict[str, Any]]] = {
    "languages.source": (_SOURCE, {}),
    "languages.target": (_LANGUAGE, {}),
    "output.voice": (_VOICE, {}),
    "camera.source": (str, {"pattern": r"^(none|picamera2|v4l2:/dev/.+|file:/.*)$"}),
    "control.listen": (str, {"pattern": r"^(\[[0-9a-fA-F:]+\]|[^:\s\[\]]+):[0-9]{1,5}$"}),
    "service.url": (str, {"pattern": r"^wss?://[^?\s]+$"}),
}


def _section_patch(section: str, model: type[BaseModel], described: bool) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if is_secret_key(name):
            continue
        plain: tuple[Any, dict[str, Any]] = (info.annotation, {})
        annotation, extra = _OVERRIDES.get(f"{section}.{name}", plain) if described else plain
        if not extra and info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (annotation | None, Field(None, description=info.description, **extra))
    title = f"{section.capitalize()}Patch"
    return create_model(title, __config__=ConfigDict(extra="forbid"), **fields)


def config_patch_model(described: bool = True) -> type[BaseModel]:
    """``described``: with the allowed values spelled out (for the schema); without, only the
    types, for checking a body strictly (the config model then words the value problems)."""
    sections: dict[str, Any] = {}
    for name, info in config_mod.Config.model_fields.items():
        section_model = info.annotation
        assert isinstance(section_model, type) and issubclass(section_model, BaseModel)
        sections[name] = (_section_patch(name, section_model, described) | None, None)
    return create_model("ConfigPatch", __config__=ConfigDict(extra="forbid"), **sections)


@functools.cache
def _strict_types() -> type[BaseModel]:
    return config_patch_model(described=False)


def type_problems(changes: Mapping[str, Any]) -> list[str]:
    """JSON values of the wrong type that the config model would quietly convert (``false`` for
    a number, ``"5"`` for an integer): over HTTP a wrong type is a mistake, and is refused."""
    try:
        _strict_types().model_validate(changes, strict=True)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{loc} = {err.get('input')!r}: {err['msg']}")
        return problems
    return []


def patch_schemas(ref_prefix: str = "#/components/schemas/") -> tuple[dict[str, Any], dict[str, Any]]:
    """The body's schema (a $ref) and the component schemas it needs."""
    schema = config_patch_model().model_json_schema(ref_template=ref_prefix + "{model}")
    components = schema.pop("$defs", {})
    components["ConfigPatch"] = schema
    return {"$ref": ref_prefix + "ConfigPatch"}, components
