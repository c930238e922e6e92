"""Sessions admitted while a hostile caller sends the largest messages it may (issue 19).

Starts a scheduler process with admission on at its defaults (event-loop lag 50 ms, busy 85 %, window 1 s),
one synthetic node, then opens sessions one after another for `--seconds`, first with no hostile caller,
then while a separate process sends, back to back, registrations of 8 MB of labels (gRPC's receive limit)
and of 100,000 translation pairs (1 MB), each refused. Prints sessions admitted / tried for both phases.

    .venv/bin/python scripts/hostile_admission.py [--seconds 20] [--auth]

`--auth`: the scheduler has an auth file and the hostile caller no credential (refused UNAUTHENTICATED
after its first message is read).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.pb import node_pb2
from tests.e2e._procs import start_node, start_scheduler
from tests.integration.test_bounds import wire_registration

CLIENT_TOKEN = "tok-client"
NODE_TOKEN = "tok-node"


def auth_file(path: Path) -> Path:
    def entry(name: str, role: str, token: str, extra: str = "") -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()
        return f'[[credentials]]\nname = "{name}"\ntoken_sha256 = "{digest}"\nrole = "{role}"\n{extra}'

    path.write_text(
        entry("client", "client", CLIENT_TOKEN)
        + "\n"
        + entry("node", "node", NODE_TOKEN, 'node_ids = ["*"]\n')
    )
    return path


async def hostile(address: str) -> None:
    """Sends its messages back to back for ever, each on a new call, and reads each refusal."""
    messages = [wire_registration(labels=600_000), wire_registration(pairs=100_000)]  # 8.3 MB, 1 MB
    sent = 0
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    ) as channel:
        connect = channel.stream_stream(
            "/lingua.v1.NodeService/Connect",
            request_serializer=bytes,  # the messages are written as they are
            response_deserializer=node_pb2.ConnectResponse.FromString,
        )
        while True:
            call = connect()  # type: ignore[call-arg]
            try:
                await call.write(messages[sent % 2])
                await call.read()
            except grpc.aio.AioRpcError:
                pass
            except Exception:  # a write overtaken by the refusal: the next call
                pass
            sent += 1
            if sent % 20 == 0:
                print(f"hostile: {sent} messages", file=sys.stderr, flush=True)


async def probe(address: str, seconds: float, token: str) -> tuple[int, int]:
    """Opens sessions one after another for `seconds`: (admitted, tried)."""
    admitted = tried = 0
    deadline = time.monotonic() + seconds
    async with LinguaClient(address, reconnect=Reconnect(within_s=0), token=token) as client:
        while time.monotonic() < deadline:
            tried += 1
            try:
                session = await client.start_session("en", "es")
                admitted += 1
                await session.end()
                async for _ in session:
                    pass
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not admitted:
                    tried -= 1  # the node has not registered yet: not a try
                    deadline = time.monotonic() + seconds
                elif exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise  # UNAVAILABLE later: the node was lost (its lease lapsed), also a refusal
            await asyncio.sleep(0.1)  # a new session every ~100 ms: a steady arrival rate, not a wait
    return admitted, tried


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--hostile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile:
        await hostile(args.hostile)
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        extra = ["--overload-loop-lag-ms", "50", "--overload-loop-busy-percent", "85"]
        if args.auth:
            extra += ["--auth-file", str(auth_file(tmp / "auth.toml"))]
        scheduler = await start_scheduler(tmp, *extra)
        node_args = ("--token", NODE_TOKEN) if args.auth else ()
        node = start_node(tmp, scheduler.grpc, "gpu-1", *node_args)
        token = CLIENT_TOKEN if args.auth else ""
        try:
            quiet = await probe(scheduler.grpc, args.seconds, token)
            attacker = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--hostile", scheduler.grpc
            )
            try:
                await asyncio.sleep(2)  # the attack is under way
                attacked = await probe(scheduler.grpc, args.seconds, token)
            finally:
                attacker.kill()
                await attacker.wait()
        finally:
            node.kill()
            scheduler.kill()
    mode = "auth on, hostile caller unauthenticated" if args.auth else "auth off (loopback)"
    print(
        f"{mode}: sessions admitted / tried: quiet {quiet[0]}/{quiet[1]}, under attack {attacked[0]}/{attacked[1]}"
    )


if __name__ == "__main__":
    asyncio.run(main())
