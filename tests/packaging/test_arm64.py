"""The arm64 package on an arm64 Debian 12 root under qemu-user (``packaging/arm64-root``): it
installs with apt as a kiosk owner's would, ``tolk config check`` passes on the shipped config,
and the demo translates through the simulator. Each step's time is printed (``pytest -s``)."""

from __future__ import annotations

import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import rmtree

REPO = Path(__file__).resolve().parents[2]
ROOT_TOOL = REPO / "packaging/arm64-root"
AARCH64 = 183  # ELF e_machine


def _refused() -> str | None:
    missing = [t for t in ("qemu-aarch64-static", "debootstrap", "unshare") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing (.ci/setup test installs them)"
    if not Path("/proc/sys/fs/binfmt_misc").exists():
        return "no binfmt_misc in this kernel"
    return None


REFUSED = _refused()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"no arm64 emulation here: {REFUSED}")


class Arm64Root:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "device-root"

    def run(self, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        # Output to a file, never a pipe that closes early: an emulated shell can hang on one.
        log = self.work / "cmd.log"
        with log.open("w") as out:
            done = subprocess.run(
                ["bash", str(ROOT_TOOL), "exec", str(self.work), "device-root", *cmd],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, text=True,
            )  # fmt: skip
        done.stdout = log.read_text(errors="replace")
        return done

    def ok(self, *cmd: str, timeout: float = 600) -> str:
        start = time.monotonic()
        done = self.run(*cmd, timeout=timeout)
        print(f"arm64: {' '.join(cmd)[:80]}: {time.monotonic() - start:.1f} s")
        assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}"
        return done.stdout


@pytest.fixture(scope="module")
def device(arm64_deb: Path) -> Iterator[Arm64Root]:
    work = REPO / "build" / "arm64-test"
    start = time.monotonic()
    made = subprocess.run(["bash", str(ROOT_TOOL), "device", str(work)], capture_output=True, text=True, timeout=1200)
    assert made.returncode == 0, made.stderr[-4000:]
    print(f"arm64: a fresh root: {time.monotonic() - start:.1f} s")
    root = Arm64Root(work)
    shutil.copy2(arm64_deb, root.root / "var/tmp" / arm64_deb.name)
    root.ok("apt-get", "update", "-qq")
    root.ok("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/var/tmp/{arm64_deb.name}")
    try:
        yield root
    finally:
        rmtree(work / "device-root")


def test_the_package_installs_on_arm64(device: Arm64Root) -> None:
    assert device.ok("uname", "-m").strip() == "aarch64"
    assert device.ok("dpkg-query", "-W", "-f", "${Architecture} ${Status}", "tolk") == "arm64 install ok installed"
    # The C extensions were built for this machine, not copied from the host.
    so = next((device.root / "opt/tolk/lib/python3.11/site-packages").glob("alsaaudio*.so"))
    assert int.from_bytes(so.read_bytes()[18:20], "little") == AARCH64, so.name
    assert "usage: tolk" in device.ok("tolk", "--help")
    assert (device.root / "etc/passwd").read_text().count("\ntolk:") == 1


def test_config_check_passes_on_the_shipped_config(device: Arm64Root) -> None:
    out = device.ok("tolk", "config", "check", "-c", "/etc/tolk/tolk.toml")
    assert "config OK" in out and 'model = "qwen3-livetranslate-flash-realtime"' in out


def test_the_demo_translates_through_the_simulator(device: Arm64Root) -> None:
    device.ok("apt-get", "install", "-y", "-q", "--no-install-recommends", "espeak-ng", "sox")  # the demo's voice
    demo = "cd /var/tmp && timeout 500 tolk run --demo --simulator --out /var/tmp/demo"
    out = device.ok("bash", "-c", demo, timeout=560)
    assert "[translation en]" in out and "session: live" in out, out[-3000:]
    with wave.open(str(device.root / "var/tmp/demo/translation.wav")) as wav:
        seconds = wav.getnframes() / wav.getframerate()
    # The simulator answers each utterance with a second of its own speech.
    assert seconds >= 0.9, f"{seconds:.2f} s of translated audio"
