"""lingua-bench --sweep: goodput under offered load, from half the fleet's capacity to five times it.

First the capacity: completed utterances per second of a burst (`--capacity-sessions` sessions of
`--burst-utterances` whole utterances each, sent at once), TTS on and admission on: the scheduler as users get
it (`--user-defaults`). Then, for each TTS mode and each multiple m of that capacity, two shapes of load:
- burst: m x capacity x `--burst-s` whole utterances, in sessions of `--burst-utterances`, all sent at once
  (clients resuming together, a recording streamed faster than real time);
- steady: m x capacity utterances per second for `--steady-s`: as many real-time speakers of whole
  utterances (one per 1.2 s each) as that rate needs, their starts spread over one 1.2 s period.
Each step runs on a fresh scheduler (embedded Redis) and fresh nodes, so no step inherits another's queue,
memory or counters. Goodput is utterances answered with a result per second, from the first session's start
to the last answer. Every utterance is accounted for (see _fates): a step where one is neither answered nor
skipped fails the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lingua_grpc.bench._fates import Fates
from lingua_grpc.bench._main import UTTERANCE_MS, run

PERIOD_S = UTTERANCE_MS / 1000  # a real-time speaker's utterance, audio and pause: 1.2 s


@dataclass
class Step:
    shape: str  # capacity, burst or steady
    tts: bool
    multiplier: float  # offered load over the measured capacity (1 for the capacity step itself)
    sessions: int
    utterances: int  # per session
    offered_per_s: float  # utterances offered per second
    load: dict[str, float] = field(default_factory=dict)
    fates: Fates = field(default_factory=Fates)

    @property
    def label(self) -> str:
        return f"{self.shape}-tts-{'on' if self.tts else 'off'}-x{self.multiplier:g}"


def plan(shape: str, tts: bool, multiplier: float, capacity: float, args: argparse.Namespace) -> Step:
    """The sessions that offer `multiplier` x `capacity` utterances per second in this shape."""
    rate = multiplier * capacity
    if shape == "steady":
        sessions = max(1, round(rate * PERIOD_S))
        utterances = max(1, round(args.steady_s / PERIOD_S))
        return Step(shape, tts, multiplier, sessions, utterances, sessions / PERIOD_S)
    jobs = max(1, round(rate * args.burst_s))
    utterances = min(args.burst_utterances, jobs)
    sessions = math.ceil(jobs / utterances)
    return Step(shape, tts, multiplier, sessions, utterances, sessions * utterances / args.burst_s)


def step_args(args: argparse.Namespace, step: Step) -> argparse.Namespace:
    steady = step.shape == "steady"
    return argparse.Namespace(
        **{
            **vars(args),
            "sessions": step.sessions,
            "utterances": step.utterances,
            "tts": step.tts,
            "whole_utterances": True,
            "realtime": steady,
            "steady": steady,
            "ramp_s": PERIOD_S if steady else 0.0,
            "lockstep": False,
            "user_defaults": True,
            "idle_sessions": 0,
            "skip_baselines": True,
            "nodes_on_second_instance": False,
            "quiet": True,
            "json": None,
            "run_label": step.label,
            "log_dir": str(Path(args.log_dir) / step.label) if args.log_dir else "",
        }
    )


def run_step(args: argparse.Namespace, step: Step) -> Step:
    report = asyncio.run(run(step_args(args, step)))
    step.load, step.fates = report.load, report.fates
    offered = "" if math.isnan(step.offered_per_s) else f"{step.offered_per_s:,.0f}/s "
    when = "" if step.shape == "steady" else " at once"
    print(
        f"{step.label}: offered {offered}({step.sessions} sessions x {step.utterances}{when}),"
        f" goodput {step.load['utterances_per_s']:,.1f}/s; fates: {step.fates.summary()}",
        flush=True,
    )
    return step


def _skips(load: dict[str, float]) -> str:
    reasons = [(k.removeprefix("skipped_"), int(v)) for k, v in load.items() if k.startswith("skipped_")]
    return ", ".join(f"{r} {n}" for r, n in reasons if n) or "-"


def print_sweep(capacity: float, steps: list[Step]) -> None:
    header = (
        "shape",
        "tts",
        "x",
        "offered/s",
        "sessions (refused)",
        "sent",
        "completed",
        "goodput/s",
        "e2e p50/p99 ms",
        "skips by reason",
        "re-dispatches",
        "timeouts",
        "old-attempt results",
        "Redis KiB/session peak/after",
    )
    rows = [header]
    for s in steps:
        load = s.load
        rows.append(
            (
                s.shape,
                "on" if s.tts else "off",
                f"{s.multiplier:g}",
                "-" if math.isnan(s.offered_per_s) else f"{s.offered_per_s:,.0f}",
                f"{s.sessions} ({int(load['sessions_refused'])}"
                + (f"; {int(load['start_errors'])} starts failed" if load.get("start_errors") else "")
                + ")",
                f"{s.fates.sent:,}",
                f"{s.fates.completed:,}",
                f"{load['utterances_per_s']:,.1f}",
                f"{load['client_end_to_end_p50_ms']:,.0f} / {load['client_end_to_end_p99_ms']:,.0f}",
                _skips(load),
                f"{load.get('redispatches', float('nan')):,.0f}",
                f"{load.get('attempt_timeouts', float('nan')):,.0f}",
                f"{load.get('results_of_old_attempts_refused', float('nan')):,.0f}",
                f"{load['redis_kib_per_session_peak']:,.0f} / {load['redis_kib_per_session_after']:,.0f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"\nsweep: capacity {capacity:,.1f} utterances/s (burst, TTS on, admission on, defaults)")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(
        "(e2e: the client's last audio of an utterance sent -> its answer received; refused sessions sent"
        " nothing: their utterances are apart from 'sent')"
    )
    for line in goals(steps):
        print(line)


def goals(steps: list[Step]) -> list[str]:
    """Issue 24's goals, per shape and TTS mode: goodput at 5x >= 90 % of 1x; no FAILED skip."""
    out = []
    by = {(s.shape, s.tts, s.multiplier): s for s in steps if s.shape != "capacity"}
    for shape, tts in sorted({(s, t) for s, t, _ in by}, key=lambda k: (k[0], not k[1])):
        one, five = by.get((shape, tts, 1.0)), by.get((shape, tts, 5.0))
        if one and five and one.load["utterances_per_s"] > 0:
            ratio = five.load["utterances_per_s"] / one.load["utterances_per_s"]
            verdict = "met" if ratio >= 0.9 else "MISSED"
            out.append(
                f"goal {shape}, TTS {'on' if tts else 'off'}: goodput at 5x / 1x = {ratio:.2f}"
                f" (>= 0.90: {verdict})"
            )
    failed = sum(s.fates.skipped.get("FAILED", 0) for s in steps)
    out.append(
        f"goal: no FAILED skip while every node is alive: {failed} ({'met' if not failed else 'MISSED'})"
    )
    return out


