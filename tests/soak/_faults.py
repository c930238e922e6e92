"""The fault schedule: drawn in full from the seed before the run (so a seed replays the same faults, kinds,
targets, times and lengths), then carried out at its times, each fault as its own task."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.soak._fleet import Fleet, Member

# kind -> (exclusion groups, how long it keeps them busy beyond its own length, in s)
KINDS: dict[str, tuple[str, float]] = {
    "scheduler_kill": ("scheduler", 4.0),  # kill -9, restarted under its id and address after `length_s`
    "scheduler_stop": ("scheduler", 4.0),  # SIGSTOP for `length_s`, then SIGCONT
    "node_kill": ("node", 2.0),
    "node_stop": ("node", 2.0),
    "redis_restart_kept": ("redis", 2.0),  # AOF (appendfsync everysec) on, SIGTERM, down `length_s`
    "redis_restart_lost": ("redis", 2.0),  # no persistence: restarted empty
    "redis_link_cut": ("redis", 1.0),  # one instance's Redis connections reset, refused for `length_s`
    "redis_link_stall": ("redis", 1.0),  # ... black-holed for `length_s`
    "redis_link_delay": ("redis", 1.0),  # ... each byte `amount` ms late for `length_s`
    "node_link_cut": ("node", 1.0),  # node-0's connections to every scheduler
    "node_link_stall": ("node", 1.0),
    "node_link_delay": ("node", 1.0),
    "reader_stall": ("reader", 1.0),  # one client stops reading for `length_s`
    "session_burst": ("burst", 6.0),  # `amount` new sessions at once, beyond capacity
    # the instance behind the Redis proxy loses Redis, then dies while cut off (`length_s` later): what it
    # acknowledged must be in Redis for the clients that resume elsewhere (issue 27)
    "cut_off_scheduler_kill": ("redis+scheduler", 4.0),
}

_LENGTHS: dict[str, tuple[float, float]] = {
    "scheduler_kill": (0.3, 3.0),
    "scheduler_stop": (0.5, 5.0),
    "node_kill": (0.3, 3.0),
    "node_stop": (0.5, 3.0),
    "redis_restart_kept": (0.3, 2.0),
    "redis_restart_lost": (0.3, 2.0),
    "redis_link_cut": (0.5, 4.0),
    "redis_link_stall": (0.5, 4.0),
    "redis_link_delay": (2.0, 5.0),
    "node_link_cut": (0.5, 3.0),
    "node_link_stall": (0.5, 3.0),
    "node_link_delay": (2.0, 5.0),
    "reader_stall": (3.0, 10.0),
    "session_burst": (0.0, 0.0),
    "cut_off_scheduler_kill": (0.3, 1.5),
}

# On a Redis Cluster the TCP proxy in front of Redis for one instance cannot work: a cluster client follows
# the addresses CLUSTER SLOTS gives, not the one it was told. The kinds that need it are left out there.
CLUSTER_LEFT_OUT = ("redis_link_cut", "redis_link_stall", "redis_link_delay", "cut_off_scheduler_kill")


def kinds_for(cluster: bool) -> list[str]:
    """The fault kinds of a mode: every kind on one redis-server; on a cluster, all but the Redis link's
    (there `redis_restart_kept` / `_lost` restart one master, the target, on its AOF or empty)."""
    return [k for k in KINDS if not (cluster and k in CLUSTER_LEFT_OUT)]


@dataclass(frozen=True)
class Fault:
    at_s: float  # from the start of the load
    kind: str
    target: str  # a member's name, a link, a client worker, or ""
    length_s: float
    amount: int = 0  # delay ms, burst sessions

    def describe(self) -> str:
        extra = f" {self.amount}" if self.amount else ""
        return f"t+{self.at_s:6.1f}s {self.kind:<22} {self.target or '-':<10} {self.length_s:4.1f}s{extra}"


@dataclass
class Outcome:
    fault: Fault
    started_at: float = 0.0  # monotonic
    healed_at: float = 0.0  # when the fault was over (process back and ready, link healed...)
    note: str = ""


def schedule(
    seed: int,
    duration_s: float,
    schedulers: int,
    nodes: int,
    workers: int,
    min_gap_s: float,
    max_gap_s: float,
    first_at_s: float = 6.0,
    quiet_tail_s: float = 12.0,
    cluster_masters: int = 0,
) -> list[Fault]:
    """Faults from `first_at_s` to `duration_s - quiet_tail_s`, `min_gap_s`..`max_gap_s` apart. The first ones
    take every kind once (in an order drawn from the seed); then kinds are drawn at random. A fault never
    lands on a group (all schedulers, all nodes, Redis...) another fault still keeps busy: it takes the next
    free kind, or waits a second. `cluster_masters` > 0: a Redis Cluster of that many masters, the kinds of
    `kinds_for(True)`, a Redis restart aimed at one master (`m0`..); 0 (one redis-server) draws exactly as
    before the cluster mode existed."""
    rng = random.Random(seed)
    all_kinds = kinds_for(cluster_masters > 0)
    targets: dict[str, list[str]] = {
        "scheduler": [f"sched-{i}" for i in range(schedulers)],
        "node": [f"node-{i}" for i in range(nodes)],
        "redis": [f"m{i}" for i in range(cluster_masters)] if cluster_masters else [""],
        "reader": [f"w{i}" for i in range(workers)],
        "burst": [""],
        "redis+scheduler": [f"sched-{schedulers - 1}"],
    }
    coverage = list(all_kinds)
    rng.shuffle(coverage)
    busy_until: dict[str, float] = {}
    out: list[Fault] = []
    t = first_at_s
    end = duration_s - quiet_tail_s
    while t < end:
        kinds = [*coverage, *rng.sample(all_kinds, len(all_kinds))]
        for kind in kinds:
            group, settle = KINDS[kind]
            groups = group.split("+")
            if any(busy_until.get(g, 0.0) > t for g in groups):
                continue
            low, high = _LENGTHS[kind]
            length = round(rng.uniform(low, high), 1)
            target = rng.choice(targets[group])
            if kind.startswith("node_link"):
                target = "node-0"
            if kind.startswith("redis_link"):
                target = f"sched-{schedulers - 1}"
            amount = 0
            if kind.endswith("_delay"):
                amount = rng.randint(20, 250)
            if kind == "session_burst":
                amount = rng.randint(24, 48)
            out.append(Fault(round(t, 1), kind, target, length, amount))
            for g in groups:
                busy_until[g] = t + length + settle
            if kind in coverage:
                coverage.remove(kind)
            t += rng.uniform(min_gap_s, max_gap_s)
            break
        else:
            t += 1.0
    return out


def fingerprint(faults: list[Fault]) -> str:
    return hashlib.sha256("\n".join(f.describe() for f in faults).encode()).hexdigest()[:12]


@dataclass
class Injector:
    """Carries out the schedule against the fleet and the clients."""

    fleet: Fleet
    reader_stall: Callable[[str, float], None]  # worker name, seconds
    burst: Callable[[int], asyncio.Task[None]]
    outcomes: list[Outcome] = field(default_factory=list)

    async def run(self, faults: list[Fault], t0: float) -> None:
        tasks = []
        for fault in faults:
            if (wait := t0 + fault.at_s - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            outcome = Outcome(fault, started_at=time.monotonic())
            self.outcomes.append(outcome)
            tasks.append(asyncio.create_task(self._apply(outcome)))
        await asyncio.gather(*tasks, return_exceptions=True)

    def _member(self, name: str) -> Member:
        return next(m for m in self.fleet.members if m.name == name)

    async def _apply(self, o: Outcome) -> None:
        f, fleet = o.fault, self.fleet
        fleet.note("fault", f.describe())
        try:
            if f.kind in ("scheduler_kill", "node_kill"):
                m = self._member(f.target)
                m.held_down = True
                fleet.kill(m)
                await asyncio.sleep(f.length_s)
                await self._restart(m, o)
            elif f.kind in ("scheduler_stop", "node_stop"):
                m = self._member(f.target)
                m.held_down = True
                fleet.stop(m)
                await asyncio.sleep(f.length_s)
                fleet.cont(m)
                m.held_down = False  # one paused past its lease may exit now: the supervisor restarts it
            elif f.kind.startswith("redis_restart") and fleet.cluster is not None:
                kept = f.kind == "redis_restart_kept"  # one master, on its AOF or empty (its nodes.conf kept)
                if kept:
                    await asyncio.to_thread(fleet.cluster.enable_aof, f.target)
                await asyncio.to_thread(fleet.cluster.stop, f.target)
                await asyncio.sleep(f.length_s)
                await asyncio.to_thread(fleet.cluster.start_master, f.target, kept)
            elif f.kind.startswith("redis_restart"):
                kept = f.kind == "redis_restart_kept"
                if kept:
                    await asyncio.to_thread(fleet.redis.enable_aof)
                await asyncio.to_thread(fleet.redis.stop)
                await asyncio.sleep(f.length_s)
                await asyncio.to_thread(fleet.redis.start, kept, not kept)
            elif f.kind == "cut_off_scheduler_kill":
                m = self._member(f.target)
                assert fleet.redis_link is not None
                fleet.redis_link.cut()
                await asyncio.sleep(f.length_s)
                m.held_down = True
                fleet.kill(m)
                fleet.redis_link.heal()
                await asyncio.sleep(0.5)
                await self._restart(m, o)
            elif f.kind.startswith(("redis_link", "node_link")):
                links = [fleet.redis_link] if f.kind.startswith("redis") else fleet.node_links
                for link in links:
                    assert link is not None
                    if f.kind.endswith("cut"):
                        link.cut()
                    elif f.kind.endswith("stall"):
                        link.stall()
                    else:
                        link.delay(f.amount / 1000)
                await asyncio.sleep(f.length_s)
                for link in links:
                    assert link is not None
                    link.heal()
            elif f.kind == "reader_stall":
                self.reader_stall(f.target, f.length_s)
                await asyncio.sleep(f.length_s)
            elif f.kind == "session_burst":
                await self.burst(f.amount)
        except Exception as exc:
            o.note = f"injection failed: {exc!r}"[:300]
            fleet.note("fault failed", f"{f.describe()}: {exc!r}"[:300])
        o.healed_at = time.monotonic()
        fleet.note("healed", f.describe())

    async def _restart(self, m: Member, o: Outcome) -> None:
        for _ in range(20):
            try:
                await self.fleet.start_member(m)
                break
            except Exception as exc:  # Redis away, say: again shortly
                o.note = f"restart retried: {exc!r}"[:200]
                await asyncio.sleep(0.5)
        m.held_down = False
