"""What the box spends: every ``response.done.usage`` summed, images counted by the pixel rule.

The service reports audio and text tokens in ``response.done.usage`` but documents no image
field (protocol.md 5.2), so images are estimated as the seed bills them: 0.5 token per 28x28
pixels. The rate per hour is taken over the last hour (at least a minute, so one response right
after start does not read as a fortune). The seed gives token rates, not prices: the cost needs
``[service] price_per_million_input_tokens`` / ``…_output_tokens``, else it is None.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from daemon.messages import Usage
from services.session.protocol import UsageDelta

WINDOW_S = 3600.0
MIN_SPAN_S = 60.0


class UsageMeter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self.totals = dict.fromkeys(
            (
                "input_audio_tokens",
                "input_text_tokens",
                "output_audio_tokens",
                "output_text_tokens",
                "input_tokens",
                "output_tokens",
            ),
            0,
        )
        self.image_tokens = 0.0
        self.images = 0
        # One bucket per second: [second, input tokens, output tokens]; at most an hour of them.
        self._buckets: deque[list[float]] = deque(maxlen=int(WINDOW_S) + 1)

    def add_response(self, delta: UsageDelta) -> None:
        for name in self.totals:
            self.totals[name] += getattr(delta, name)
        self._add(delta.input_tokens, delta.output_tokens)

    def add_image(self, tokens: float) -> None:
        self.images += 1
        self.image_tokens += tokens
        self._add(tokens, 0)

    def _add(self, tokens_in: float, tokens_out: float) -> None:
        second = float(int(self._clock()))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += tokens_in
            self._buckets[-1][2] += tokens_out
        else:
            self._buckets.append([second, tokens_in, tokens_out])

    def per_hour(self) -> tuple[float, float]:
        """Input and output tokens per hour, at the rate of the last hour."""
        now = self._clock()
        while self._buckets and self._buckets[0][0] < now - WINDOW_S:
            self._buckets.popleft()
        span = max(MIN_SPAN_S, min(WINDOW_S, now - self._started))
        tokens_in = sum(b[1] for b in self._buckets)
        tokens_out = sum(b[2] for b in self._buckets)
        return tokens_in * 3600 / span, tokens_out * 3600 / span

    def message(
        self, audio_seconds_sent: float, price_in: float | None, price_out: float | None
    ) -> Usage:
        in_per_hour, out_per_hour = self.per_hour()
        cost = None
        if price_in is not None and price_out is not None:
            cost = round((in_per_hour * price_in + out_per_hour * price_out) / 1e6, 6)
        return Usage(
            **self.totals,
            image_tokens_estimate=round(self.image_tokens),
            audio_seconds_sent=round(audio_seconds_sent, 3),
            images_sent=self.images,
            tokens_per_hour=round(in_per_hour + out_per_hour, 1),
            cost_per_hour=cost,
        )
