"""One soak run: start the fleet, put the load on, inject the seed's faults, stop, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.soak._check import (
    Violation,
    check_processes,
    check_redis,
    check_sessions,
    evidence,
    percentile,
    recovery_times,
)
from tests.soak._clients import Audio, Clients
from tests.soak._faults import Injector, fingerprint, kinds_for, schedule
from tests.soak._fleet import Fleet, SoakConfig


@dataclass
class Options:
    seconds: float
    seed: int
    workdir: Path
    workers: int = 8
    min_gap_s: float = 3.0
    max_gap_s: float = 9.0
    recovery_window_s: float = 30.0
    max_rss_scheduler_mb: float = 400.0
    max_rss_node_mb: float = 200.0
    max_rss_redis_mb: float = 256.0
    json_path: Path | None = None
    redis_cluster: bool = False  # a three-master Redis Cluster (AOF on) instead of one redis-server


def _version() -> str:
    """The code under test: `git describe` (LINGUA_SOAK_VERSION when it runs from a copy)."""
    if version := os.environ.get("LINGUA_SOAK_VERSION"):
        return version
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


async def run(opts: Options) -> tuple[dict[str, Any], list[Violation]]:
    logging.getLogger("lingua_grpc.client").setLevel(logging.WARNING)
    config = SoakConfig(cluster_masters=3 if opts.redis_cluster else 0)
    faults = schedule(
        opts.seed,
        opts.seconds,
        config.schedulers,
        config.nodes,
        opts.workers,
        opts.min_gap_s,
        opts.max_gap_s,
        cluster_masters=config.cluster_masters,
    )
    print(
        f"soak: seed {opts.seed}, {opts.seconds:.0f} s, {len(faults)} faults (schedule {fingerprint(faults)})"
        + (", on a three-master Redis Cluster" if opts.redis_cluster else "")
    )
    print(f"soak: logs in {opts.workdir}")
    for f in faults:
        print(f"  {f.describe()}")
    fleet = Fleet(opts.workdir, config)
    audio = Audio()
    violations: list[Violation] = []
    report: dict[str, Any] = {}
    try:
        await fleet.start()
        clients = Clients(fleet.addresses(), opts.seed, audio)
        injector = Injector(fleet, clients.stall_reader, clients.burst)
        t0 = time.monotonic()
        workers = [asyncio.create_task(clients.worker(w)) for w in range(opts.workers)]
        chaos = asyncio.create_task(injector.run(faults, t0))
        await asyncio.sleep(max(0.0, t0 + opts.seconds - time.monotonic()))
        await chaos  # the last fault's heal is within the quiet tail
        clients.stop()
        _, pending = await asyncio.wait([*workers, *clients.burst_tasks], timeout=120)
        for task in pending:
            task.cancel()
        if pending:
            violations.append(
                Violation("sessions still open 120 s after the load stopped", f"{len(pending)}")
            )
        load_s = time.monotonic() - t0
        lost_data = any(o.fault.kind == "redis_restart_lost" for o in injector.outcomes)
        violations += check_sessions(clients.logs, audio.owner, lost_data)
        redis_violations, settled_s = await check_redis(fleet, opts.recovery_window_s)
        violations += redis_violations
        limits = {"scheduler": opts.max_rss_scheduler_mb, "node": opts.max_rss_node_mb}
        violations += check_processes(fleet, {**limits, "redis": opts.max_rss_redis_mb}, injector.outcomes)
        for v in violations:
            v.evidence = v.evidence or evidence(opts.workdir, v)
        _write_timeline(opts.workdir / "timeline.txt", fleet, t0)
        (opts.workdir / "sessions.txt").write_text(
            "".join(
                f"{x.key} {x.session_id or '-'} sent {len(x.utterances)} answered {len(x.answers)}"
                f" resumes {x.resumes} ended {x.ended or '-'} {x.refused}\n"
                for x in clients.logs
            )
        )
        (opts.workdir / "skips.txt").write_text(
            "".join(
                f"{_wall(a.at)} t+{a.at - t0:6.1f}s {x.key} {x.session_id} utterance {a.index} {a.kind}:"
                f" {a.message}\n"
                for x in clients.logs
                for a in sorted(x.answers, key=lambda a: a.at)
                if a.kind != "result"
            )
        )
        (opts.workdir / "violations.txt").write_text(
            "".join(f"{v.what}: {v.detail}\n" + "".join(f"    {e}\n" for e in v.evidence) for v in violations)
        )
        report = _report(opts, fleet, clients, injector, faults, load_s, settled_s, violations)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(fleet.close(), 30)
    return report, violations


def _report(
    opts: Options,
    fleet: Fleet,
    clients: Clients,
    injector: Injector,
    faults: list[Any],
    load_s: float,
    settled_s: float,
    violations: list[Violation],
) -> dict[str, Any]:
    logs = clients.logs
    answers = [a for log in logs for a in log.answers]
    recovery = recovery_times(logs, injector.outcomes)
    every = [t for ts in recovery.values() for t in ts]
    latencies = [
        a.at - log.utterances[a.index].sent_end_at
        for log in logs
        for a in log.answers
        if a.kind == "result" and a.index < len(log.utterances) and log.utterances[a.index].sent_end_at
    ]
    return {
        "seed": opts.seed,
        "seconds": opts.seconds,
        "load_s": round(load_s, 1),
        "version": _version(),
        "schedule": fingerprint(faults),
        "redis": "cluster (3 masters)" if opts.redis_cluster else "one redis-server",
        "faults": dict(Counter(o.fault.kind for o in injector.outcomes)),
        "faults_by_target": dict(
            Counter(
                f"{o.fault.kind} {o.fault.target}"
                for o in injector.outcomes
                if o.fault.kind.startswith("redis")
            )
        ),
        "fault_kinds_missing": sorted(
            set(kinds_for(opts.redis_cluster)) - {o.fault.kind for o in injector.outcomes}
        ),
        "injection_failures": [o.note for o in injector.outcomes if o.note.startswith("injection failed")],
        "sessions": {
            "main": sum(1 for x in logs if x.kind == "main" and x.session_id),
            "burst": sum(1 for x in logs if x.kind == "burst" and x.session_id),
            "refused": dict(Counter(x.refused.split(":")[0] for x in logs if x.refused and not x.session_id)),
            "resumes": sum(x.resumes for x in logs),
            "ends": dict(Counter(x.ended.split(":")[0] for x in logs if x.session_id)),
        },
        "utterances": sum(len(x.utterances) for x in logs if x.session_id),
        "results": sum(1 for a in answers if a.kind == "result"),
        "unanswered_in_ended_sessions": sum(
            len({u.index for u in x.utterances} - {a.index for a in x.answers})
            for x in logs
            if x.session_id and x.ended != "ok"
        ),
        "results_attempt_gt_1": sum(1 for a in answers if a.kind == "result" and a.attempt > 1),
        "skips": dict(Counter(a.kind for a in answers if a.kind != "result")),
        "skip_messages": dict(Counter(f"{a.kind}: {a.message[:80]}" for a in answers if a.kind != "result")),
        "latency_s": {"p50": round(percentile(latencies, 50), 3), "p99": round(percentile(latencies, 99), 3)},
        "recovery_s": {
            "p50": round(percentile(every, 50), 2),
            "p99": round(percentile(every, 99), 2),
            "by_kind_max": {k: round(max(v), 2) for k, v in sorted(recovery.items())},
        },
        "store_settled_s": round(settled_s, 1),
        "process_events": dict(
            Counter(e.what for e in fleet.events if e.what in ("exited", "restart failed", "exit in a stall"))
        ),
        "machine_stalls": {
            "count": len(fleet.stalls),
            "longest_s": round(max((late for _, late in fleet.stalls), default=0.0), 1),
        },
        "exits": [e.detail for e in fleet.events if e.what == "exited"][:20],
        "rss_peak_mb": {
            **{m.name: round(max(m.max_rss_mb.values(), default=0.0)) for m in fleet.members},
            **{k: round(v) for k, v in fleet.rss_peak.items()},
        },
        "violations": [asdict(v) for v in violations],
    }


def _wall(monotonic: float) -> str:
    """A monotonic time as the wall-clock time the processes' logs use."""
    at = monotonic + time.time() - time.monotonic()
    return f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"


