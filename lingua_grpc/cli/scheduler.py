"""`lingua-scheduler`: the scheduler process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from lingua_grpc import __version__
from lingua_grpc.app import Scheduler
from lingua_grpc.cli._workers import supervise
from lingua_grpc.config import Settings
from lingua_grpc.logs import configure_logging

log = logging.getLogger("lingua_grpc.scheduler")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lingua-scheduler",
        description="Lingua scheduler: takes client audio streams, dispatches utterance jobs to GPU nodes,"
        " and streams results back in order. With no Redis URL it runs a private embedded redis-server.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    Settings.add_arguments(parser)
    return parser


def _reload_credentials(scheduler: Scheduler) -> None:
    try:
        ended = scheduler.reload_credentials()
    except ValueError as exc:  # a broken file keeps the credentials in force
        log.error("credentials not reloaded: %s", exc)
        return
    log.info("SIGHUP: credentials reloaded", extra={"calls_ended": ended})


async def serve(settings: Settings) -> int:
    try:
        scheduler = Scheduler(settings)
    except ValueError as exc:
        print(f"lingua-scheduler: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.auth_file:
        loop.add_signal_handler(signal.SIGHUP, _reload_credentials, scheduler)
    start = asyncio.create_task(scheduler.start())
    stop_wait = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({start, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            endpoints = start.result()
            redis_note = "embedded " + endpoints.redis_url if endpoints.embedded_redis else "configured Redis"
            metrics_note = endpoints.metrics or "off"
            print(
                f"lingua-scheduler listening on {endpoints.grpc} (metrics {metrics_note}, redis {redis_note})",
                flush=True,
            )
            stopped = asyncio.create_task(scheduler.wait_stopped())
            await asyncio.wait({stop_wait, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not stop_wait.done():  # it stopped on its own: the fleet declared it dead
                return 1
            log.info("signal received, shutting down")
        else:
            start.cancel()  # a signal while still waiting for Redis
    finally:
        stop_wait.cancel()
        await scheduler.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_sources(args)
    except ValueError as exc:
        print(f"lingua-scheduler: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if settings.workers > 1:
            return asyncio.run(supervise(settings, list(sys.argv[1:] if argv is None else argv)))
        return asyncio.run(serve(settings))
    except (OSError, ValueError) as exc:  # a port in use, an unreadable TLS file...
        log.error("cannot start: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
