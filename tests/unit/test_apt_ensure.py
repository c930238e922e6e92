"""The Makefile's Debian install recipe (scripts/apt-ensure.sh), run in isolation.

Stand-ins for `apt-get`, `sudo` and `id` go first on PATH and record how they were called, so the recipe's
shell is exercised on every machine, including those that already have every package (where `make redis`
itself would never reach the install branch). The command names asked for are ones no machine has.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "apt-ensure.sh"
ABSENT = "lingua-test-absent-command"


def _stand_ins(bin_dir: Path, log: Path, uid: int) -> None:
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(
        f'#!/bin/sh\necho "apt-get DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {log}\n'
    )
    (bin_dir / "sudo").write_text(f'#!/bin/sh\necho "sudo $*" >> {log}\nexec "$@"\n')
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def _run(tmp_path: Path, uid: int, *pairs: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    log = tmp_path / "calls.log"
    log.touch()
    _stand_ins(tmp_path / "bin", log, uid)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env.pop("DEBIAN_FRONTEND", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), *pairs], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    return done, log.read_text().splitlines()


def test_as_root_it_updates_and_installs_the_missing_package_noninteractively(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, 0, f"{ABSENT}=redis-server")
    assert done.returncode == 0, done.stderr
    assert calls == [
        "apt-get DEBIAN_FRONTEND=noninteractive update -qq",
        "apt-get DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends redis-server",
    ]


def test_as_another_user_it_goes_through_sudo(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, 1000, f"{ABSENT}=redis-server")
    assert done.returncode == 0, done.stderr
    assert calls == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "apt-get DEBIAN_FRONTEND=noninteractive update -qq",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server",
        "apt-get DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends redis-server",
    ]


def test_installs_only_what_is_missing_and_nothing_when_all_is_there(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, 0, "bash=bash", f"{ABSENT}=espeak-ng", f"{ABSENT}-2=apertium")
    assert done.returncode == 0, done.stderr
    assert calls[-1].endswith("install -y -qq --no-install-recommends espeak-ng apertium")

    (tmp_path / "again").mkdir()
    done, calls = _run(tmp_path / "again", 0, "bash=bash")
    assert done.returncode == 0, done.stderr
    assert calls == []


def test_a_data_package_is_found_by_a_file_it_installs(tmp_path: Path) -> None:
    present = tmp_path / "eng-spa.mode"
    present.touch()
    done, calls = _run(tmp_path, 0, f"{present}=apertium-eng-spa", f"{tmp_path}/absent.mode=apertium-en-ca")
    assert done.returncode == 0, done.stderr
    assert calls[-1].endswith("install -y -qq --no-install-recommends apertium-en-ca")


def test_a_failed_install_fails_the_recipe(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    _stand_ins(tmp_path / "bin", log, 0)
    (tmp_path / "bin" / "apt-get").write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(SCRIPT), f"{ABSENT}=no-such-package"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 100
    assert "Unable to locate package" in done.stderr


def test_a_malformed_argument_is_refused(tmp_path: Path) -> None:
    done, calls = _run(tmp_path, 0, "redis-server")
    assert done.returncode == 2
    assert "expected COMMAND=PACKAGE" in done.stderr
    assert calls == []