def _write_timeline(path: Path, fleet: Fleet, t0: float) -> None:
    """Faults, starts and exits, in wall-clock time (to read beside the processes' logs) and from t0."""
    lines = [
        f"{_wall(e.at)} t+{e.at - t0:6.1f}s {e.what:<14} {e.detail}"
        for e in sorted(fleet.events, key=lambda e: e.at)
    ]
    path.write_text("\n".join(lines) + "\n")


def print_report(report: dict[str, Any], violations: list[Violation], workdir: Path) -> None:
    r = report
    print("\n=== soak report ===")
    print(
        f"seed {r['seed']}  ({r['seconds']:.0f} s, code {r['version']}, schedule {r['schedule']}, "
        f"redis: {r['redis']})"
    )
    print(
        f"faults: {sum(r['faults'].values())}  "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()))
    )
    if r["faults_by_target"]:
        print("  redis faults: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults_by_target"].items())))
    if r["fault_kinds_missing"]:
        print(f"fault kinds not injected: {', '.join(r['fault_kinds_missing'])}")
    for note in r["injection_failures"]:
        print(f"  {note}")
    s = r["sessions"]
    print(
        f"sessions: {s['main']} main, {s['burst']} burst; refused at start {s['refused']}; "
        f"resumes {s['resumes']}; ends {s['ends']}"
    )
    print(
        f"utterances {r['utterances']}: results {r['results']} (attempt > 1: {r['results_attempt_gt_1']}), "
        f"skips {sum(r['skips'].values())} {r['skips']}; unanswered in sessions that ended otherwise than OK "
        f"{r['unanswered_in_ended_sessions']}"
    )
    for message, n in sorted(r["skip_messages"].items()):
        print(f"  {n:4d} x {message}")
    print(f"latency utterance end -> answer: p50 {r['latency_s']['p50']} s, p99 {r['latency_s']['p99']} s")
    rec = r["recovery_s"]
    print(
        f"recovery after a fault: p50 {rec['p50']} s, p99 {rec['p99']} s; worst by kind {rec['by_kind_max']}"
    )
    print(f"store idle and final {r['store_settled_s']} s after the load; processes {r['process_events']}")
    print(f"machine stalls (the soak's loop still >= 0.5 s): {r['machine_stalls']}")
    print(f"peak RSS MB: {r['rss_peak_mb']}")
    if violations:
        print(f"\n{len(violations)} VIOLATIONS:")
        for kind, n in Counter(v.what for v in violations).items():
            print(f"  {n:4d} x {kind}")
        for v in violations[:40]:
            print(f"- {v.what}: {v.detail}")
            for line in v.evidence:
                print(f"      {line}")
        print(
            f"\nreplay: python -m tests.soak --seconds {r['seconds']:.0f} --seed {r['seed']}"
            + (" --redis-cluster" if r["redis"].startswith("cluster") else "")
            + f"  (logs: {workdir})"
        )
    else:
        print("\nno violation")


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
