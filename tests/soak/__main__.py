"""`python -m tests.soak --minutes 10 --seed 7`: prints the fault schedule, runs it, prints the report; exits
1 on any violation (the seed replays the same schedule)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path

from tests.soak._run import Options, print_report, run, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the load (default 2)")
    parser.add_argument("--seconds", type=float, help="length of the load in seconds (instead of --minutes)")
    parser.add_argument("--seed", type=int, help="seed of the fault schedule and the load (default: random)")
    parser.add_argument(
        "--sessions", type=int, default=8, help="clients holding sessions at once (default 8)"
    )
    parser.add_argument("--min-gap", type=float, default=3.0, help="least time between faults, s (default 3)")
    parser.add_argument("--max-gap", type=float, default=9.0, help="most time between faults, s (default 9)")
    parser.add_argument("--recovery-window", type=float, default=30.0, help="s for the store to settle")
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        help="run on a three-master Redis Cluster (AOF on) instead of one redis-server; "
        "the Redis link faults are left out",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"lingua-soak-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = Options(
        seconds=args.seconds if args.seconds is not None else args.minutes * 60,
        seed=seed,
        workdir=workdir,
        workers=args.sessions,
        min_gap_s=args.min_gap,
        max_gap_s=args.max_gap,
        recovery_window_s=args.recovery_window,
        json_path=args.json,
        redis_cluster=args.redis_cluster,
    )
    report, violations = asyncio.run(run(opts))
    print_report(report, violations, workdir)
    if args.json:
        write_json(report, args.json)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
