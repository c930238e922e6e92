import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "lingua_grpc" / "_proto"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)], check=True)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.py*")}
    committed = {
        p.relative_to(COMMITTED): p.read_text()
        for p in COMMITTED.rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    stale = sorted(
        str(name) for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, (
        f"generated code is stale against proto/ ({', '.join(stale)}): run `make proto` and commit"
    )
