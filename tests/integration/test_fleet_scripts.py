"""The fleet's Lua scripts against a real redis-server: hand-offs land only while the reader lives, one
survivor claims a dead instance, a claimed instance cannot renew; a session's set of non-final jobs."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from lingua_grpc.jobs import JobSpec, JobState, JobStore
from lingua_grpc.registry import LanguagePair
from lingua_grpc.store import Claim, InstanceKeys, JobKeys, RegistryKeys, ScriptBook

pytestmark = pytest.mark.integration


@pytest.fixture
def scripts(redis: Redis) -> ScriptBook:
    return ScriptBook(redis)


def test_every_key_of_an_instance_shares_one_hash_slot(key_prefix: str) -> None:
    k = InstanceKeys(key_prefix, "sched-a")
    assert len({key_slot(x.encode()) for x in (k.inbox, k.lease, k.claim, k.sessions)}) == 1
    other = InstanceKeys(key_prefix, "sched-b")
    assert key_slot(other.inbox.encode()) != key_slot(k.inbox.encode())  # instances spread over shards


async def test_a_hand_off_lands_only_while_the_reader_holds_its_lease_and_within_the_bound(
    redis: Redis, scripts: ScriptBook, key_prefix: str
) -> None:
    k = InstanceKeys(key_prefix, "sched-a")
    gone = await scripts.run(scripts.handoff(k, max_entries=2, fields={"kind": "cancel"}))
    assert not gone.delivered and not gone.full
    assert await redis.xlen(k.inbox) == 0
    assert await scripts.run(scripts.renew_inbox(k, lease_ms=5000, keep_ms=60000, first=True))
    for _ in range(2):
        assert (await scripts.run(scripts.handoff(k, max_entries=2, fields={"kind": "cancel"}))).delivered
    full = await scripts.run(scripts.handoff(k, max_entries=2, fields={"kind": "cancel"}))
    assert full.full and not full.delivered
    assert await redis.xlen(k.inbox) == 2
    assert await scripts.run(scripts.renew_inbox(k, lease_ms=5000, keep_ms=60000))
    assert 0 < await redis.pttl(k.inbox) <= 60000  # renewals keep it from outliving its instance for good


async def test_exactly_one_survivor_claims_a_dead_instance_and_the_dead_one_cannot_renew(
    redis: Redis, scripts: ScriptBook, key_prefix: str
) -> None:
    k = InstanceKeys(key_prefix, "sched-a")
    assert await scripts.run(scripts.renew_inbox(k, lease_ms=5000, keep_ms=60000, first=True))
    alive = await scripts.run(scripts.claim_instance(k, claimer="sched-b", keep_ms=60000))
    assert alive is Claim.ALIVE
    await redis.delete(k.lease)  # the lease lapses
    claims = [
        await scripts.run(scripts.claim_instance(k, claimer=s, keep_ms=60000)) for s in ("sched-b", "sched-c")
    ]
    assert claims == [Claim.CLAIMED, Claim.TAKEN]
    assert await redis.get(k.claim) == b"sched-b"
    # The dead instance wakes up: its renewal is refused, and nothing more lands in its inbox.
    assert not await scripts.run(scripts.renew_inbox(k, lease_ms=5000, keep_ms=60000))
    assert not (await scripts.run(scripts.handoff(k, max_entries=10, fields={"kind": "cancel"}))).delivered
    # A new process started under the same id is a new incarnation: its first renewal clears the claim.
    assert await scripts.run(scripts.renew_inbox(k, lease_ms=5000, keep_ms=60000, first=True))
    assert await redis.exists(k.claim) == 0


async def test_a_sessions_non_final_jobs_are_listed_until_they_end(
    redis: Redis, scripts: ScriptBook, key_prefix: str
) -> None:
    store = JobStore(
        redis,
        JobKeys(key_prefix),
        RegistryKeys(key_prefix),
        scripts,
        job_ttl_ms=60_000,
        audio_ttl_ms=60_000,
        instance=InstanceKeys(key_prefix, "sched-a"),
    )
    await store.session_opened("s1")
    for index in (0, 1, 2):
        await store.start(JobSpec("s1", index, LanguagePair("en", "es"), 16000, False, b"\x00\x00"), 0)
    assert await store.live_jobs("s1") == [0, 1, 2]
    assert await redis.smembers(InstanceKeys(key_prefix, "sched-a").sessions) == {b"s1"}
    assert await store.transition("s1:1", 0, (JobState.CREATED,), JobState.SKIPPED, reason="test")
    assert await store.live_jobs("s1") == [0, 2]
    record = await store.get("s1:0")
    assert record is not None and record.fields["owner"] == "sched-a"
    await store.session_closed("s1")
    assert await redis.smembers(InstanceKeys(key_prefix, "sched-a").sessions) == set()
