"""Segmentation: cuts a session's audio into utterances. Pure: time comes in as arguments.

An utterance ends
- on `is_final` or an explicit finalize;
- on a pause, detected two ways:
  * in the audio (clients that stream continuously): the audio after the last speech frame reaches
    `pause_ms + hangover_ms` of silence, measured in audio time, so it works at any sending speed;
  * in arrival times (clients that send only voiced audio): no chunk for `pause_ms`, then `hangover_ms` of
    grace in which a chunk with speech cancels the finalize (wall-clock timers, see `deadline`);
- at `max_utterance_ms` of audio;
- at end of stream.
While the client reports TTS playback, pauses do not end utterances. An utterance without a single speech
frame (empty, or all silence) is dropped without taking an index.

Positions in the session's audio are counted in samples from its first sample. Every sample before
`recorded_offset` belongs to an utterance already emitted or to silence that was dropped: a session that
resumes elsewhere needs none of it again.

Silence is decided per 20 ms frame by RMS level against `silence_threshold_dbfs`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

FRAME_MS = 20


class EndReason(enum.Enum):
    FINAL = "final"  # is_final chunk or explicit finalize
    PAUSE = "pause"
    MAX_LENGTH = "max_length"
    END_OF_STREAM = "end_of_stream"


@dataclass(frozen=True, slots=True)
class Utterance:
    index: int
    audio: bytes
    duration_ms: int
    reason: EndReason
    ended_at: float  # the `now` at which it ended (monotonic seconds)
    end_offset: int = 0  # position in the session's audio just after its last sample (samples)


@dataclass(frozen=True, slots=True)
class Deadline:
    """Call `on_timer(generation, now)` at `at` (monotonic seconds). A newer deadline replaces older ones."""

    generation: int
    at: float


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    sample_rate_hz: int
    pause_ms: int
    hangover_ms: int
    max_utterance_ms: int
    silence_threshold_dbfs: int


@dataclass
class _Buffer:
    chunks: list[bytes] = field(default_factory=list)
    samples: int = 0
    has_speech: bool = False
    trailing_silence_samples: int = 0
    pending: bytes = b""  # samples not yet judged (less than a frame)


class Segmenter:
    def __init__(self, config: SegmenterConfig, next_index: int = 0, offset: int = 0) -> None:
        """`next_index`, `offset`: where a resumed session stands (its next utterance's index, and the position
        of the first sample this segmenter is given)."""
        self.config = config
        self._frame = config.sample_rate_hz * FRAME_MS // 1000
        # A frame is speech when its RMS reaches the threshold (dBFS = 20 log10(rms / 32768)); compared as a
        # sum of squares over the frame, to keep the per-chunk path cheap (no square root, no log).
        rms_threshold = 32768 * 10 ** (config.silence_threshold_dbfs / 20)
        self._energy_threshold = int(rms_threshold * rms_threshold * self._frame)
        self._pause_samples = config.sample_rate_hz * config.pause_ms // 1000
        self._hangover_samples = config.sample_rate_hz * config.hangover_ms // 1000
        self._max_samples = config.sample_rate_hz * config.max_utterance_ms // 1000
        self._buf = _Buffer()
        self._next_index = next_index
        self._offset = offset  # position of the current buffer's first sample
        self._playing = False
        self._generation = 0
        self._deadline: Deadline | None = None
        self._in_hangover = False  # the arrival-gap pause fired; a finalize is pending

    @property
    def next_index(self) -> int:
        return self._next_index

    @property
    def recorded_offset(self) -> int:
        """Position of the first sample that may still go into an utterance: everything before it is done."""
        return self._offset

    @property
    def deadline(self) -> Deadline | None:
        return self._deadline

    def on_audio(self, pcm: bytes, now: float, is_final: bool = False) -> list[Utterance]:
        out: list[Utterance] = []
        speech = self._append(pcm)
        if speech and self._in_hangover:
            self._in_hangover = False  # new speech in the grace period: the utterance goes on
        if self._buf.samples >= self._max_samples:
            self._emit(EndReason.MAX_LENGTH, now, out)
        elif is_final:
            self._emit(EndReason.FINAL, now, out)
        elif (
            not self._playing
            and self._buf.has_speech
            and self._buf.trailing_silence_samples >= self._pause_samples + self._hangover_samples
        ):
            self._emit(EndReason.PAUSE, now, out)
        self._arm_gap_timer(now)
        return out

    def on_timer(self, generation: int, now: float) -> list[Utterance]:
        if self._deadline is None or generation != self._deadline.generation:
            return []  # stale: a chunk or a newer timer came after it was set
        self._deadline = None
        if self._playing or not self._buf.has_speech:
            return []
        if not self._in_hangover:
            self._in_hangover = True
            self._set_deadline(now + self.config.hangover_ms / 1000)
            return []
        out: list[Utterance] = []
        self._emit(EndReason.PAUSE, now, out)
        return out

    def on_playback(self, playing: bool, now: float) -> list[Utterance]:
        self._playing = playing
        if playing:
            self._in_hangover = False
            self._deadline = None
            return []
        out: list[Utterance] = []
        if (
            self._buf.has_speech
            and self._buf.trailing_silence_samples >= self._pause_samples + self._hangover_samples
        ):
            self._emit(EndReason.PAUSE, now, out)
        else:
            self._arm_gap_timer(now)
        return out

    def finalize(self, now: float, reason: EndReason = EndReason.FINAL) -> list[Utterance]:
        out: list[Utterance] = []
        self._emit(reason, now, out)
        return out

    def _append(self, pcm: bytes) -> bool:
        """Adds audio; returns whether it held speech."""
        buf = self._buf
        if pcm:
            buf.chunks.append(pcm)
            buf.samples += len(pcm) // 2
        data = buf.pending + pcm if buf.pending else pcm  # most chunks are whole frames: no copy
        whole = len(data) // (2 * self._frame) * (2 * self._frame)
        buf.pending = data[whole:]
        if not whole:
            return False
        # Energy per frame as float64 (exact: at most 2^30 per sample times a few thousand samples).
        samples = np.frombuffer(data, dtype="<i2", count=whole // 2).astype(np.float64)
        loud = ((samples * samples).reshape(-1, self._frame).sum(axis=1) >= self._energy_threshold).tolist()
        for last_loud in range(len(loud) - 1, -1, -1):
            if loud[last_loud]:
                buf.trailing_silence_samples = (len(loud) - 1 - last_loud) * self._frame
                buf.has_speech = True
                return True
        buf.trailing_silence_samples += whole // 2
        return False

    def _emit(self, reason: EndReason, now: float, out: list[Utterance]) -> None:
        buf, self._buf = self._buf, _Buffer()
        self._in_hangover = False
        self._deadline = None
        self._generation += 1
        self._offset += buf.samples
        if not buf.has_speech:
            return  # empty or all silence: no utterance, no index
        audio = b"".join(buf.chunks)
        duration_ms = buf.samples * 1000 // self.config.sample_rate_hz
        out.append(Utterance(self._next_index, audio, duration_ms, reason, now, self._offset))
        self._next_index += 1

    def _arm_gap_timer(self, now: float) -> None:
        if self._playing or not self._buf.has_speech:
            self._deadline = None
            return
        self._in_hangover = False
        self._set_deadline(now + self.config.pause_ms / 1000)

    def _set_deadline(self, at: float) -> None:
        self._generation += 1
        self._deadline = Deadline(self._generation, at)
