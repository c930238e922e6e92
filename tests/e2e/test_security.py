"""Who may call what, on real processes over real TLS: a scheduler with an auth file and a certificate,
node agents and clients with and without the right credentials."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lingua_grpc._grpc import read_message
from lingua_grpc.client import ChannelSecurity, LinguaClient, open_channel
from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.audio import chunks, silence, tone
from tests.conftest import snapshot_where
from tests.e2e._procs import BIN, Proc, SchedulerProc, start_node, start_scheduler
from tests.tls import Pki, make_pki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TOKENS = {
    "client-app": ("client", "tok-client"),
    "fleet-a": ("node", "tok-fleet-a"),
    "fleet-b": ("node", "tok-fleet-b"),
    "oncall": ("operator", "tok-operator"),
}
NODE_IDS = {"fleet-a": '["gpu-a-*"]', "fleet-b": '["gpu-b-*", "gpu-a-9"]'}


def auth_file(path: Path, tokens: dict[str, tuple[str, str]], max_sessions: int = 0) -> Path:
    entries = []
    for name, (role, token) in tokens.items():
        lines = [
            "[[credentials]]",
            f'name = "{name}"',
            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"',
            f'role = "{role}"',
        ]
        if role == "node":
            lines.append(f"node_ids = {NODE_IDS[name]}")
        if role == "client" and max_sessions:
            lines.append(f"max_sessions = {max_sessions}")
        entries.append("\n".join(lines))
    path.write_text("\n\n".join(entries) + "\n")
    return path


@dataclass
class Secured:
    scheduler: SchedulerProc
    pki: Pki
    auth: Path
    tmp: Path

    def security(self, token: str = "", **kw: str) -> ChannelSecurity:
        return ChannelSecurity(token=token, tls_ca=str(self.pki.ca), **kw)

    def node(self, node_id: str, token: str, *args: str) -> Proc:
        token_file = self.tmp / f"{node_id}.token"
        token_file.write_text(token + "\n")
        return start_node(
            self.tmp,
            self.scheduler.grpc,
            node_id,
            "--token-file",
            str(token_file),
            "--tls-ca",
            str(self.pki.ca),
            *args,
            pairs="en-es",
        )


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.kill()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def secured(tmp_path: Path, pki: Pki, procs: list[Proc]) -> Secured:
    auth = auth_file(tmp_path / "auth.toml", TOKENS, max_sessions=2)
    proc = await start_scheduler(
        tmp_path,
        "--auth-file",
        str(auth),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    )
    procs.append(proc)
    return Secured(proc, pki, auth, tmp_path)


@pytest.fixture
async def operator(secured: Secured) -> AsyncIterator[registry_pb2_grpc.RegistryServiceAsyncStub]:
    async with open_channel(secured.scheduler.grpc, secured.security("tok-operator")) as channel:
        yield registry_pb2_grpc.RegistryServiceStub(channel)


def register(node_id: str) -> node_pb2.ConnectRequest:
    return node_pb2.ConnectRequest(
        register=node_pb2.Register(
            node_id=node_id,
            capabilities=common_pb2.NodeCapabilities(
                asr_languages=["en"],
                translation_pairs=[common_pb2.LanguagePair(source_language="en", target_language="es")],
                tts_languages=["es"],
                max_concurrency=1024,
            ),
        )
    )


async def try_register(secured: Secured, node_id: str, token: str) -> grpc.StatusCode:
    """Registers as a hand-written node would (writes `register`, then reads); the status the scheduler
    ends the stream with."""
    return await _register_once(secured, node_id, token)


async def _register_once(secured: Secured, node_id: str, token: str) -> grpc.StatusCode:
    async with open_channel(secured.scheduler.grpc, secured.security(token)) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
        try:
            await call.write(register(node_id))
            first = await asyncio.wait_for(read_message(call), 10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        except asyncio.InvalidStateError:  # refused while the write was in flight: the call has the status
            return await call.code()
        call.cancel()
        assert first is not None and first.HasField("registered")
        return grpc.StatusCode.OK


def has(node_id: str) -> object:
    return lambda s: any(n.node_id == node_id for n in s.nodes)


async def test_a_rogue_node_without_credentials_gets_no_job_and_no_place(
    secured: Secured, operator: registry_pb2_grpc.RegistryServiceAsyncStub
) -> None:
    assert await try_register(secured, "gpu-a-1", "") == grpc.StatusCode.UNAUTHENTICATED
    assert await try_register(secured, "gpu-a-1", "guessed-token") == grpc.StatusCode.UNAUTHENTICATED
    assert await try_register(secured, "gpu-a-1", "tok-client") == grpc.StatusCode.PERMISSION_DENIED
    snapshot = (await operator.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot
    assert list(snapshot.nodes) == []
    assert await secured.scheduler.metric("lingua_auth_refusals_total", role="node", reason="missing") >= 1
    log = secured.scheduler.log()
    assert "tok-client" not in log and "guessed-token" not in log, "tokens never reach the logs"
    assert "client-app" in log, "refusals name the credential"


async def test_every_refused_caller_learns_why_even_when_it_writes_first(secured: Secured) -> None:
    """A refusal that overtook the caller's first write reached grpcio's asyncio clients as INTERNAL
    "Internal error from Core" (grpc/grpc#36066: about one in ten here); the scheduler reads the first
    message before refusing, so the caller gets the refusal itself, every time."""
    seen: set[grpc.StatusCode] = set()
    for _ in range(40):
        seen.add(await try_register(secured, "gpu-a-1", "guessed-token"))
        seen.add(await try_register(secured, "gpu-a-1", "tok-client"))
    assert seen == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    refused: set[grpc.StatusCode] = set()
    for _ in range(40):
        async with LinguaClient(secured.scheduler.grpc, token="tok-fleet-a", tls_ca=str(secured.pki.ca)) as c:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.start_session("en", "es")
            refused.add(err.value.code())
    assert refused == {grpc.StatusCode.PERMISSION_DENIED}


async def test_a_node_token_registers_only_its_own_node_ids(secured: Secured) -> None:
    assert await try_register(secured, "gpu-b-1", "tok-fleet-a") == grpc.StatusCode.PERMISSION_DENIED
    assert await try_register(secured, "gpu-a-7", "tok-fleet-a") == grpc.StatusCode.OK


async def test_a_node_id_held_live_by_another_credential_is_refused(
    secured: Secured, operator: registry_pb2_grpc.RegistryServiceAsyncStub, procs: list[Proc]
) -> None:
    node = secured.node("gpu-a-9", "tok-fleet-a")
    procs.append(node)
    await snapshot_where(operator, has("gpu-a-9"))  # type: ignore[arg-type]
    # fleet-b may register gpu-a-9 by its patterns, but fleet-a's node holds it live.
    assert await try_register(secured, "gpu-a-9", "tok-fleet-b") == grpc.StatusCode.PERMISSION_DENIED
    assert node.popen.poll() is None, "the real node keeps its registration"


async def test_registry_needs_an_operator_and_health_stays_open(secured: Secured) -> None:
    for token, code in (
        ("", grpc.StatusCode.UNAUTHENTICATED),
        ("tok-client", grpc.StatusCode.PERMISSION_DENIED),
        ("tok-fleet-a", grpc.StatusCode.PERMISSION_DENIED),
    ):
        async with open_channel(secured.scheduler.grpc, secured.security(token)) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id="gpu-a-1"))
            assert refused.value.code() == code
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.WatchSnapshots(registry_pb2.WatchSnapshotsRequest()):
                    pass
            assert refused.value.code() == code
    async with open_channel(secured.scheduler.grpc, secured.security()) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_operator_drains_a_real_node_and_a_client_translates_over_tls(
    secured: Secured, operator: registry_pb2_grpc.RegistryServiceAsyncStub, procs: list[Proc]
) -> None:
    node = secured.node("gpu-a-1", "tok-fleet-a")
    procs.append(node)
    await snapshot_where(operator, has("gpu-a-1"))  # type: ignore[arg-type]
    async with LinguaClient(secured.scheduler.grpc, token="tok-client", tls_ca=str(secured.pki.ca)) as client:
        session = await client.start_session("en", "es")
        for chunk in chunks(tone(500) + silence(900), 100):
            await session.send_audio(chunk)
        await session.end()
        results = [m.result for m in [m async for m in session] if m.HasField("result")]
    assert [r.node_id for r in results] == ["gpu-a-1"]
    reply = await operator.DrainNode(registry_pb2.DrainNodeRequest(node_id="gpu-a-1", reason="kernel"))
    assert reply.node.state == common_pb2.NODE_STATE_DRAINING
    assert await node.wait() == 0


async def test_plaintext_against_the_tls_port_is_refused(secured: Secured) -> None:
    async with grpc.aio.insecure_channel(secured.scheduler.grpc) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    wrong_ca = ChannelSecurity(tls_ca=str(secured.pki.other_ca))
    async with open_channel(secured.scheduler.grpc, wrong_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_credential_revoked_on_sighup_loses_its_open_streams(
    secured: Secured, operator: registry_pb2_grpc.RegistryServiceAsyncStub, procs: list[Proc]
) -> None:
    node = secured.node("gpu-b-1", "tok-fleet-b")
    procs.append(node)
    await snapshot_where(operator, has("gpu-b-1"))  # type: ignore[arg-type]
    async with LinguaClient(secured.scheduler.grpc, token="tok-client", tls_ca=str(secured.pki.ca)) as client:
        session = await client.start_session("en", "es")
        kept = {k: v for k, v in TOKENS.items() if k not in ("fleet-b", "client-app")}
        auth_file(secured.auth, kept)
        secured.scheduler.send(signal.SIGHUP)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in session:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (ended.value.details() or "")
    # The node's stream ended the same way; its agent cannot register again and exits with the reason.
    assert await node.wait() == 2
    await node.log_contains("UNAUTHENTICATED")
    assert await secured.scheduler.metric("lingua_auth_revoked_calls_total") == 2


async def test_a_client_certificate_is_required_under_mtls(
    tmp_path: Path, pki: Pki, procs: list[Proc]
) -> None:
    auth = auth_file(tmp_path / "auth.toml", TOKENS)
    proc = await start_scheduler(
        tmp_path,
        "--auth-file",
        str(auth),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )
    procs.append(proc)
    request = health_pb2.HealthCheckRequest()
    async with open_channel(proc.grpc, ChannelSecurity(tls_ca=str(pki.ca))) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = ChannelSecurity(
        tls_ca=str(pki.ca), tls_cert=str(pki.client_cert), tls_key=str(pki.client_key)
    )
    async with open_channel(proc.grpc, with_cert) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_outside_loopback_the_scheduler_will_not_start_open(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "lingua-scheduler"), "--listen", "0.0.0.0:0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert done.returncode == 2
    assert "pass --auth-file and --tls-cert/--tls-key" in done.stderr
    assert "--insecure" in done.stderr


async def test_a_client_credential_is_held_to_its_max_sessions(
    secured: Secured, operator: registry_pb2_grpc.RegistryServiceAsyncStub, procs: list[Proc]
) -> None:
    procs.append(secured.node("gpu-a-2", "tok-fleet-a"))
    await snapshot_where(operator, has("gpu-a-2"))  # type: ignore[arg-type]
    async with LinguaClient(secured.scheduler.grpc, token="tok-client", tls_ca=str(secured.pki.ca)) as client:
        await client.start_session("en", "es")
        await client.start_session("en", "es")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.start_session("en", "es")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "credential 'client-app' already has 2 open sessions" in (refused.value.details() or "")
