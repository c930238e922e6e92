"""The short seeded soak in `make test`: every fault kind once or more within about 75 s of load on a fleet of
three schedulers, four synthetic nodes and six clients; no invariant may break. A failure prints the report,
its violations with log lines, and the seed to replay it (`python -m tests.soak --seconds 75 --seed N
--sessions 6 --min-gap 2 --max-gap 4`)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.soak._faults import KINDS, schedule
from tests.soak._run import Options, print_report, run

pytestmark = [pytest.mark.fault, pytest.mark.slow]

SEED = 19
SHORT = {"seconds": 75.0, "workers": 6, "min_gap_s": 2.0, "max_gap_s": 4.0}


def test_the_schedule_is_the_seed_s_and_covers_every_fault_kind() -> None:
    first = schedule(SEED, 75.0, 3, 4, 6, 2.0, 4.0)
    assert first == schedule(SEED, 75.0, 3, 4, 6, 2.0, 4.0)
    assert first != schedule(SEED + 1, 75.0, 3, 4, 6, 2.0, 4.0)
    assert {f.kind for f in first} == set(KINDS)
    assert all(a.at_s < b.at_s for a, b in itertools.pairwise(first))


@pytest.mark.timeout(420)
async def test_a_short_soak_breaks_no_invariant(tmp_path: Path) -> None:
    opts = Options(seed=SEED, workdir=tmp_path, **SHORT)  # type: ignore[arg-type]
    report, violations = await run(opts)
    print_report(report, violations, tmp_path)
    assert not report["fault_kinds_missing"], report["fault_kinds_missing"]
    assert not report["injection_failures"], report["injection_failures"]
    assert not violations, "\n".join(f"{v.what}: {v.detail}" for v in violations[:20])
