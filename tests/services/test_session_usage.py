"""What the box spends, from the session's meter to the figures /api/status shows."""

from __future__ import annotations

from daemon.messages import SessionStatus
from services.control.status import StatusAggregator
from services.session.protocol import UsageDelta, image_tokens
from services.session.usage import UsageMeter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_usage_sums_responses_counts_images_and_prices_an_hour() -> None:
    clock = Clock()
    meter = UsageMeter(clock)
    # Ten minutes of a busy kiosk: one response a minute, 30 s of speech in, 20 s out, 40 text tokens.
    for _ in range(10):
        clock.now += 60
        meter.add_response(UsageDelta(375, 0, 250, 40, input_tokens=375, output_tokens=290))
        meter.add_image(image_tokens(640, 360))
    usage = meter.message(300.0, price_in=2.0, price_out=8.0)
    assert (usage.input_audio_tokens, usage.output_audio_tokens, usage.output_text_tokens) == (3750, 2500, 400)
    assert (usage.input_tokens, usage.output_tokens, usage.images_sent) == (3750, 2900, 10)
    assert usage.image_tokens_estimate == round(10 * 0.5 * 23 * 13)
    per_hour_in = (3750 + 10 * 149.5) * 6  # 600 s of history, scaled to an hour
    per_hour_out = 2900 * 6
    assert usage.tokens_per_hour == round(per_hour_in + per_hour_out, 1)
    assert usage.cost_per_hour == round((per_hour_in * 2.0 + per_hour_out * 8.0) / 1e6, 6)
    assert meter.message(300.0, price_in=None, price_out=8.0).cost_per_hour is None  # no price, no guess
    # An idle hour later the rate falls to nothing; the totals stay.
    clock.now += 3700
    idle = meter.message(300.0, 2.0, 8.0)
    assert idle.tokens_per_hour == 0 and idle.cost_per_hour == 0 and idle.input_tokens == 3750


def test_api_status_shows_the_session_and_its_cost() -> None:
    clock = Clock()
    meter = UsageMeter(clock)
    clock.now += 120
    meter.add_response(UsageDelta(125, 0, 100, 10, input_tokens=125, output_tokens=110))
    agg = StatusAggregator(clock=clock)
    agg.handle(
        SessionStatus(
            state="backoff",
            detail="retry in 1.2 s after: network: Connection refused",
            last_error="network: Connection refused",
            reconnects=3,
            backlog_dropped=17,
        )
    )
    agg.handle(meter.message(10.0, 2.0, 8.0))
    session, usage = agg.session_info(), agg.usage_info()
    assert (session.state, session.last_error, session.reconnects, session.backlog_dropped) == (
        "backoff",
        "network: Connection refused",
        3,
        17,
    )
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (125, 110)
    assert usage.cost_per_hour == round((125 * 30 * 2.0 + 110 * 30 * 8.0) / 1e6, 6)
