"""What goes out on a live connection, and how far capture's audio is settled.

In order, from one task so that nothing lands between them: a direction switch and the
utterance to translate again the other way, the backlog's audio, then (after the first audio:
the service's rule) the camera's frame when one may go. What the service answered, or what a
lost connection puts back, is told to capture as ``AudioSettled`` (docs/session.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from daemon.config import Config
from daemon.messages import AudioSettled
from daemon.service import Service
from services.session import protocol
from services.session.connection import Link
from services.session.direction import Direction
from services.session.outgoing import Outgoing
from services.session.pause import Activity
from services.session.resume import AudioIntake
from services.session.usage import UsageMeter

_BYTES_PER_S = protocol.INPUT_RATE * protocol.BYTES_PER_SAMPLE


class Sender:
    def __init__(
        self,
        process: Service,
        outgoing: Outgoing,
        intake: AudioIntake,
        direction: Direction,
        activity: Activity,
        usage: UsageMeter,
        ids: protocol.EventIds,
        switched: Callable[[Config], None],
    ) -> None:
        self.process = process  # bus, counters, log, config
        self.outgoing = outgoing
        self.intake = intake
        self.direction = direction
        self.activity = activity
        self.usage = usage
        self.ids = ids
        self._switched = switched  # a switch went out: the status names the new direction
        self._settled_published = -1

    def wake(self) -> None:
        """Something other than audio is due (a direction change): the sender runs now."""
        self.outgoing.wake()

    async def run(self, link: Link) -> None:
        """Until the connection closes (the receiver reports the close)."""
        try:
            while True:
                await self.outgoing.wait()
                await self.send_pending(link)
        except ConnectionClosed:
            return

    async def send_pending(self, link: Link) -> None:
        if link.live:
            await self._send_switch(link)
        # A session that just started holds its backlog until capture's replay is in (resume.py).
        while link.live and not self.intake.resuming and (chunk := self.outgoing.peek_audio()) is not None:
            await link.send(protocol.audio_append(chunk, self.ids.next()))
            sent = self.outgoing.pop_audio()
            self.direction.sent(chunk)
            self.activity.sent(sent.loud, time.monotonic())
            link.audio_sent = True
            self.process.count("chunks_sent")
            self.process.count("audio_seconds_sent", len(chunk) / _BYTES_PER_S)
            self.process.mark_fresh()
        self.publish_settled()
        if link.live and link.audio_sent and (frame := self.outgoing.take_image()) is not None:
            await link.send(protocol.image_append(frame.jpeg, self.ids.next()))
            self.process.count("images_sent")
            size = (frame.width, frame.height) if frame.width and frame.height else protocol.jpeg_size(frame.jpeg)
            tile = self.process.config.profile.image_tile_px
            self.usage.add_image(protocol.image_tokens(*(size or (0, 0)), tile=tile))

    async def flush(self, link: Link) -> None:
        """On shutdown: what the microphone still held, the tail shorter than a chunk too."""
        self.outgoing.flush_partial()
        await self.send_pending(link)

    async def _send_switch(self, link: Link) -> None:
        """A direction change, then the utterance to translate again the other way, if any."""
        due, replay = self.direction.take_switch()
        if not due:
            return
        effective = self.direction.effective(self.process.config)
        await link.send(protocol.session_update(effective, self.ids.next()))
        self._switched(effective)
        step = self.outgoing.chunk_bytes
        for start in range(0, len(replay), step):
            chunk = replay[start : start + step]
            await link.send(protocol.audio_append(chunk, self.ids.next()))
            self.process.count("chunks_resent")
            self.process.count("audio_seconds_sent", len(chunk) / _BYTES_PER_S)

    # --- settling: what capture need not replay ----------------------------------------------------

    def answered(self) -> None:
        """A response is done: what it answered is settled."""
        self.outgoing.settle_answered()
        self.publish_settled()

    def connection_ended(self, clean: bool) -> None:
        """What the service had not answered when the connection was lost goes first on the next."""
        if clean:
            self.outgoing.settle_all()  # finished (session.finish) or closed at a pause: all answered
        elif requeued := self.outgoing.requeue_unsettled():
            self.process.count("chunks_requeued", requeued)
            self.process.log.info("%d unanswered chunks go again on the next connection", requeued)
        self.publish_settled()

    def publish_settled(self) -> None:
        """Tell capture how far its audio needs no replay (only when that changed)."""
        if self.intake.resuming:
            return  # what a crashed session left is not known here yet: say nothing of it
        seq = self.outgoing.settled_seq
        if seq != self._settled_published:
            self._settled_published = seq
            self.process.bus.publish(AudioSettled(through_seq=seq))
