"""The watchdog means something: ``tolk service capture`` with a real NOTIFY_SOCKET and a microphone
with a real clock pets it while audio flows, stops when the device stops delivering (the process
alive, its heartbeats going on: only the work is stalled) and starts again when audio is back."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.messages import Channel, Heartbeat
from services.capture.service import CaptureService
from tests.helpers import NotifySocket, PulseMic, alsa_home, wait_until
from tests.services.capture_rig import Feeder, Tap, start_capture

WATCHDOG_USEC = 2_000_000  # pinged every second (half of it) while fresh




def pings(notify: NotifySocket, since: int) -> int:
    return sum("WATCHDOG=1" in m for m in notify.messages[since:])


def test_watchdog_stops_while_the_microphone_stalls_and_resumes_after(
    rundir: Path, sd: NotifySocket, mic: PulseMic
) -> None:
    home = alsa_home(rundir, mic.asoundrc("test_mic"))
    feeder = Feeder(mic.fd)
    feeder.start()
    with start_capture(rundir, home, sd, WATCHDOG_USEC=str(WATCHDOG_USEC)) as proc:
        beats = Tap(rundir, Channel.STATE, Heartbeat)
        try:
            wait_until(lambda: pings(sd, 0) >= 2, 15, what="two WATCHDOG=1 while audio flows")

            feeder.stop()  # the device stops delivering; the process and its loop stay up
            beats.until(lambda m: isinstance(m, Heartbeat) and m.status.startswith("no audio for"), 5)
            time.sleep(CaptureService.fresh_within_s + 0.5)
            mark = len(sd.messages)
            time.sleep(2.5)  # more than two ping periods
            assert pings(sd, mark) == 0, f"pinged while no audio arrived: {sd.messages[mark:]}"
            assert proc.poll() is None
            beat = beats.until(lambda m: isinstance(m, Heartbeat), 3)
            assert beat.status.startswith("no audio for"), beat.status
            assert any("STATUS=no audio for" in m for m in sd.messages), "systemctl status would not say why"

            resumed = Feeder(mic.fd)
            resumed.start()
            try:
                mark = len(sd.messages)
                wait_until(lambda: pings(sd, mark) >= 1, 4, what="WATCHDOG=1 after audio came back")
                beats.until(lambda m: isinstance(m, Heartbeat) and m.status.startswith("capturing test_mic"), 5)
            finally:
                resumed.stop()
        finally:
            beats.close()
