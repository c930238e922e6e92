"""A peer is dead when unrenewed for a lease of the survivor's own Redis contact, not of the wall clock."""

from __future__ import annotations

from lingua_grpc.fleet._recovery import PeerWatch


def test_a_peer_unrenewed_for_a_lease_of_contact_is_due() -> None:
    watch = PeerWatch(lease_s=3.0, max_step_s=2.0)
    assert watch.saw({"b": 100}, at=0.0) == []
    assert watch.saw({"b": 100}, at=1.0) == []
    assert watch.saw({"b": 100}, at=2.0) == []
    assert watch.saw({"b": 100}, at=3.0) == ["b"]


def test_a_renewal_starts_the_count_again() -> None:
    watch = PeerWatch(lease_s=3.0, max_step_s=2.0)
    for at in (0.0, 1.0, 2.0):
        watch.saw({"b": 100}, at=at)
    assert watch.saw({"b": 250}, at=3.0) == []
    assert watch.saw({"b": 250}, at=5.0) == []
    assert watch.saw({"b": 250}, at=6.0) == ["b"]


def test_a_redis_outage_counts_for_no_one() -> None:
    # Issue 27: after a Redis restart longer than the lease every lease had lapsed, each instance claimed
    # the others and all of them stopped. Time while Redis did not answer is no peer's silence.
    watch = PeerWatch(lease_s=3.0, max_step_s=2.0)
    watch.saw({"b": 100, "c": 7}, at=0.0)
    watch.lost_contact()  # Redis away for 20 s
    assert watch.saw({"b": 100, "c": 7}, at=20.0) == []
    assert watch.saw({"b": 100, "c": 8}, at=21.0) == []  # c renewed at once; b's first beat is slow
    assert watch.saw({"b": 101, "c": 8}, at=22.0) == []


def test_a_survivor_that_was_paused_counts_at_most_a_step_per_read() -> None:
    watch = PeerWatch(lease_s=3.0, max_step_s=2.0)
    watch.saw({"b": 100}, at=0.0)
    assert watch.saw({"b": 100}, at=30.0) == []  # SIGSTOPped itself: 2 s counted, not 30
    assert watch.saw({"b": 100}, at=31.0) == ["b"]


def test_peers_no_longer_listed_are_forgotten() -> None:
    watch = PeerWatch(lease_s=1.0, max_step_s=2.0)
    watch.saw({"b": 100}, at=0.0)
    watch.saw({}, at=1.0)
    assert watch.saw({"b": 100}, at=2.0) == []  # seen again: counted afresh
