"""The soak's accountant on recorded observations: each utterance's fate and cause follow from
what was observed, and nothing observed means "unexplained", never a guessed cause."""

from __future__ import annotations

from bench import ledger
from bench.ledger import Answer, CaptureBeat, Connection, Fed, Heard, Kill, Observations, Run, S

MS = S // 1000


def _utterance(index: int, start: int, loud: int = 50) -> tuple[Fed, list[Heard]]:
    """An utterance of ``loud`` 20 ms periods from ``start``, and each period as capture published it."""
    fed = Fed(index, start, start + loud * 20 * MS, loud)
    heard = [Heard(start + (n + 1) * 20 * MS, f"u{index}p{n}".encode()) for n in range(loud)]
    return fed, heard


def _beats(pid: int, until: int, muted: tuple[int, int] | None = None) -> list[CaptureBeat]:
    """Capture's heartbeats each second; muted periods counted inside ``muted`` (start, end)."""
    beats, chunks, muted_chunks = [], 0.0, 0.0
    for t in range(0, until, S):
        beats.append(CaptureBeat(t, pid, chunks, muted_chunks))
        chunks += 50
        if muted and muted[0] <= t < muted[1]:
            muted_chunks += 50
    return beats


def _observed(**changes: object) -> Observations:
    """Two utterances that went the whole way: heard, received, answered, played."""
    fed1, heard1 = _utterance(1, 1 * S)
    fed2, heard2 = _utterance(2, 5 * S)
    conn = Connection(1, 0, 0, None, {h.digest: 1 for h in heard1} | {h.digest: 2 for h in heard2}, 2, 2)
    answers = [
        Answer("resp_sim1x5", 1, 1, 3 * S, 3 * S + 100 * MS, 48000),
        Answer("resp_sim1x30", 1, 2, 7 * S, 7 * S + 100 * MS, 48000),
    ]
    runs = [Run(100, 3 * S + 120 * MS, 4 * S + 200 * MS, 24000), Run(100, 7 * S + 120 * MS, 8 * S + 200 * MS, 24000)]
    obs = Observations(
        fed=[fed1, fed2],
        heard=heard1 + heard2,
        speech_starts=[1 * S + 100 * MS, 5 * S + 100 * MS],
        capture_beats=_beats(10, 20 * S),
        connections=[conn],
        answers=answers,
        runs=runs,
        kills=[],
    )
    for key, value in changes.items():
        setattr(obs, key, value)
    return obs


def _fates(obs: Observations) -> list[tuple[str, str]]:
    return [(f.reached, f.cause) for f in ledger.account(obs)]


def test_utterances_that_went_the_whole_way_are_played() -> None:
    fates = ledger.account(_observed())
    assert [f.played for f in fates] == [True, True]
    assert ledger.funnel(fates) == [(stage, 2) for stage in ledger.STAGES]


def test_speech_muted_while_the_box_spoke_is_a_half_duplex_loss() -> None:
    obs = _observed()
    obs.heard = [h for h in obs.heard if not h.digest.startswith(b"u2")]  # nothing of it published
    obs.speech_starts = obs.speech_starts[:1]
    obs.capture_beats = _beats(10, 20 * S, muted=(5 * S, 6 * S))
    obs.runs = [*obs.runs, Run(100, 4 * S + 800 * MS, 6 * S, 24000)]
    fates = ledger.account(obs)
    assert (fates[1].reached, fates[1].cause) == ("fed", "half-duplex mute")
    assert "spoke during it" in fates[1].detail
    # An answer to the utterance before that begins inside this one mutes its rest: the box spoke.
    obs.runs = [*obs.runs[:2], Run(100, 5 * S + 500 * MS, 7 * S, 36000)]
    assert "spoke during it" in ledger.account(obs)[1].detail
    # The same loss with the box silent is a mute that outlived its reason, said so.
    obs.runs = obs.runs[:2]
    assert "outlived" in ledger.account(obs)[1].detail
    # In full duplex there is no mute to blame: capture heard nothing and the VAD never fired.
    obs.half_duplex = False
    assert _fates(obs)[1] == ("fed", "VAD")


def test_a_capture_killed_under_an_utterance_is_its_kill_window() -> None:
    obs = _observed(kills=[Kill("capture", 10, 4 * S, 7 * S)])
    obs.heard = [h for h in obs.heard if not h.digest.startswith(b"u2")]
    fates = ledger.account(obs)
    assert (fates[1].reached, fates[1].cause) == ("fed", "kill window (capture)")
    assert fates[0].played  # it was answered and played before the kill
    # A kill of the camera explains nothing capture did not publish: with no other cause it is
    # named as the only thing seen in the window, not hidden behind "capture".
    obs.kills = [Kill("camera", 11, 4 * S, 7 * S)]
    obs.speech_starts = obs.speech_starts[:1]
    assert _fates(obs)[1] == ("fed", "VAD")


