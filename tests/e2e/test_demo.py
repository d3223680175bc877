"""The README's first command on a machine without a sound card: `tolk run --demo`."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

from tests.helpers import service_env, tolk_cmd


def _demo(rundir: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = rundir / "out"
    result = subprocess.run(
        tolk_cmd("run", "--demo", "--out", str(out), *extra),
        env=service_env(rundir, XDG_CACHE_HOME=str(rundir / "cache")),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, out


def _seconds(wav: Path) -> float:
    with wave.open(str(wav), "rb") as w:
        assert w.getframerate() == 24000
        return w.getnframes() / 24000


def test_demo_translates_for_real_offline_with_the_local_engine(rundir: Path) -> None:
    """No account, no network: English speech in, Portuguese text and speech out, from real models."""
    result, out = _demo(rundir)
    assert "the box's own engine" in result.stdout
    translation = next(line for line in result.stdout.splitlines() if "[translation pt]" in line)
    source = next(line for line in result.stdout.splitlines() if "[source en]" in line)
    # "Welcome to the museum. How can I help you today?", translated right and trusted.
    assert "Bem-vindo ao museu. Como posso" in translation, translation
    assert "uncertain" not in translation and "simulated" not in translation
    assert "museum" in source.lower() and "help you" in source.lower(), source
    assert _seconds(out / "translation.wav") > 1.5


def test_demo_with_the_simulator(rundir: Path) -> None:
    result, out = _demo(rundir, "--simulator", "--source", "zh")
    assert "[translation en]" in result.stdout and "simulated" in result.stdout
    assert "[source zh]" in result.stdout
    assert _seconds(out / "translation.wav") > 0.25
    events = (out / "simulator-events.jsonl").read_text()
    assert '"session.finish"' in events
