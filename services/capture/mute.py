"""The half-duplex gate: while the box's own speaker talks, the microphone sends silence.

Muted periods still go out, zero-filled and flagged ``muted``, so the stream keeps its timing
(the service sees a pause, not a jump). The speaker counts as talking from playback's
``started`` until its ``drained`` plus a short tail (``[audio] echo_tail_ms``) for the room's
echo to die away. With ``[audio] echo = "off"`` (headphones, or an echo-cancelling capture
device) the speaker never mutes the microphone. An operator's ``mute`` command silences the
microphone until ``unmute``, in every mode; it is state, not an event (``OperatorMute``): a
capture process that restarts comes back muted.

A speaker mute belongs to the playback process that began it (``speaker_pid``): a word from a
different playback process (it was restarted mid-sentence) ends it, as does its silence.
"""

from __future__ import annotations

from pathlib import Path

#: In the runtime directory: present while the operator keeps the microphone muted.
OPERATOR_MUTE_FILE = "capture.muted"
TAIL_NS = 400_000_000


class MuteGate:
    """Written on the event loop, read by the capture thread once per period.

    Each field is a single attribute assignment (atomic under the GIL); ``speaker_drained``
    sets the tail's end before clearing ``speaker`` so the reader never sees a gap between them.
    """

    def __init__(self, tail_ns: int = TAIL_NS) -> None:
        self.tail_ns = tail_ns
        self.half_duplex = True
        self.operator = False
        self.speaker = False
        self.speaker_until_ns = 0
        self.speaker_pid = 0

    def muted(self, period_start_ns: int) -> bool:
        """Whether a period that began at ``period_start_ns`` must go out as silence."""
        if self.operator:
            return True
        return self.half_duplex and (self.speaker or period_start_ns < self.speaker_until_ns)

    def speaker_started(self, pid: int = 0) -> None:
        self.speaker_pid = pid
        self.speaker = True

    def orphaned_by(self, pid: int) -> bool:
        """Whether a word from playback process ``pid`` shows the muting one is gone."""
        return self.speaker and bool(pid) and bool(self.speaker_pid) and pid != self.speaker_pid

    def speaker_drained(self, at_ns: int) -> None:
        self.speaker_until_ns = at_ns + self.tail_ns
        self.speaker = False

    def reason(self, now_ns: int) -> str | None:
        if self.operator:
            return "operator"
        if self.half_duplex and (self.speaker or now_ns < self.speaker_until_ns):
            return "speaker"
        return None


class OperatorMute:
    """The operator's mute, kept in the runtime directory (a restart keeps it, a reboot ends it)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / OPERATOR_MUTE_FILE

    def load(self) -> bool:
        return self.path.exists()

    def save(self, muted: bool) -> None:
        """Raises OSError when the runtime directory cannot take it."""
        if muted:
            self.path.touch()
        else:
            self.path.unlink(missing_ok=True)
