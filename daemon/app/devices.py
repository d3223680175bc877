"""``tolk devices``: every device the box can use, sound (daemon/devices.py) and cameras."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

import alsaaudio

from daemon.devices import Device, audio_devices


def camera_devices() -> list[Device]:
    from services.camera.devices import camera_devices as cameras  # V4L2 and picamera2 probes, when asked

    return cameras()


LISTERS: list[Callable[[], list[Device]]] = [audio_devices, camera_devices]


def main(as_json: bool = False) -> int:
    devices = [d for lister in LISTERS for d in lister()]
    cards = alsaaudio.cards()
    if as_json:
        print(json.dumps({"cards": cards, "devices": [asdict(d) for d in devices]}, indent=1))
        return 0
    print("sound cards: " + (", ".join(cards) if cards else "none"))
    for kind in dict.fromkeys(d.kind for d in devices):
        print(f"\n{kind}:")
        for d in (d for d in devices if d.kind == kind):
            print(f"  {d.name:<40} {d.description}".rstrip())
    print('\nUse a plughw:CARD=... name (or "default"): alsa-lib then converts rate and channels.')
    return 0
