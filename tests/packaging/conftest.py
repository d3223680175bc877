"""The packages, built once per test run by the real ``packaging/build-deb`` (into ``build/``,
where the booted test system can see them: it hides the host's /tmp)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "build" / "deb-test"


def build(arch: str) -> Path:
    out = OUT / arch
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "packaging/build-deb"), "--arch", arch, "--out", str(out),
           "--work", str(REPO / "build" / "deb-test-work")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    debs = sorted(out.glob(f"tolk_*_{arch}.deb"))
    if done.returncode != 0 or len(debs) != 1:
        pytest.fail(f"packaging/build-deb --arch {arch} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return debs[0]


@pytest.fixture(scope="session")
def amd64_deb() -> Path:
    return build("amd64")


@pytest.fixture(scope="session")
def arm64_deb() -> Path:
    return build("arm64")
