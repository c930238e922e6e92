"""The soak's fault schedule, without processes: the cluster mode's is the seed's and leaves out the kinds
that need the TCP proxy in front of Redis; the single-Redis mode draws exactly what it drew before the
cluster mode existed."""

from __future__ import annotations

import itertools

import pytest

from tests.soak._faults import CLUSTER_LEFT_OUT, KINDS, fingerprint, kinds_for, schedule

pytestmark = pytest.mark.unit


def test_the_cluster_schedule_is_the_seed_s_and_leaves_out_the_redis_link_kinds() -> None:
    first = schedule(19, 150.0, 3, 4, 6, 2.0, 4.0, cluster_masters=3)
    assert first == schedule(19, 150.0, 3, 4, 6, 2.0, 4.0, cluster_masters=3)
    assert first != schedule(20, 150.0, 3, 4, 6, 2.0, 4.0, cluster_masters=3)
    assert all(a.at_s < b.at_s for a, b in itertools.pairwise(first))
    kinds = {f.kind for f in first}
    assert kinds == set(kinds_for(True)) == set(KINDS) - set(CLUSTER_LEFT_OUT)
    assert not any(k.startswith("redis_link") for k in kinds) and "cut_off_scheduler_kill" not in kinds
    restarts = [f for f in first if f.kind.startswith("redis_restart")]
    assert restarts and {f.target for f in restarts} <= {"m0", "m1", "m2"}


def test_the_single_redis_schedule_is_unchanged() -> None:
    """Pinned: the fingerprints of seed 19 (the test's short soak) and 1995 (the README's 10-minute run)."""
    assert kinds_for(False) == list(KINDS)
    assert fingerprint(schedule(19, 75.0, 3, 4, 6, 2.0, 4.0)) == "abf7b5e7f2d0"
    assert fingerprint(schedule(1995, 600.0, 3, 4, 8, 3.0, 9.0)) == "e3b8e5ae1247"
    assert {
        f.target for f in schedule(19, 75.0, 3, 4, 6, 2.0, 4.0) if f.kind.startswith("redis_restart")
    } == {""}
