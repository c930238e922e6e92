"""Translation with Apertium (Debian's `apertium` and its pair packages, GPL; rule-based, small — a pair is a
few MB — and fast on any CPU). The pairs are those installed: `apertium -l` lists its modes (`eng-spa`)."""

from __future__ import annotations

import shutil
import subprocess

import langcodes

from lingua_grpc.registry import LanguagePair, canonical_language
from node_agent.engines._process import run_tool


def _tag(code: str) -> str:
    """An Apertium language code (ISO 639-3, maybe with a variant: eng_US) as a BCP-47 tag."""
    return canonical_language(langcodes.standardize_tag(code.replace("_", "-"), macro=True))


def apertium_modes(binary: str) -> dict[LanguagePair, str]:
    """Pair -> Apertium mode, from `apertium -l` (modes of other kinds, like taggers, are left out)."""
    listing = subprocess.run([binary, "-l"], capture_output=True, text=True, check=True).stdout
    modes: dict[LanguagePair, str] = {}
    for mode in listing.split():
        source, sep, target = mode.partition("-")
        if not sep or "-" in target:
            continue
        try:
            modes.setdefault(LanguagePair(_tag(source), _tag(target)), mode)
        except ValueError:
            continue
    return modes


class ApertiumTranslator:
    name = "apertium"

    def __init__(self, binary: str = "apertium") -> None:
        path = shutil.which(binary)
        if path is None:
            raise ValueError(
                "--mt apertium needs the `apertium` program and a pair package: install Debian's apertium"
                " and apertium-eng-spa (or the pairs you serve)"
            )
        self._binary = path
        self._modes = apertium_modes(path)

    def pairs(self) -> frozenset[LanguagePair]:
        return frozenset(self._modes)

    async def translate(self, text: str, source_language: str, target_language: str) -> str:
        mode = self._modes.get(LanguagePair.of(source_language, target_language))
        if mode is None:
            raise ValueError(f"apertium has no {source_language}-{target_language} pair installed")
        # -u: no marks on unknown words (a client shows the text as it is).
        out = await run_tool(self._binary, "-u", mode, stdin=text.encode())
        return out.decode().strip()
