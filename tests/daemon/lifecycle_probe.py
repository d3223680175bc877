"""A minimal service run by the lifecycle tests in its own process (python -m tests.daemon.lifecycle_probe)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from daemon import config as config_mod
from daemon import logs
from daemon.service import Service, run_service


class ProbeService(Service):
    name = "camera"  # any process name: it binds that service's bus sockets
    fresh_within_s = 0.5

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.dir = Path(os.environ["TOLK_RUNTIME_DIR"])

    async def start(self) -> None:
        if (self.dir / "refuse").exists():
            raise RuntimeError("device missing on purpose")
        await asyncio.sleep(0.3)
        (self.dir / "opened").write_text(str(time.monotonic()))
        # Structured log fields: one sticky for the process, two for this line only.
        logs.annotate(session_id="probe-session-1")
        self.log.warning("probe: utterance failed", extra=logs.fields(utterance_id="utt-7", error_code="probe_error"))

    async def run(self) -> None:
        while True:
            if not (self.dir / "stall").exists():
                self.mark_fresh()
            await asyncio.sleep(0.05)

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        with (self.dir / "applied").open("a") as fh:
            fh.write(",".join(sorted(changed)) + f" target={new.languages.target}\n")

    async def stop(self) -> None:
        (self.dir / "stopped").write_text("yes")


if __name__ == "__main__":
    sys.exit(run_service(ProbeService, sys.argv[1] if len(sys.argv) > 1 else None))
