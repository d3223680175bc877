"""``GET /metrics``: the box in Prometheus's text format, from what control hears on the bus.

Counters are the processes' own (sent in every heartbeat, cumulative since that process
started: a restart resets them, which Prometheus's ``rate()`` understands). Two latency
histograms are measured here from the bus's ``t`` stamps (``CLOCK_MONOTONIC``, shared by the
processes of one boot): from the end of a stretch of speech (capture's VAD) to the first
caption of the translation, and to the speaker starting to play it. A speaker who never pauses
gives no "end of speech", so those pairs are simply not counted.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.messages import Caption, Message, PlaybackState, SpeechActivity
from services.control.status import StatusAggregator

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0)
#: A translation that starts later than this after speech ended answers something else.
MAX_PAIRING_S = 30.0
SESSION_STATES = ("connecting", "configuring", "live", "backoff", "failed", "stopped")

#: Named metrics over the processes' counters: (metric, help, {process: counter name}).
COUNTER_METRICS: tuple[tuple[str, str, dict[str, str]], ...] = (
    (
        "tolk_audio_chunks",
        "Audio chunks: captured (capture), sent to the service (session), played (playback).",
        {"capture": "chunks", "session": "chunks_sent", "playback": "chunks_played"},
    ),
    (
        "tolk_audio_dropped_chunks",
        "Audio chunks dropped: the session's backlog while offline, playback's queue or missing device.",
        {"session": "backlog_dropped", "playback": "dropped_chunks"},
    ),
    ("tolk_capture_overruns", "Capture overruns (audio lost because reading fell behind).", {"capture": "overruns"}),
    ("tolk_playback_underruns", "Playback underruns (the speaker ran dry mid-sentence).", {"playback": "underruns"}),
    ("tolk_session_reconnects", "Reconnections to the realtime service.", {"session": "reconnects"}),
    ("tolk_device_reopens", "Audio devices reopened after failing.", {"capture": "reopens", "playback": "reopens"}),
    ("tolk_images_sent", "Camera frames sent to the service.", {"session": "images_sent"}),
)


class LatencyTracker:
    """Pairs each end of speech with the next translation caption and the next speaker start."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.to_caption = Histogram(
            "tolk_speech_end_to_caption_seconds",
            "From the end of speech (capture's VAD) to the first caption of a new translation.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.to_speaker = Histogram(
            "tolk_speech_end_to_speaker_seconds",
            "From the end of speech (capture's VAD) to the speaker starting the translation.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._speech_end_ns: dict[str, int] = {}
        self._captioned: set[str] = set()

    def observe(self, msg: Message, now: float) -> None:
        if isinstance(msg, SpeechActivity):
            if not msg.speaking:
                self._speech_end_ns = {"caption": msg.t, "speaker": msg.t}
        elif isinstance(msg, Caption):
            if msg.kind == "translation" and msg.utterance not in self._captioned:
                self._captioned.add(msg.utterance)
                if len(self._captioned) > 64:  # only recent utterances matter; keep it bounded
                    self._captioned = {msg.utterance}
                self._pair("caption", msg.t, self.to_caption)
        elif isinstance(msg, PlaybackState) and msg.state == "started":
            self._pair("speaker", msg.t, self.to_speaker)

    def _pair(self, kind: str, t_ns: int, histogram: Histogram) -> None:
        start = self._speech_end_ns.pop(kind, None)
        if start is None:
            return
        seconds = (t_ns - start) / 1e9
        if 0 <= seconds <= MAX_PAIRING_S:
            histogram.observe(seconds)


