"""Fault drills on real processes. Each asserts what the client received and what Redis holds afterwards."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest

from lingua_grpc.pb import registry_pb2, registry_pb2_grpc
from tests.conftest import wait_until
from tests.e2e._procs import start_scheduler
from tests.fault._drill import DRILL_SETTINGS, Drill, answers, results, utterances

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(120)]

ALL_RESULTS = [(0, "result"), (1, "result"), (2, "result")]


async def test_node_killed_mid_job(drill: Drill) -> None:
    await drill.start()
    doomed = await drill.node("doomed", "--synthetic-latency-ms", "400")
    session = asyncio.create_task(drill.session(utterances(3)))
    await doomed.log_contains("job started")
    doomed.send(signal.SIGKILL)
    await drill.node("survivor")
    messages = await session
    assert answers(messages) == ALL_RESULTS
    assert {r.node_id for r in results(messages)} == {"survivor"}
    assert max(r.attempt for r in results(messages)) == 2
    assert set((await drill.assert_redis_clean()).values()) == {"COMPLETED"}


async def test_stopped_node_past_its_lease_is_replaced_and_its_late_work_refused(drill: Drill) -> None:
    scheduler = await drill.start()
    zombie = await drill.node("zombie", "--synthetic-latency-ms", "300")
    session = asyncio.create_task(drill.session(utterances(3)))
    await zombie.log_contains("job started")
    zombie.send(signal.SIGSTOP)
    await scheduler.log_contains("node lease expired")
    await drill.node("healthy")
    zombie.send(signal.SIGCONT)  # wakes up with finished work for an attempt that is no longer current
    messages = await session
    assert answers(messages) == ALL_RESULTS
    # The utterance it held when stopped comes from the healthy node's re-run. Back, the zombie is a node
    # like any other and may serve later utterances.
    first = results(messages)[0]
    assert (first.utterance_index, first.node_id, first.attempt) == (0, "healthy", 2)
    await drill.assert_redis_clean()
    assert await scheduler.metric("lingua_node_departures_total", reason="lease_expired") >= 1


async def test_node_rejecting_everything(drill: Drill) -> None:
    scheduler = await drill.start()
    await drill.node("grumpy", "--inject-fault", "reject")
    await drill.node("willing")
    messages = await drill.session(utterances(3))
    assert answers(messages) == ALL_RESULTS
    assert {r.node_id for r in results(messages)} == {"willing"}
    await drill.assert_redis_clean()
    assert await scheduler.metric("lingua_utterances_skipped_total", reason="no_capacity") == 0


async def test_only_node_rejects_everything_gives_explicit_skips(drill: Drill) -> None:
    await drill.start("--session-queue-timeout-ms", "500")
    await drill.node("grumpy", "--inject-fault", "reject")
    messages = await drill.session(utterances(2))
    assert answers(messages) == [(0, "SKIP_REASON_NO_CAPACITY"), (1, "SKIP_REASON_NO_CAPACITY")]
    assert set((await drill.assert_redis_clean()).values()) == {"SKIPPED"}


async def test_node_slower_than_the_deadline(drill: Drill) -> None:
    scheduler = await drill.start()
    stuck = await drill.node("stuck", "--inject-fault", "hang")
    # The session starts while the stuck node is the only one, so a job surely meets it (with two idle
    # nodes the pick is random, and a session sticks to the node that answered it).
    session = asyncio.create_task(drill.session(utterances(3)))
    await stuck.log_contains("injected fault")
    await drill.node("quick")
    messages = await session
    assert answers(messages) == ALL_RESULTS
    assert {r.node_id for r in results(messages)} == {"quick"}
    await drill.assert_redis_clean()
    assert await scheduler.metric("lingua_job_timeouts_total") >= 1
    assert await scheduler.metric("lingua_job_redispatches_total") >= 1


async def test_poison_job_ends_failed_instead_of_looping(drill: Drill) -> None:
    scheduler = await drill.start("--job-max-attempts", "3")
    for i in range(4):  # one slot each: a node dies holding only the poison job
        await drill.node(f"n{i}", "--inject-fault", "exit", "--fault-utterances", "1", max_concurrency=1)
    messages = await drill.session(utterances(3))
    assert answers(messages) == [(0, "result"), (1, "SKIP_REASON_FAILED"), (2, "result")]
    skipped = next(m.skipped for m in messages if m.HasField("skipped"))
    assert "3 attempts failed" in skipped.message
    states = await drill.assert_redis_clean()
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED", "FAILED"]
    assert await scheduler.metric("lingua_utterances_skipped_total", reason="failed") == 1


async def test_node_drops_its_stream_after_the_work_before_the_result(drill: Drill) -> None:
    await drill.start()
    await drill.node("flaky", "--inject-fault", "drop-stream")
    await drill.node("steady")
    messages = await drill.session(utterances(3))
    assert answers(messages) == ALL_RESULTS
    assert {r.node_id for r in results(messages)} == {"steady"}
    await drill.assert_redis_clean()


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-data", "without-data"])
async def test_redis_restart_mid_session(drill: Drill, keep_data: bool) -> None:
    scheduler = await drill.start()
    await drill.node("gpu-1")
    session = asyncio.create_task(drill.session(utterances(4), pace_s=0.05))
    await scheduler.log_contains("node registered")
    await asyncio.sleep(0.5)  # let the session get going before Redis goes away
    drill.restart_redis(keep_data)
    messages = await session
    got = answers(messages)
    assert [i for i, _ in got] == [0, 1, 2, 3], f"every utterance answered once, in order: {got}"
    assert all(kind == "result" or kind.startswith("SKIP_REASON_") for _, kind in got)
    # Service resumes: a new session after the restart is served normally.
    assert answers(await drill.session(utterances(2))) == [(0, "result"), (1, "result")]
    await drill.assert_redis_clean()


async def test_script_flush_under_load(drill: Drill) -> None:
    await drill.start()
    await drill.node("gpu-1")
    session = asyncio.create_task(drill.session(utterances(5), pace_s=0.02))
    client = drill.redis_client()
    for _ in range(5):
        client.script_flush()
        await asyncio.sleep(0.2)  # flush repeatedly while the session runs
    client.close()
    assert answers(await session) == [(i, "result") for i in range(5)]
    await drill.assert_redis_clean()


async def test_drain_under_load(drill: Drill) -> None:
    scheduler = await drill.start()
    leaving = await drill.node("leaving", "--synthetic-latency-ms", "200")
    session = asyncio.create_task(drill.session(utterances(4), pace_s=0.03))
    await leaving.log_contains("job started")
    await drill.node("staying")
    async with grpc.aio.insecure_channel(scheduler.grpc) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id="leaving", reason="drill"))
    assert await leaving.wait(30) == 0, "the drained node finishes its jobs and exits cleanly"
    messages = await session
    assert answers(messages) == [(i, "result") for i in range(4)]
    await drill.assert_redis_clean()


async def test_scheduler_sigterm_under_load(drill: Drill) -> None:
    scheduler = await drill.start("--shutdown-grace-ms", "1500")
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "300")
    # 12 utterances at microphone pace: the session outlasts the grace period.
    session = asyncio.create_task(drill.session(utterances(12), pace_s=0.1))
    await node.log_contains("job started")
    scheduler.send(signal.SIGTERM)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await session
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (err.value.details() or "")
    assert await scheduler.wait(30) == 0
    await scheduler.log_contains("scheduler stopped")
    states = await drill.assert_redis_clean()
    assert "COMPLETED" in states.values(), "jobs already running finished within the grace period"


async def test_client_disconnecting_mid_utterance_leaves_its_session_to_resume(drill: Drill) -> None:
    """A stream that breaks without end_of_stream (the client's network, or the client itself) leaves the
    session resumable: the job already running finishes on its node and its result is recorded for the
    resume; nothing stays held, nothing is cancelled. (The unfinished utterance is either cut where the
    stream broke, when gRPC shows the break as an end of input first, or left for the client to send again
    when it resumes.)"""
    await drill.start()
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "600")  # 1.8 s a job: within the deadline
    from lingua_grpc.client import LinguaClient
    from tests.audio import silence, tone

    assert drill.scheduler is not None
    async with LinguaClient(drill.scheduler.grpc) as client:
        session = await client.start_session("en", "es")
        await session.send_audio(tone(500) + silence(1000))
        await node.log_contains("job started")
        await session.send_audio(tone(300))  # mid-utterance
        session.cancel()
    states = await drill.assert_redis_clean()  # waits for the slots: freed when results are recorded
    assert states[f"{session.session_id}:0"] == "COMPLETED", "the running job's result is kept"
    assert set(states.values()) == {"COMPLETED"}
    assert "job cancelled" not in node.log()
    record = drill.redis_client().hgetall(f"lingua:v1:{{s:{session.session_id}}}:session")
    assert record["ended"] == "0", "resumable"


async def test_redis_down_means_not_serving_and_new_sessions_refused_until_it_is_back(drill: Drill) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    scheduler = await drill.start()
    await drill.node("gpu-1")
    async with grpc.aio.insecure_channel(scheduler.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status() -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=""))).status  # type: ignore[no-any-return]

        assert await status() == health_pb2.HealthCheckResponse.SERVING
        drill.stop_redis()
        await scheduler.log_contains("redis unreachable")
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await drill.session(utterances(1))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot reach Redis" in (err.value.details() or "")
        drill.start_redis_again()
        await scheduler.log_contains("redis reachable again")
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        await drill.node("gpu-2")  # the registry was lost with Redis: nodes register again
    assert answers(await drill.session(utterances(2))) == [(0, "result"), (1, "result")]


async def test_evicting_redis_gets_a_warning_at_start(drill: Drill) -> None:
    scheduler = await drill.start(redis_args=("--maxmemory-policy", "allkeys-lru"))
    await scheduler.log_contains("maxmemory-policy=allkeys-lru")


async def test_scheduler_killed_with_jobs_running_then_restarted_gets_the_nodes_whole_capacity_back(
    drill: Drill,
) -> None:
    """kill -9 leaves the dead instance's slots held in Redis; the node registers again within its lease,
    lists what it runs, and the slot set becomes exactly that: the next utterances get the whole node. (The
    killed instance's clients do not resume here: see test_resume.py for that.)"""
    long_lease = ("--node-lease-heartbeats", "50")  # the node re-registers before its lease could lapse
    fleet = ("--instance-heartbeat-ms", "100", "--instance-lease-ms", "600")
    first = await drill.start(*long_lease, *fleet)
    node = await drill.node("gpu-1", "--synthetic-latency-ms", "400", max_concurrency=2)
    doomed = [asyncio.create_task(drill.session(utterances(1))) for _ in range(2)]
    client = drill.redis_client()

    async def both_slots_held() -> bool:
        return int(client.hget("lingua:v1:{registry}:node:gpu-1", "reserved") or 0) == 2

    await wait_until(both_slots_held, what="both of the node's slots held")
    first.send(signal.SIGKILL)
    await asyncio.gather(*doomed, return_exceptions=True)  # their scheduler is gone (UNAVAILABLE)
    assert drill.redis is not None
    restarted = await start_scheduler(
        drill.tmp,
        "--redis-url",
        drill.redis.url,
        *DRILL_SETTINGS,
        *long_lease,
        *fleet,
        "--listen",
        first.grpc,
    )
    drill.procs.append(restarted)
    drill.scheduler = restarted
    await restarted.log_contains("node registered", timeout_s=15)

    async def whole_capacity_free() -> bool:  # no slot left held by the dead instance's jobs
        slots = client.smembers("lingua:v1:{registry}:slots:gpu-1")
        return not slots and int(client.hget("lingua:v1:{registry}:node:gpu-1", "reserved") or 0) == 0

    await wait_until(whole_capacity_free, what="the node's slots all free after it registered again")
    replies = await asyncio.gather(*(drill.session(utterances(1)) for _ in range(2)))
    for messages in replies:
        assert answers(messages) == [(0, "result")]

    # The new instance takes over the dead one once its lease lapsed (it is a survivor). The dead one's
    # sessions stay resumable: a job the node ran is recorded; one it never got waits, CREATED, with no slot.
    async def dead_one_taken_over() -> bool:
        return await restarted.metric("lingua_recovered_total", what="instances") == 1

    await wait_until(dead_one_taken_over, what="the restarted instance took over the dead one")
    states = await drill.assert_redis_clean(jobs_final=False)
    assert set(states.values()) <= {"COMPLETED", "CREATED"}, states
    assert node.popen.poll() is None  # the node kept running throughout
