"""Generate Python messages, gRPC stubs and .pyi typing stubs from proto/ into lingua_grpc/_proto/.

Usage: python scripts/gen_protos.py [OUTPUT_DIR]

protoc writes imports as `from lingua.v1 import ...` (the proto package path); they are rewritten to the
package they are committed in. tests/unit/test_generated_code.py regenerates into a temporary folder and
fails when the committed files differ, so the committed code can never drift from proto/.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "lingua_grpc" / "_proto"
PACKAGE = "lingua_grpc._proto"

_IMPORT_FROM = re.compile(r"^from lingua\.v1 import ", re.MULTILINE)
_MODULE_REF = re.compile(r"\blingua\.v1\.(\w+_pb2(?:_grpc)?)\b")


def _fix_imports(text: str) -> str:
    text = _IMPORT_FROM.sub(f"from {PACKAGE}.lingua.v1 import ", text)
    return _MODULE_REF.sub(rf"{PACKAGE}.lingua.v1.\1", text)


def generate(out_dir: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent  # mypy-protobuf's plugins sit beside the interpreter
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        generated = Path(tmp)
        if out_dir.exists():
            for old in out_dir.rglob("*"):
                if old.is_file() and old.suffix in {".py", ".pyi"}:
                    old.unlink()
        for src in sorted(generated.rglob("*")):
            if not src.is_file():
                continue
            dest = out_dir / src.relative_to(generated)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_fix_imports(src.read_text()))
        for pkg_dir in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
            init = pkg_dir / "__init__.py"
            if not init.exists():
                init.write_text("")
        for cache in out_dir.rglob("__pycache__"):
            shutil.rmtree(cache)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
