"""What the soak checks afterwards, and its report. The client-side invariants are pure functions of what the
clients sent and received; the Redis ones read the store once the fleet is idle."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as redis_sync

from tests.soak._clients import SessionLog
from tests.soak._faults import Outcome
from tests.soak._fleet import PREFIX, Fleet

CRC = re.compile(r"crc ([0-9a-f]{8})")
FINAL = {"COMPLETED", "FAILED", "SKIPPED"}
# Keys that live without a TTL (store/_keys.py): the registry and each instance's inbox and session set. Every
# key of a session ({s:...}) and every lease must expire.
PERMANENT = re.compile(
    r"^" + re.escape(PREFIX) + r"(\{registry\}:(version|epoch|nodes|node:.+|slots:.+|instances|instance:.+"
    r"|resume_key)|\{i:[^}]+\}:(inbox|sessions))$"
)
# Ends of a session that the README documents, and when they may happen.
DOCUMENTED_ENDS = {
    "NOT_FOUND": "resume after Redis lost its data",
    "RESOURCE_EXHAUSTED": "a client that stops reading (session_outbox_max_bytes unread)",
}
# A skip that says the utterance could not be recorded while Redis came back within the bound: issue 27.
UNRECORDED = re.compile(r"could not be recorded", re.I)


@dataclass
class Violation:
    what: str
    detail: str
    evidence: list[str] = field(default_factory=list)


def check_sessions(
    logs: list[SessionLog], owner: dict[int, tuple[str, int]], lost_data: bool
) -> list[Violation]:
    """Every utterance sent answered exactly once, in order, each result carrying its own utterance's audio;
    a session ends OK, or in a documented way."""
    out: list[Violation] = []
    for log in logs:
        if log.refused and not log.session_id:
            if log.kind == "main":
                out.append(Violation("session never started", f"{log.key}: {log.refused}"))
            continue
        seen: Counter[int] = Counter()
        last = -1
        for a in log.answers:
            seen[a.index] += 1
            if seen[a.index] == 2:
                out.append(Violation("answered twice", f"{log.key} {log.session_id} utterance {a.index}"))
            if a.index < last:
                out.append(Violation("out of order", f"{log.key} {log.session_id}: {a.index} after {last}"))
            last = max(last, a.index)
            if a.index >= len(log.utterances):
                out.append(
                    Violation(
                        "answer for an utterance never sent",
                        f"{log.key} {log.session_id} index {a.index} ({len(log.utterances)} sent): {a.text}",
                    )
                )
                continue
            if a.kind == "result":
                match = CRC.search(a.text)
                heard = owner.get(int(match.group(1), 16)) if match else None
                if heard != (log.key, a.index):
                    out.append(
                        Violation(
                            "result carries another utterance's audio",
                            f"{log.key} {log.session_id} utterance {a.index} ({log.utterances[a.index].ms} ms)"
                            f" got audio of {heard} (attempt {a.attempt}, {a.node}): {a.text!r}",
                        )
                    )
            elif a.kind == "UNSPECIFIED":
                out.append(Violation("skip without a reason", f"{log.key} {log.session_id} {a.index}"))
            elif a.kind == "FAILED" and UNRECORDED.search(a.message):
                out.append(
                    Violation(
                        "skipped FAILED: not recorded (Redis came back)",
                        f"{log.key} {log.session_id} utterance {a.index}: {a.message}",
                    )
                )
        unanswered = [u.index for u in log.utterances if u.index not in seen]
        code = log.ended.split(":", 1)[0]
        documented = code in DOCUMENTED_ENDS and (code != "NOT_FOUND" or lost_data)
        if code == "RESOURCE_EXHAUSTED" and not log.stalled_reading and log.kind == "main":
            documented = False
        if log.ended == "ok" and unanswered:
            out.append(
                Violation(
                    "utterances lost (stream ended OK)",
                    f"{log.key} {log.session_id}: {unanswered} of {len(log.utterances)} never answered",
                )
            )
        elif log.ended.startswith("ok ("):
            out.append(
                Violation(
                    "stream ended OK before every answer",
                    f"{log.key} {log.session_id}: unanswered {unanswered}",
                )
            )
        elif log.ended not in ("ok", "") and not documented:
            out.append(
                Violation(
                    "session ended with an error",
                    f"{log.key} {log.session_id}: {log.ended}; unanswered {unanswered}",
                )
            )
    return out


async def check_redis(fleet: Fleet, window_s: float) -> tuple[list[Violation], float]:
    """Once idle: no slot held, no job non-final (waiting up to `window_s` for both), no key without a TTL
    beyond the permanent ones. Returns the violations and how long the store took to settle."""
    started = time.monotonic()
    deadline = started + window_s
    held: dict[str, Any] = {}
    live: dict[str, Any] = {}
    while True:
        try:
            held, live = await asyncio.to_thread(_held_and_live, fleet)
        except redis_sync.RedisError as exc:
            held, live = {"redis": repr(exc)}, {}
        if (not held and not live) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    settled = time.monotonic() - started
    out: list[Violation] = []
    for key, value in sorted(held.items())[:20]:
        out.append(Violation("slot held once idle", f"{key} = {value}"))
    for key, value in sorted(live.items())[:20]:
        out.append(Violation("job not final after the recovery window", f"{key}: {value}"))
    for key, ttl in (await asyncio.to_thread(_without_ttl, fleet))[:20]:
        out.append(Violation("key without a TTL", f"{key} (ttl {ttl})"))
    return out, settled


def _held_and_live(fleet: Fleet) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scans every Redis holding keys (each master of a cluster; a key a master's SCAN returns is read there)."""
    held: dict[str, Any] = {}
    live: dict[str, Any] = {}
    for client in fleet.store_clients():
        with client as c:
            for key in c.scan_iter(f"{PREFIX}{{registry}}:node:*"):
                if int(c.hget(key, "reserved") or 0):
                    held[key] = f"reserved {c.hget(key, 'reserved')}"
            for key in c.scan_iter(f"{PREFIX}{{registry}}:slots:*"):
                if members := c.smembers(key):
                    held[key] = sorted(members)
            for key in c.scan_iter(f"{PREFIX}*:job:*"):
                job = c.hgetall(key)
                if job.get("state") not in FINAL:
                    live[key] = {
                        k: job.get(k) for k in ("state", "attempt", "node", "owner", "updated_at") if k in job
                    }
    return held, live


