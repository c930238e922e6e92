"""The fleet on real processes: several lingua-scheduler instances on one redis-server, node agents and clients.
Any instance places work on any node; when one dies, what it held is taken over and nothing stays held."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.conftest import wait_until
from tests.e2e._procs import SchedulerProc
from tests.fault._drill import FLEET, Drill, answers, utterances

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(120)]

# Instances renew their lease every 100 ms and are dead after 600 ms without: recovery within about a second.
NODE = "lingua:v1:{registry}:node:gpu-1"
SLOTS = "lingua:v1:{registry}:slots:gpu-1"


async def two_instances(drill: Drill) -> tuple[SchedulerProc, SchedulerProc]:
    a = await drill.start("--instance-id", "sched-a", *FLEET)
    b = await drill.another_scheduler("--instance-id", "sched-b", *FLEET)
    return a, b


async def held_by(drill: Drill, instance: str, seen_by: SchedulerProc) -> None:
    """gpu-1's stream is on `instance`, and `seen_by` has a snapshot that shows it."""
    client = drill.redis_client()

    async def holds() -> bool:
        version = int(client.get("lingua:v1:{registry}:version") or 0)
        return (
            client.hget(NODE, "instance") == instance
            and await seen_by.metric("lingua_registry_version") >= version
        )

    await wait_until(holds, what=f"gpu-1 held by {instance}, in the snapshot of the other instance")


async def slots_held(drill: Drill, n: int) -> None:
    client = drill.redis_client()

    async def held() -> bool:
        return int(client.hget(NODE, "reserved") or 0) == n

    await wait_until(held, what=f"{n} of gpu-1's slots held")


async def recovered(survivor: SchedulerProc) -> None:
    async def took_over() -> bool:
        return await survivor.metric("lingua_recovered_total", what="instances") == 1

    await wait_until(took_over, timeout_s=15, what="the survivor took over the dead instance")


async def test_a_session_gets_every_result_in_order_from_a_node_held_by_another_instance(
    drill: Drill,
) -> None:
    a, b = await two_instances(drill)
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "100", schedulers=[a])
    await held_by(drill, "sched-a", seen_by=b)
    messages = await drill.session(utterances(3), scheduler=b)
    assert answers(messages) == [(0, "result"), (1, "result"), (2, "result")]
    assert await b.metric("lingua_handoffs_total", kind="assign", outcome="delivered") == 3
    assert await a.metric("lingua_handoffs_total", kind="event", outcome="delivered") >= 3  # accepted, result
    assert await a.metric("lingua_handoff_seconds_count", direction="to_holder") == 3
    assert await b.metric("lingua_job_redispatches_total") == 0
    await drill.assert_redis_clean()
    assert node.popen.poll() is None


async def test_instances_racing_for_a_nodes_last_slot_never_overcommit_it(drill: Drill) -> None:
    """One slot, two instances placing at once: the Lua reservation lets one in at a time; the others wait
    in their pair's queue and run when it frees. The node never sees more than its one slot."""
    a, b = await two_instances(drill)
    await drill.node("gpu-1", "--synthetic-latency-ms", "200", max_concurrency=1, schedulers=[a])
    await held_by(drill, "sched-a", seen_by=b)
    replies = await asyncio.gather(*(drill.session(utterances(1), scheduler=s) for s in (a, b, a, b, a, b)))
    assert [answers(r) for r in replies] == [[(0, "result")]] * 6
    for instance in (a, b):
        assert "job rejected" not in instance.log()  # the node never refused one for being full
        assert await instance.metric("lingua_job_redispatches_total") == 0
    await drill.assert_redis_clean()


async def test_the_instance_holding_a_node_killed_with_jobs_running(drill: Drill) -> None:
    """The node moves to the other instance with the jobs it runs; they finish there, the session on the
    survivor gets every result, and the survivor takes over what the dead instance left: no slot stays held,
    no job stays non-final."""
    a, b = await two_instances(drill)
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "600", schedulers=[a, b])
    await held_by(drill, "sched-a", seen_by=b)
    session = asyncio.create_task(drill.session(utterances(2), scheduler=b))
    await slots_held(drill, 2)
    a.send(signal.SIGKILL)
    await held_by(drill, "sched-b", seen_by=b)
    assert answers(await session) == [(0, "result"), (1, "result")]
    await recovered(b)
    await drill.assert_redis_clean()
    assert "sched-a" not in drill.redis_client().smembers("lingua:v1:{registry}:instances")
    assert node.popen.poll() is None


async def test_the_instance_owning_sessions_killed_while_their_jobs_run_on_another_instances_node(
    drill: Drill,
) -> None:
    """The jobs run on; the survivor holding the node records their results (kept for the session's resume),
    frees every slot, relays nothing more, and the node's whole capacity serves the next sessions."""
    a, b = await two_instances(drill)
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "600", schedulers=[b])
    await held_by(drill, "sched-b", seen_by=a)
    doomed = asyncio.create_task(drill.session(utterances(2), scheduler=a))

    async def both_running() -> bool:  # on the node: a job whose slot is reserved but not yet handed over
        return node.log().count("job started") == 2  # waits CREATED for the resume instead (test_recovery)

    await wait_until(both_running, what="both jobs running on gpu-1")
    await slots_held(drill, 2)
    a.send(signal.SIGKILL)
    with pytest.raises(Exception, match=r"UNAVAILABLE|Socket closed|Connection"):
        await doomed
    await recovered(b)
    states = await drill.assert_redis_clean()  # waits for the slots: freed as results are recorded
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED"], "kept for the session's resume"
    assert await b.metric("lingua_relayed_attempts") == 0  # nothing left relayed for the dead owner
    replies = await asyncio.gather(*(drill.session(utterances(1), scheduler=b) for _ in range(2)))
    assert [answers(r) for r in replies] == [[(0, "result")]] * 2