def sweep(args: argparse.Namespace) -> int:
    if args.scheduler or args.real_engines or args.nodes_on_second_instance:
        raise SystemExit(
            "lingua-bench: --sweep starts its own scheduler and synthetic nodes for every step"
            " (not with --scheduler, --real-engines or --nodes-on-second-instance)"
        )
    multipliers = [float(m) for m in args.multipliers.split(",") if m]
    shapes = [s for s in args.shapes.split(",") if s]
    modes = [m == "on" for m in args.tts_modes.split(",") if m]
    if set(shapes) - {"burst", "steady"} or set(args.tts_modes.split(",")) - {"on", "off"}:
        raise SystemExit("lingua-bench: --shapes takes burst,steady and --tts-modes on,off")
    steps: list[Step] = []
    capacity = args.capacity
    if capacity <= 0:
        sessions, per = args.capacity_sessions, args.burst_utterances
        measured = run_step(args, Step("capacity", True, 1.0, sessions, per, float("nan")))
        steps.append(measured)
        capacity = measured.load["utterances_per_s"]
        if capacity <= 0:
            raise SystemExit("lingua-bench: the capacity burst completed nothing")
    for tts in modes:
        for shape in shapes:
            for m in multipliers:
                steps.append(run_step(args, plan(shape, tts, m, capacity, args)))
    print_sweep(capacity, steps)
    if args.json:
        out: dict[str, Any] = {
            "config": {k: v for k, v in vars(args).items() if k != "func"},
            "capacity_utterances_per_s": capacity,
            "steps": [{**asdict(s), "label": s.label} for s in steps],
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    failed = [s for s in steps if not s.fates.ok]
    for s in failed:
        print(f"lingua-bench: FAILED: {s.label}: {s.fates.failure()}", file=sys.stderr)
    return 1 if failed else 0