class BoxCollector(Collector):
    """Reads the aggregator at scrape time: nothing is copied in between."""

    def __init__(self, status: StatusAggregator) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        procs = self.status.process_statuses()
        up = GaugeMetricFamily(
            "tolk_up", "1 while the process heartbeats and is not stopping or failed.", labels=["process"]
        )
        age = GaugeMetricFamily(
            "tolk_heartbeat_age_seconds", "Seconds since the process's last heartbeat.", labels=["process"]
        )
        raw = GaugeMetricFamily(
            "tolk_process_counter", "Every counter a process reports, as it reports it.", labels=["process", "counter"]
        )
        for proc in procs.values():
            up.add_metric([proc.name], 1.0 if proc.up else 0.0)
            if proc.age_s is not None:
                age.add_metric([proc.name], proc.age_s)
            for name, value in sorted(proc.counters.items()):
                raw.add_metric([proc.name, name], float(value))
        yield from (up, age, raw)

        for metric, help_text, sources in COUNTER_METRICS:
            family = CounterMetricFamily(metric, help_text, labels=["process"])
            for process, counter in sources.items():
                reported = procs.get(process)
                if reported is not None and counter in reported.counters:
                    family.add_metric([process], float(reported.counters[counter]))
            yield family

        playback = procs.get("playback")
        if playback is not None and "latency_ms_p50" in playback.counters:
            p50 = GaugeMetricFamily(
                "tolk_playback_latency_p50_seconds",
                "Median time from a delta's arrival in the session to its playing (playback's own figure).",
            )
            p50.add_metric([], playback.counters["latency_ms_p50"] / 1000.0)
            yield p50

        yield from _echo_metrics(self.status)

        session = self.status.session_info()
        state = GaugeMetricFamily("tolk_session_state", "1 for the realtime session's current state.", labels=["state"])
        for name in (*SESSION_STATES, *(() if session.state in SESSION_STATES else (session.state,))):
            state.add_metric([name], 1.0 if name == session.state else 0.0)
        yield state

        usage = self.status.usage_info()
        tokens = CounterMetricFamily(
            "tolk_tokens",
            "Tokens the service counted, since the session process started.",
            labels=["direction", "kind"],
        )
        seconds = CounterMetricFamily("tolk_audio_sent_seconds", "Seconds of audio sent to the service.")
        if usage is not None:
            for direction, kind, value in (
                ("in", "audio", usage.input_audio_tokens),
                ("in", "text", usage.input_text_tokens),
                ("in", "image_estimate", usage.image_tokens_estimate),
                ("out", "audio", usage.output_audio_tokens),
                ("out", "text", usage.output_text_tokens),
            ):
                tokens.add_metric([direction, kind], float(value))
            seconds.add_metric([], usage.audio_seconds_sent)
        yield from (tokens, seconds)
        if usage is not None:
            per_hour = GaugeMetricFamily("tolk_tokens_per_hour", "Tokens per hour at the rate of the last hour.")
            per_hour.add_metric([], usage.tokens_per_hour)
            yield per_hour
            if usage.cost_per_hour is not None:
                cost = GaugeMetricFamily("tolk_cost_per_hour", "Cost per hour at [service] price_per_million_*.")
                cost.add_metric([], usage.cost_per_hour)
                yield cost


def _echo_metrics(status: StatusAggregator) -> Iterator[Metric]:
    echo = status.echo_info()
    if echo is None:
        return
    on = GaugeMetricFamily("tolk_echo_cancelling", "1 while the echo canceller runs on the microphone.")
    on.add_metric([], 1.0 if echo.cancelling else 0.0)
    yield on
    if echo.erle_db is not None:
        erle = GaugeMetricFamily(
            "tolk_echo_erle_db", "Echo return loss enhancement over the last seconds when only the box spoke."
        )
        erle.add_metric([], echo.erle_db)
        yield erle
    for name, help_text, value in (
        ("tolk_echo_far_seconds", "Seconds the box spoke with the canceller running.", echo.far_s),
        ("tolk_echo_double_talk_seconds", "Of those, seconds someone spoke over the box.", echo.double_talk_s),
        ("tolk_echo_onset_guard_seconds", "Seconds sent as silence while the canceller locked on.", echo.onset_guard_s),
        ("tolk_echo_residual_seconds", "Seconds only the echo's residue was left.", echo.residual_s),
        ("tolk_echo_resyncs", "Times the speaker's reference was laid anew on the microphone's time.", echo.resyncs),
        ("tolk_echo_reference_late_seconds", "Seconds of reference that came late.", echo.reference_late_s),
    ):
        family = CounterMetricFamily(name, help_text)
        family.add_metric([], value)
        yield family


class BoxMetrics:
    """One registry per app (never the global one: tests build many apps in one process)."""

    def __init__(self, status: StatusAggregator) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BoxCollector(status))
        self.latency = LatencyTracker(self.registry)
        status.observers.append(self.latency.observe)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
