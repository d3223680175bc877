"""The one listing of the box's devices, for ``tolk devices`` and ``GET /api/devices`` alike.

Sound: alsa-lib's own device hints (what ``arecord -L`` / ``aplay -L`` print), with each one's
description and direction, plus the PCMs a config file defines without a hint, and the sound
cards: the names to put in ``[audio] capture_device`` / ``playback_device``. Prefer
``plughw:CARD=…`` (or ``default``) over ``hw:…``: ``plug`` converts rate and channels in
alsa-lib, so any USB microphone gives tolk its 16 kHz mono. Cameras: ``daemon/cameras.py``.
Blocking (alsa-lib reads its config files, the camera probe asks drivers): a server calls it
from a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field

import alsaaudio

from daemon.cameras import CameraInfo, list_cameras


@dataclass(frozen=True)
class Device:
    kind: str  # "capture" or "playback" (or "camera" where a listing shows cameras alike)
    name: str
    description: str = ""


@dataclass(frozen=True)
class Listing:
    cards: list[str]
    sound: list[Device]  # capture and playback
    cameras: list[CameraInfo]
    problems: list[str] = field(default_factory=list)  # what could not be listed, and why

    def names(self, kind: str) -> list[str]:
        """The PCM names of one direction, ``default`` first (alsa-lib always defines it)."""
        return ["default", *dict.fromkeys(d.name for d in self.sound if d.kind == kind and d.name != "default")]


def list_devices() -> Listing:
    problems: list[str] = []
    try:
        cards, sound = alsaaudio.cards(), audio_devices()
    except alsaaudio.ALSAAudioError as exc:
        problems.append(f"cannot list ALSA devices: {exc}")
        cards, sound = [], []
    return Listing(cards, sound, list_cameras(), problems)


def _hints() -> list[tuple[str, str, str | None]]:
    """(NAME, DESC, IOID) for every PCM hint alsa-lib knows; IOID None means both directions."""
    lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    lib.snd_device_name_get_hint.restype = ctypes.c_void_p
    lib.snd_device_name_get_hint.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    hints = ctypes.POINTER(ctypes.c_void_p)()
    if lib.snd_device_name_hint(-1, b"pcm", ctypes.byref(hints)) < 0:
        return []
    out = []
    try:
        i = 0
        while hints[i]:
            values = []
            for key in (b"NAME", b"DESC", b"IOID"):
                raw = lib.snd_device_name_get_hint(hints[i], key)
                values.append(ctypes.string_at(raw).decode(errors="replace") if raw else None)
                if raw:
                    libc.free(ctypes.c_void_p(raw))  # the hint's strings are ours to free
            name, desc, ioid = values
            if name:
                out.append((name, " ".join((desc or "").split()), ioid))
            i += 1
    finally:
        lib.snd_device_name_free_hint(hints)
    return out


def audio_devices() -> list[Device]:
    devices: list[Device] = []
    for name, desc, ioid in _hints():
        if ioid in (None, "Input"):
            devices.append(Device("capture", name, desc))
        if ioid in (None, "Output"):
            devices.append(Device("playback", name, desc))
    # PCMs defined in ~/.asoundrc or /etc/asound.conf without a hint are still usable names.
    known = {(d.kind, d.name) for d in devices}
    for kind, pcm_type in (("capture", alsaaudio.PCM_CAPTURE), ("playback", alsaaudio.PCM_PLAYBACK)):
        for name in alsaaudio.pcms(pcm_type):
            if (kind, name) not in known:
                devices.append(Device(kind, name))
    return devices
