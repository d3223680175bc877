"""``tolk devices``: every device the box can use, as the one listing has them (daemon/devices.py)."""

from __future__ import annotations

import json
from dataclasses import asdict

from daemon.cameras import CameraInfo
from daemon.devices import Device, list_devices


def _camera_lines(cameras: list[CameraInfo]) -> list[Device]:
    """The cameras as the source values to write, with what each is or why it cannot serve."""
    lines = [
        Device("camera", c.source, f"{c.name}: {c.detail}" if c.usable else f"{c.name}, not usable: {c.detail}")
        for c in cameras
    ]
    if not any(c.source.startswith("v4l2:") for c in cameras):
        lines.insert(0, Device("camera", "v4l2:/dev/videoN", "no V4L2 webcam found (/dev/video*)"))
    lines.append(Device("camera", "file:/path", "a still image, a folder of images or a video (tests, demos)"))
    return lines


def main(as_json: bool = False) -> int:
    listing = list_devices()
    devices = [*listing.sound, *_camera_lines(listing.cameras)]
    if as_json:
        print(json.dumps({"cards": listing.cards, "devices": [asdict(d) for d in devices]}, indent=1))
        return 0
    print("sound cards: " + (", ".join(listing.cards) if listing.cards else "none"))
    for problem in listing.problems:
        print(f"  ({problem})")
    for kind in dict.fromkeys(d.kind for d in devices):
        print(f"\n{kind}:")
        for d in (d for d in devices if d.kind == kind):
            print(f"  {d.name:<40} {d.description}".rstrip())
    print('\nUse a plughw:CARD=... name (or "default"): alsa-lib then converts rate and channels.')
    return 0
