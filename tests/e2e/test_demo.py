"""The README's first command on a machine without a sound card: `tolk run --demo`."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

from tests.helpers import service_env, tolk_cmd


def test_demo_translates_a_wav_through_the_whole_box(rundir: Path) -> None:
    out = rundir / "out"
    result = subprocess.run(
        tolk_cmd("run", "--demo", "--out", str(out)),
        env=service_env(rundir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[translation en]" in result.stdout and "simulated" in result.stdout
    assert "[source zh]" in result.stdout
    with wave.open(str(out / "translation.wav"), "rb") as w:
        assert w.getframerate() == 24000 and w.getnframes() > 24000 // 4
    events = (out / "simulator-events.jsonl").read_text()
    assert '"session.finish"' in events
