"""`lingua-client`: talk to a scheduler from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from google.protobuf import json_format

from lingua_grpc import __version__
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingua-client",
        description="Lingua client: inspect the node registry (streaming audio sessions arrive with the"
        " sessions work). Output is protobuf's JSON mapping.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--scheduler", default="127.0.0.1:50051", help="scheduler HOST:PORT")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("snapshot", help="print the current registry snapshot")
    sub.add_parser("nodes", help="list registered nodes")
    sub.add_parser("pools", help="list pools")
    sub.add_parser("watch", help="print one snapshot per registry version until interrupted")
    drain = sub.add_parser("drain", help="drain a node: no new jobs, running ones finish, then it leaves")
    drain.add_argument("node_id")
    drain.add_argument("--reason", default="lingua-client drain")
    return p


def _print(message: object) -> None:
    print(json_format.MessageToJson(message, indent=None), flush=True)  # type: ignore[arg-type]


async def _registry(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.scheduler) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        try:
            if args.command == "snapshot":
                _print(await stub.GetSnapshot(registry_pb2.GetSnapshotRequest()))
            elif args.command == "nodes":
                _print(await stub.ListNodes(registry_pb2.ListNodesRequest()))
            elif args.command == "pools":
                _print(await stub.ListPools(registry_pb2.ListPoolsRequest()))
            elif args.command == "drain":
                _print(
                    await stub.DrainNode(
                        registry_pb2.DrainNodeRequest(node_id=args.node_id, reason=args.reason)
                    )
                )
            elif args.command == "watch":
                async for update in stub.WatchSnapshots(registry_pb2.WatchSnapshotsRequest()):
                    _print(update)
        except grpc.aio.AioRpcError as exc:
            print(f"lingua-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_registry(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
