import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_grpc.sessions import EndReason, Segmenter, SegmenterConfig, Utterance
from tests.audio import chunks, silence, tone

pytestmark = pytest.mark.unit

RATE = 16000


def segmenter(pause_ms: int = 300, hangover_ms: int = 100, max_ms: int = 5000) -> Segmenter:
    return Segmenter(SegmenterConfig(RATE, pause_ms, hangover_ms, max_ms, silence_threshold_dbfs=-40))


def feed(seg: Segmenter, pcm: bytes, start: float = 0.0, chunk_ms: int = 20) -> list[Utterance]:
    """Streams `pcm` as fast as possible (all at time `start`)."""
    out: list[Utterance] = []
    for c in chunks(pcm, chunk_ms):
        out += seg.on_audio(c, start)
    return out


def test_continuous_stream_is_cut_at_pauses_in_audio_time() -> None:
    seg = segmenter()
    audio = tone(500) + silence(600) + tone(700, freq=660) + silence(600) + tone(300)
    out = feed(seg, audio)
    assert [u.index for u in out] == [0, 1]
    assert all(u.reason is EndReason.PAUSE for u in out)
    assert out[0].duration_ms == 500 + 400  # cut once pause + hangover of silence followed the speech
    out += seg.finalize(1.0, EndReason.END_OF_STREAM)
    assert [u.reason for u in out] == [EndReason.PAUSE, EndReason.PAUSE, EndReason.END_OF_STREAM]


def test_speech_within_the_hangover_keeps_the_utterance_going() -> None:
    seg = segmenter(pause_ms=300, hangover_ms=200)
    out = feed(seg, tone(400) + silence(400) + tone(400) + silence(100))
    assert out == [], "400 ms of silence is a pause but not pause + hangover"


def test_silence_only_and_empty_audio_make_no_utterance() -> None:
    seg = segmenter()
    assert feed(seg, silence(2000)) == []
    assert seg.finalize(1.0) == []
    assert seg.on_audio(b"", 1.0, is_final=True) == []
    assert seg.next_index == 0


def test_is_final_ends_the_utterance_with_that_chunk() -> None:
    seg = segmenter()
    feed(seg, tone(200))
    (u,) = seg.on_audio(tone(20), 0.5, is_final=True)
    assert u.reason is EndReason.FINAL
    assert u.duration_ms == 220


def test_max_length_cuts_long_speech() -> None:
    seg = segmenter(max_ms=1000)
    out = feed(seg, tone(2500))
    assert [(u.reason, u.duration_ms) for u in out] == [
        (EndReason.MAX_LENGTH, 1000),
        (EndReason.MAX_LENGTH, 1000),
    ]


def test_voiced_only_client_pauses_on_arrival_gap_with_a_fake_clock() -> None:
    seg = segmenter(pause_ms=300, hangover_ms=100)
    assert seg.on_audio(tone(100), now=10.0) == []
    first = seg.deadline
    assert first is not None and first.at == pytest.approx(10.3)
    assert seg.on_timer(first.generation, now=10.3) == []  # pause seen: hangover starts
    hangover = seg.deadline
    assert hangover is not None and hangover.at == pytest.approx(10.4)
    (u,) = seg.on_timer(hangover.generation, now=10.4)
    assert u.reason is EndReason.PAUSE
    assert seg.deadline is None


def test_speech_during_gap_hangover_cancels_the_finalize_and_stale_timers_are_ignored() -> None:
    seg = segmenter(pause_ms=300, hangover_ms=100)
    seg.on_audio(tone(100), now=10.0)
    first = seg.deadline
    assert first is not None
    seg.on_timer(first.generation, now=10.3)
    hangover = seg.deadline
    assert hangover is not None
    assert seg.on_audio(tone(100), now=10.35) == []  # speech in the grace period
    assert seg.on_timer(hangover.generation, now=10.4) == [], "a stale timer must not finalize"
    assert seg.on_timer(first.generation, now=10.4) == []


def test_playback_suppresses_pauses_until_it_stops() -> None:
    seg = segmenter(pause_ms=300, hangover_ms=100)
    seg.on_playback(True, now=0.0)
    assert feed(seg, tone(300) + silence(1000)) == []
    assert seg.deadline is None
    (u,) = seg.on_playback(False, now=1.0)
    assert u.reason is EndReason.PAUSE


def test_a_chunk_racing_a_timer_never_makes_two_utterances() -> None:
    seg = segmenter(pause_ms=300, hangover_ms=0)
    seg.on_audio(tone(100), now=0.0)
    timer = seg.deadline
    assert timer is not None
    (u,) = seg.on_audio(tone(20), now=0.35, is_final=True)  # the final chunk wins the race
    assert seg.on_timer(timer.generation, now=0.35) == []
    assert u.index == 0 and seg.next_index == 1


segments = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=1, max_value=60)),  # (speech?, length in 20 ms frames)
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(segments, st.integers(1, 5), st.integers(0, 10), st.integers(10, 100))
def test_utterances_keep_all_audio_in_order_with_dense_indexes(
    plan: list[tuple[bool, int]], chunk_frames: int, hangover_frames: int, pause_frames: int
) -> None:
    seg = Segmenter(SegmenterConfig(RATE, pause_frames * 20, hangover_frames * 20, 60_000, -40))
    audio = b"".join(tone(n * 20) if speech else silence(n * 20) for speech, n in plan)
    out: list[Utterance] = []
    t = 0.0
    for c in chunks(audio, chunk_frames * 20):
        t += 0.001
        out += seg.on_audio(c, t)
        if seg.deadline is not None and seg.deadline.at <= t:
            out += seg.on_timer(seg.deadline.generation, t)
    out += seg.finalize(t + 1, EndReason.END_OF_STREAM)
    assert [u.index for u in out] == list(range(len(out)))
    emitted = b"".join(u.audio for u in out)
    assert emitted == audio[: len(emitted)], "utterances are consecutive slices of the stream"
    has_speech = any(speech for speech, _ in plan)
    assert bool(out) == has_speech


def test_the_recorded_position_moves_past_each_utterance_and_dropped_silence_only() -> None:
    """What a resuming client need not send again: everything before `recorded_offset`."""
    seg = segmenter(pause_ms=300, hangover_ms=100, max_ms=1000)
    out = feed(seg, tone(500) + silence(600))
    assert seg.recorded_offset == out[0].end_offset == (500 + 400) * RATE // 1000
    feed(seg, tone(200))  # an utterance under way: its audio is not recorded yet
    assert seg.recorded_offset == out[0].end_offset
    seg.finalize(1.0)
    speech_end = seg.recorded_offset
    assert speech_end == out[0].end_offset + (200 + 200) * RATE // 1000  # the silence left after the cut, too
    feed(seg, silence(1000))  # silence only, cut at max length and dropped: nothing to resend either
    assert seg.recorded_offset == speech_end + RATE


def test_a_resumed_segmenter_continues_the_session_s_indexes_and_positions() -> None:
    seg = Segmenter(SegmenterConfig(RATE, 300, 100, 5000, -40), next_index=7, offset=123_456)
    out = feed(seg, tone(500) + silence(600))
    assert [u.index for u in out] == [7]
    assert out[0].end_offset == 123_456 + (500 + 400) * RATE // 1000