def test_audio_the_service_never_received_is_a_drop_when_the_connection_closed_then() -> None:
    obs = _observed()
    conn = obs.connections[0]
    kept = {d: u for d, u in conn.periods.items() if not d.startswith(b"u2")}
    obs.connections = [Connection(1, 0, 5 * S + 500 * MS, 1011, kept, 1, 1)]
    assert _fates(obs)[1] == ("captured", "connection drop")
    obs.connections = [Connection(1, 0, 0, None, kept, 1, 1)]  # open all along: nothing explains it
    assert _fates(obs)[1] == ("captured", "unexplained")


def test_heard_but_not_answered() -> None:
    obs = _observed()
    conn = obs.connections[0]
    obs.answers = obs.answers[:1]
    obs.connections = [Connection(1, 0, 0, None, conn.periods, 1, 1)]
    assert _fates(obs)[1] == ("sent", "never answered")
    obs.connections = [Connection(1, 0, 6 * S, 1011, conn.periods, 2, 1)]  # cut mid-response
    assert _fates(obs)[1] == ("sent", "connection drop")
    obs.kills = [Kill("session", 20, 6 * S, 9 * S)]
    assert _fates(obs)[1] == ("sent", "kill window (session)")


def test_two_utterances_the_service_heard_as_one_get_one_answer() -> None:
    obs = _observed()
    conn = obs.connections[0]
    obs.connections = [Connection(1, 0, 0, None, dict.fromkeys(conn.periods, 1), 1, 1)]
    fates = ledger.account(obs)
    assert fates[0].played
    assert (fates[1].reached, fates[1].cause, fates[1].detail) == (
        "sent",
        "never answered",
        "heard as one with utterance 1",
    )


def test_an_answer_playback_did_not_play() -> None:
    obs = _observed()
    obs.runs = [obs.runs[0], Run(100, 7 * S + 120 * MS, None, 0)]  # started, never drained
    obs.kills = [Kill("playback", 100, 7 * S + 300 * MS, 9 * S)]
    assert _fates(obs)[1] == ("received", "kill window (playback)")
    obs.runs = [obs.runs[0], Run(100, 7 * S + 120 * MS, 7 * S + 400 * MS, 6000)]  # cut short, speech during it
    obs.kills = []
    obs.speech_starts = [*obs.speech_starts, 7 * S + 300 * MS]
    assert _fates(obs)[1] == ("received", "barge-in")
    obs.speech_starts = obs.speech_starts[:2]
    assert _fates(obs)[1] == ("received", "unexplained")


def test_a_run_cut_by_a_kill_takes_no_answer_its_successor_played() -> None:
    obs = _observed()
    # The first playback is killed while it speaks the first answer; its successor plays the second.
    obs.runs = [Run(100, 3 * S + 120 * MS, None, 0), Run(200, 7 * S + 120 * MS, 8 * S + 200 * MS, 24000)]
    obs.kills = [Kill("playback", 100, 3 * S + 300 * MS, 5 * S)]
    assert _fates(obs) == [("received", "kill window (playback)"), ("played", "")]


def test_the_report_counts_every_utterance_once() -> None:
    obs = _observed()
    obs.heard = [h for h in obs.heard if not h.digest.startswith(b"u2")]
    obs.speech_starts = obs.speech_starts[:1]
    text = ledger.report(ledger.account(obs))
    assert "lost: 1 of 2" in text
    assert "VAD" in text and "#2" in text


def test_a_capture_running_seconds_behind_is_followed_by_content_not_by_the_clock() -> None:
    """A restarted capture lags the microphone (what was said while it was down waits in the
    device's buffer): its periods, found among what was fed, still count for their utterance,
    and its mute is looked for on its own clock."""
    obs = _observed()
    lag = 4 * S
    obs.heard = [Heard(h.t_ns + lag, h.digest, h.t_ns - 20 * MS) for h in obs.heard]
    obs.speech_starts = [t + lag for t in obs.speech_starts]
    assert [f.played for f in ledger.account(obs)] == [True, True]
    obs.heard = [h for h in obs.heard if not h.digest.startswith(b"u2")] + [Heard(2 * S + lag, b"x", 2 * S)]
    obs.speech_starts = obs.speech_starts[:1]
    obs.capture_beats = _beats(10, 20 * S, muted=(5 * S + lag, 6 * S + lag))
    assert _fates(obs)[1] == ("fed", "half-duplex mute")
    obs.capture_beats = _beats(10, 20 * S, muted=(5 * S, 6 * S))  # muted on the feeder's clock only
    assert _fates(obs)[1] == ("fed", "VAD")


def test_an_answer_whose_rest_came_late_played_across_a_pause() -> None:
    # Playback drained after the first quarter (the rest of the answer was late) and went on.
    obs = _observed()
    first, second = obs.runs
    obs.runs = [Run(100, first.start_ns, first.start_ns + 125 * MS, 6000), Run(100, first.start_ns + 500 * MS,
                first.end_ns, 18000), second]  # fmt: skip
    assert [f.played for f in ledger.account(obs)] == [True, True]
    # A pause longer than a second is two runs: the first answer played a quarter of itself.
    obs.runs = [Run(100, first.start_ns, first.start_ns + 125 * MS, 6000), Run(100, first.start_ns + 1500 * MS,
                first.end_ns + S, 18000), second]  # fmt: skip
    assert ledger.account(obs)[0].cause == "unexplained"
