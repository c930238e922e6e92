"""A wheel built from the repo, installed into a new virtualenv outside the checkout, serves.

This is the path a new operator takes (`pip install .` or a wheel), not the editable install the rest of the
suite runs on: it catches files the package needs but does not carry (the Lua scripts once were one) and
console scripts that import from the checkout. The scheduler, a node agent and the client all run from the
new virtualenv, in a directory with no checkout in it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.install, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"lingua-scheduler listening on (?P<grpc>\S+) ")
LUA_SCRIPTS = sorted(p.name for p in (ROOT / "lingua_grpc" / "store" / "lua").glob("*.lua"))


@dataclass
class Installed:
    bin: Path
    workdir: Path
    env: dict[str, str]


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, ROOT)
    (built,) = dist.glob("lingua_grpc-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--clear", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    workdir = tmp_path_factory.mktemp("elsewhere")
    assert not (workdir / "lingua_grpc").exists()
    # Nothing of the checkout's environment: no PYTHONPATH, and the new venv's bin first on PATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LINGUA_"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return Installed(venv / "bin", workdir, env)


@pytest.fixture
def scheduler(installed: Installed) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [str(installed.bin / "lingua-scheduler"), "--listen", "127.0.0.1:0", "--metrics-port", "0"],
        cwd=installed.workdir,
        env={**installed.env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        match = BANNER.search(line)
        if match is None:
            proc.kill()
            pytest.fail(f"no listening line from the installed scheduler: {line!r}\n{proc.stderr.read()}")
        yield proc, match["grpc"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_the_wheel_carries_every_lua_script(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [s for s in LUA_SCRIPTS if f"lingua_grpc/store/lua/{s}" not in names]
    assert LUA_SCRIPTS
    assert not missing, f"the wheel lacks {missing}"
    assert not any(n.startswith("tests/") for n in names), "the wheel ships the test suite"


def test_an_installed_scheduler_node_and_client_translate_from_outside_the_checkout(
    installed: Installed, scheduler: tuple[subprocess.Popen[str], str]
) -> None:
    proc, address = scheduler
    node = subprocess.Popen(
        [
            str(installed.bin / "lingua-node"),
            "--scheduler",
            address,
            "--node-id",
            "wheel-node",
            "--pairs",
            "en-es",
            "--engine",
            "synthetic",
        ],
        cwd=installed.workdir,
        env=installed.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = installed.bin / "lingua-client"
        deadline = time.monotonic() + 60
        while '"wheel-node"' not in _run(client, "--scheduler", address, "nodes", cwd=installed.workdir):
            assert node.poll() is None, f"node exited: {node.communicate()[1]}"
            assert time.monotonic() < deadline, "the node never registered"
            time.sleep(0.1)  # polling a separate process's registration
        wav = installed.workdir / "demo.wav"
        _run(client, "demo-wav", wav, cwd=installed.workdir)
        out = _run(
            client, "--scheduler", address, "stream", wav, "--src", "en", "--tgt", "es", cwd=installed.workdir
        )
        results = re.findall(r"^#(\d+) ", out, re.MULTILINE)
        assert results == ["0", "1", "2"], out
        assert "skipped" not in out
        assert "node wheel-node" in out
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_the_install_needs_no_file_from_the_checkout(installed: Installed) -> None:
    site = _run(
        installed.bin / "python",
        "-c",
        "import lingua_grpc.store._scripts as s, node_agent; print(s.__file__); print(node_agent.__file__)",
        cwd=installed.workdir,
    )
    for path in site.split():
        assert str(ROOT) not in path and "site-packages" in path, site
    assert shutil.which("lingua-scheduler", path=installed.env["PATH"]) == str(
        installed.bin / "lingua-scheduler"
    )
