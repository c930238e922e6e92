"""The fault drills' fixture: a Drill torn down (every process killed, redis-server stopped) after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault._drill import Drill


@pytest.fixture
def drill(tmp_path: Path) -> Iterator[Drill]:
    d = Drill(tmp_path)
    yield d
    d.close()
