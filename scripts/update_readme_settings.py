"""Rewrites the settings table in README.md from lingua_grpc/config.py (the one place defaults live)."""

from __future__ import annotations

import re
from pathlib import Path

from lingua_grpc.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    table = re.compile(r"^\| flag \| environment \| default \| meaning \|\n(?:^\|.*\|\n)+", re.MULTILINE)
    new, count = table.subn(Settings.markdown_table() + "\n", text)
    if count != 1:
        raise SystemExit("README.md: settings table not found")
    README.write_text(new)


if __name__ == "__main__":
    main()