def _without_ttl(fleet: Fleet) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for client in fleet.store_clients():
        with client as c:
            out += [
                (key, ttl)
                for key in c.scan_iter("*")
                if (ttl := c.ttl(key)) == -1 and not PERMANENT.match(key)
            ]
    return out


def check_processes(fleet: Fleet, max_rss_mb: dict[str, float], faults: list[Outcome]) -> list[Violation]:
    """Memory bounded; no process exited but by a fault of the soak. Documented exits: a scheduler paused
    (SIGSTOP), or cut off from Redis, past its lease finds itself claimed and exits (status 1)."""
    out: list[Violation] = []
    for m in fleet.members:
        for incarnation, peak in m.max_rss_mb.items():
            if peak > max_rss_mb[m.kind]:
                out.append(
                    Violation(
                        "memory", f"{m.name}#{incarnation} peak RSS {peak:.0f} MB > {max_rss_mb[m.kind]}"
                    )
                )
    for name, peak in fleet.rss_peak.items():  # "redis", or "redis m0".. on a cluster
        if name.startswith("redis") and peak > max_rss_mb["redis"]:
            out.append(Violation("memory", f"{name} peak RSS {peak:.0f} MB > {max_rss_mb['redis']}"))
    isolating = ("scheduler_stop", "redis_link_cut", "redis_link_stall")
    cut_off = [(o.fault.target, o.started_at, o.healed_at) for o in faults if o.fault.kind in isolating]
    for e in list(fleet.events):
        if e.what != "exited":
            continue
        name = e.detail.split("#", 1)[0]
        if any(t == name and start <= e.at <= healed + 5 for t, start, healed in cut_off):
            continue
        if any(e.at - 6 <= start <= e.at and late >= 1.0 for start, late in fleet.stalls):
            fleet.note("exit in a stall", e.detail)  # the machine starved everyone: not held against it
            continue
        member = next(m for m in fleet.members if m.name == name)
        incarnation = int(e.detail.split("#", 1)[1].split()[0])
        log = fleet.workdir / f"{name}.{incarnation}.log"
        lines = [ln for ln in _lines(log) if " ERROR " in ln or "Traceback" in ln][-4:]
        out.append(Violation(f"{member.kind} exited on its own", e.detail[:160], lines))
    return out


def _lines(path: Path) -> list[str]:
    try:
        return [f"{path.name}: {line[:300]}" for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return []


def recovery_times(logs: list[SessionLog], faults: list[Outcome]) -> dict[str, list[float]]:
    """Per fault: the longest any utterance waited on it, from the fault's start (or the utterance's end, if
    later) to its answer, over the utterances that ended before the fault was over (process back, link
    healed...) and were answered after it began; 0 when none waited."""
    answered: list[tuple[float, float]] = []  # (utterance end sent, answered at)
    for log in logs:
        first: dict[int, float] = {}
        for a in log.answers:
            first.setdefault(a.index, a.at)
        for u in log.utterances:
            if u.sent_end_at and u.index in first:
                answered.append((u.sent_end_at, first[u.index]))
    out: dict[str, list[float]] = {}
    for o in faults:
        if not o.healed_at:
            continue
        waits = [
            at - max(sent, o.started_at) for sent, at in answered if sent <= o.healed_at and at > o.started_at
        ]
        out.setdefault(o.fault.kind, []).append(max([0.0, *waits]))
    return out


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def evidence(workdir: Path, violation: Violation, limit: int = 8) -> list[str]:
    """Log lines naming the violation's session (its job ids first), from every process's log."""
    ids = re.findall(r"\b[0-9a-f]{32}\b|\b[0-9a-f]{8}-[0-9a-f-]{27}\b", violation.detail)
    if not ids:
        return []
    index = re.search(r"utterance (\d+)", violation.detail)
    needles = [f"{ids[0]}:{index.group(1)}"] if index else []
    needles.append(ids[0])
    lines: list[str] = []
    for needle in needles:
        for path in sorted(workdir.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if needle in line and ("WARNING" in line or "ERROR" in line or needle != ids[0]):
                    lines.append(f"{path.name}: {line[:400]}")
        if lines:
            break
    return lines[:limit]
