"""Resume tokens: bound to one session, signed with the fleet's key, expiring (pure, on a manual clock)."""

from __future__ import annotations

import pytest

from lingua_grpc.clock import ManualClock
from lingua_grpc.errors import FailedPrecondition, InvalidArgument
from lingua_grpc.sessions import ResumeTokens

KEY = b"k" * 32


def test_a_token_names_its_session_until_it_expires() -> None:
    clock = ManualClock()
    tokens = ResumeTokens(KEY, ttl_ms=60_000, clock=clock)
    token = tokens.issue("abc123")
    assert tokens.session_of(token) == "abc123"
    clock.advance(59.999)
    assert tokens.session_of(token) == "abc123"
    clock.advance(0.001)
    with pytest.raises(FailedPrecondition, match="expired 0 ms ago"):
        tokens.session_of(token)


@pytest.mark.parametrize(
    "alter",
    [
        lambda t: t.replace("abc123", "abc124"),  # another session under the same signature
        lambda t: t.rsplit(".", 2)[0] + ".9999999999999." + t.rsplit(".", 1)[1],  # a later expiry
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature itself
        lambda t: "v2" + t[2:],
        lambda t: "",
        lambda t: "v1..1.x",
    ],
)
def test_an_altered_token_is_refused(alter: object) -> None:
    tokens = ResumeTokens(KEY, 60_000, ManualClock())
    with pytest.raises(InvalidArgument):
        tokens.session_of(alter(tokens.issue("abc123")))  # type: ignore[operator]


def test_another_fleets_token_is_refused_and_short_keys_are_not_taken() -> None:
    ours, theirs = ResumeTokens(KEY, 60_000, ManualClock()), ResumeTokens(b"t" * 32, 60_000, ManualClock())
    with pytest.raises(InvalidArgument, match="another --resume-key-file"):
        ours.session_of(theirs.issue("abc123"))
    with pytest.raises(ValueError, match="16 bytes"):
        ResumeTokens(b"short", 60_000, ManualClock())


def test_a_token_longer_than_any_real_one_is_refused_before_hashing() -> None:
    tokens = ResumeTokens(KEY, 60_000, ManualClock())
    with pytest.raises(InvalidArgument, match="over 256 characters"):
        tokens.session_of("v1." + "a" * 10_000 + ".1.x")
