from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NotifySocket, rmtree, short_tmpdir


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A short runtime dir (ipc paths stay under 107 characters), with a state dir inside."""
    path = short_tmpdir()
    (path / "state").mkdir()
    yield path
    rmtree(path)


@pytest.fixture
def notify(rundir: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(rundir)
    yield sock
    sock.close()
