"""A power cut (here: kill -9) in the middle of writing the overlay leaves a config that loads:
the old version or the new one, never half of each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomlkit

from daemon import config as config_mod
from services.control.store import ConfigStore
from tests.helpers import REPO

# Writes through the real store as fast as it can, alternating two valid configs, and says
# how many writes finished (a line per write) so the test kills it mid-stream.
WRITER = """
import asyncio, sys
from daemon import config as config_mod
from services.control.store import ConfigStore

store = ConfigStore(config_mod.load(sys.argv[1]), sys.argv[1])
choices = [("ja", "Nofish", "x" * 3000), ("fr", "Ethan", "y" * 5000)]

async def main():
    i = 0
    while True:
        target, voice, pad = choices[i % 2]
        # A long comment-free value makes each write span several blocks.
        await store.patch({"languages": {"target": target}, "output": {"voice": voice},
                           "audio": {"capture_device": pad}})
        i += 1
        print(i, flush=True)

asyncio.run(main())
"""


def test_kill_9_during_writes_leaves_a_loadable_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "tolk.toml"
    cfg.write_text('[languages]\nsource = "zh"\ntarget = "en"\n')
    monkeypatch.setenv("TOLK_STATE_DIR", str(state))
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    env = dict(os.environ, TOLK_STATE_DIR=str(state), PYTHONPATH=str(REPO))
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(cfg)], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert proc.stdout is not None
        written = 0
        for line in proc.stdout:  # blocks until the writer reports; ends if it dies
            written = int(line)
            if written >= 20:
                break
        assert written >= 20, "the writer stopped before 20 writes"
        time.sleep(0.01 * round_)  # land the kill at different points of the write cycle
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
        proc.stdout.close()

        loaded = config_mod.load(cfg)  # must not raise
        pair = (loaded.languages.target, loaded.output.voice)
        assert pair in (("ja", "Nofish"), ("fr", "Ethan")), pair
        assert tomlkit.parse((state / "config.toml").read_text()).unwrap()["languages"]["target"] == pair[0]

    # A temp file left by a kill is never read, and control clears it when it starts.
    store = ConfigStore(config_mod.load(cfg), str(cfg))
    store.remove_stale_temporaries()
    assert [p.name for p in state.iterdir()] == ["config.toml"]
