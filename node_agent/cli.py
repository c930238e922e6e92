"""`lingua-node`: the reference node agent."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

from lingua_grpc import __version__
from lingua_grpc.client import ChannelSecurity
from lingua_grpc.errors import InvalidArgument
from lingua_grpc.logs import configure_logging
from lingua_grpc.pb import common_pb2
from lingua_grpc.registry import LanguagePair
from node_agent.agent import FAULTS, AgentConfig, NodeAgent
from node_agent.engines import (
    ASR_ENGINES,
    ENGINES,
    MT_ENGINES,
    TTS_ENGINES,
    EngineOptions,
    Pipeline,
    build_pipeline,
)
from node_agent.gpu import GpuProbe


def _env(name: str, default: str) -> str:
    return os.environ.get(f"LINGUA_NODE_{name}", default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingua-node",
        description="Lingua node agent: registers this host's capabilities with a scheduler and runs"
        " utterance jobs (ASR, translation, TTS) through an engine. SIGTERM drains: no new jobs, running"
        " ones finish, then it leaves and exits 0. Every flag can also be set as LINGUA_NODE_<FLAG>.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--scheduler",
        default=_env("SCHEDULER", "127.0.0.1:50051"),
        help="scheduler HOST:PORT, or several comma-separated: the agent moves to the next when one fails,"
        " keeping its running jobs",
    )
    p.add_argument("--node-id", default=_env("NODE_ID", socket.gethostname()), help="unique node name")
    p.add_argument(
        "--token",
        default=_env("TOKEN", ""),
        help="node credential, sent as `authorization: Bearer` (LINGUA_NODE_TOKEN; prefer --token-file:"
        " a flag shows in the process list)",
    )
    p.add_argument("--token-file", default=_env("TOKEN_FILE", ""), help="file holding the node credential")
    p.add_argument(
        "--tls-ca", default=_env("TLS_CA", ""), help="PEM CA of the scheduler's certificate: TLS on"
    )
    p.add_argument("--tls-cert", default=_env("TLS_CERT", ""), help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default=_env("TLS_KEY", ""), help="PEM key of --tls-cert")
    p.add_argument(
        "--pairs",
        default=_env("PAIRS", ""),
        help="language pairs served, comma separated: en-es,en-zh (pt-BR>en for regional tags). Default:"
        " every pair the engines serve together (required with synthetic translation, which takes any)",
    )
    p.add_argument(
        "--asr-languages",
        default=_env("ASR_LANGUAGES", ""),
        help="languages transcribed, comma separated (default: the pairs' sources)",
    )
    p.add_argument(
        "--tts-languages",
        default=_env("TTS_LANGUAGES", ""),
        help="languages synthesized, comma separated (default: the pairs' targets)",
    )
    p.add_argument(
        "--max-concurrency",
        type=int,
        default=int(_env("MAX_CONCURRENCY", "4")),
        help="jobs run at once (default 4)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=_env("ENGINE", "synthetic"),
        help="engine of every stage not named by --asr/--mt/--tts (default synthetic)",
    )
    p.add_argument("--asr", choices=ASR_ENGINES, default=_env("ASR", "") or None, help="speech recognition")
    p.add_argument("--mt", choices=MT_ENGINES, default=_env("MT", "") or None, help="translation")
    p.add_argument("--tts", choices=TTS_ENGINES, default=_env("TTS", "") or None, help="speech synthesis")
    p.add_argument(
        "--asr-model",
        default=_env("ASR_MODEL", "tiny.en"),
        help="faster-whisper model: a CTranslate2 Whisper directory, or tiny.en (bundled; default)",
    )
    p.add_argument(
        "--asr-device",
        choices=("auto", "cpu", "cuda"),
        default=_env("ASR_DEVICE", "auto"),
        help="where faster-whisper runs: auto (CUDA when a GPU is found, else CPU; default)",
    )
    p.add_argument(
        "--asr-compute-type",
        default=_env("ASR_COMPUTE_TYPE", "auto"),
        help="faster-whisper's compute type: auto (float16 on CUDA, int8 on CPU; default), or a CTranslate2"
        " type such as int8_float16",
    )
    p.add_argument(
        "--tts-voice",
        action="append",
        default=[],
        metavar="LANG=VOICE",
        help="voice of the TTS engine for a language (espeak-ng: es=es-419), repeatable",
    )
    p.add_argument(
        "--synthetic-latency-ms",
        type=int,
        default=int(_env("SYNTHETIC_LATENCY_MS", "0")),
        help="latency of each stage of the synthetic engine (default 0)",
    )
    p.add_argument(
        "--inject-fault",
        choices=sorted(FAULTS),
        default=_env("INJECT_FAULT", "") or None,
        help="TEST HOOK for fault drills: " + "; ".join(f"{k}: {v}" for k, v in FAULTS.items()),
    )
    p.add_argument(
        "--fault-utterances",
        default=_env("FAULT_UTTERANCES", ""),
        help="utterance indexes the fault applies to, comma separated (default: all)",
    )
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="label for pools files, repeatable"
    )
    p.add_argument(
        "--reconnect-max-ms",
        type=int,
        default=int(_env("RECONNECT_MAX_MS", "10000")),
        help="longest wait between reconnection attempts (default 10000)",
    )
    p.add_argument(
        "--drain-timeout-ms",
        type=int,
        default=int(_env("DRAIN_TIMEOUT_MS", "60000")),
        help="how long running jobs may take to finish when draining (default 60000)",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    p.add_argument("--log-format", choices=("json", "text"), default=_env("LOG_FORMAT", "json"))
    return p


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _assignments(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidArgument(f"{flag} {item!r}: write KEY=VALUE")
        out[key] = value
    return out


def pipeline_from_args(args: argparse.Namespace, gpus: int = 0) -> Pipeline:
    options = EngineOptions(
        args.synthetic_latency_ms,
        _assignments(args.tts_voice, "--tts-voice"),
        args.asr_model,
        args.asr_device,
        args.asr_compute_type,
        args.max_concurrency,
        gpus,
    )
    return build_pipeline(args.asr or args.engine, args.mt or args.engine, args.tts or args.engine, options)


def pairs_from_args(args: argparse.Namespace, pipeline: Pipeline) -> list[LanguagePair]:
    """The pairs asked for (`--pairs`), each one the engines serve together; without --pairs, every pair
    they serve. InvalidArgument names what is missing."""
    asked = [LanguagePair.parse(p) for p in _split(args.pairs)]
    if not asked:
        servable = pipeline.servable()
        if servable is None:
            raise InvalidArgument("--pairs needs at least one pair, such as en-es")
        asked = sorted(p for p in servable if not pipeline.missing(p))
        if not asked:
            raise InvalidArgument(f"the engines ({pipeline.name}) serve no language pair together")
    problems = [f"{pair}: {'; '.join(gaps)}" for pair in asked if (gaps := pipeline.missing(pair))]
    if problems:
        raise InvalidArgument("cannot serve " + " | ".join(problems))
    return asked


def capabilities_from_args(
    args: argparse.Namespace, gpus: GpuProbe, pipeline: Pipeline | None = None
) -> common_pb2.NodeCapabilities:
    pipeline = pipeline or pipeline_from_args(args)
    pairs = pairs_from_args(args, pipeline)
    labels = {}
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--label {item!r}: write KEY=VALUE")
        labels[key] = value
    return common_pb2.NodeCapabilities(
        asr_languages=_split(args.asr_languages) or sorted({p.source for p in pairs}),
        translation_pairs=[
            common_pb2.LanguagePair(source_language=p.source, target_language=p.target) for p in pairs
        ],
        tts_languages=_split(args.tts_languages) or pipeline.tts_languages(p.target for p in pairs),
        gpus=[
            common_pb2.Gpu(index=g.index, name=g.name, uuid=g.uuid, memory_total_bytes=g.memory_total_bytes)
            for g in gpus.gpus
        ],
        max_concurrency=args.max_concurrency,
        agent_version=f"lingua-node {__version__}",
        labels=labels,
    )


async def _run(agent: NodeAgent) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, agent.drain, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, agent.drain, "SIGINT")
    return await agent.run()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    gpus = GpuProbe()
    try:
        engine = pipeline_from_args(args, len(gpus.gpus))  # models load and warm up before registering
        capabilities = capabilities_from_args(args, gpus, engine)
    except (InvalidArgument, ValueError) as exc:
        print(f"lingua-node: {exc}", file=sys.stderr)
        return 2
    try:
        token = args.token or (Path(args.token_file).read_text().strip() if args.token_file else "")
        security = ChannelSecurity(token, args.tls_ca, args.tls_cert, args.tls_key)
        security.check()
    except (OSError, ValueError) as exc:
        print(f"lingua-node: {exc}", file=sys.stderr)
        return 2
    config = AgentConfig(
        scheduler=args.scheduler,
        security=security,
        node_id=args.node_id,
        capabilities=capabilities,
        reconnect_max_s=args.reconnect_max_ms / 1000,
        drain_timeout_s=args.drain_timeout_ms / 1000,
        fault=args.inject_fault,
        fault_utterances=frozenset(int(i) for i in _split(args.fault_utterances)) or None,
    )
    return asyncio.run(_run(NodeAgent(config, engine, gpus)))


if __name__ == "__main__":
    sys.exit(main())
