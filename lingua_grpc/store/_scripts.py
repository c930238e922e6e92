"""The Lua scripts of the package's lua/ folder, each registered once and called by SHA through `Script`.

`Script` sends EVALSHA and falls back to loading the script on NOSCRIPT (after a Redis restart or SCRIPT
FLUSH), so callers never deal with script caching. The scripts are package data, read through
`importlib.resources`, so an installed wheel finds them wherever it runs from.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR: Traversable = files(__package__) / "lua"


class ScriptBook:
    """One `AsyncScript` per `.lua` file of the package's lua/ folder, as attributes named after the file."""

    register_node: AsyncScript
    heartbeat_node: AsyncScript
    drain_node: AsyncScript
    deregister_node: AsyncScript
    expire_node: AsyncScript
    start_job: AsyncScript
    transition_job: AsyncScript
    reserve_slot: AsyncScript
    release_slot: AsyncScript

    def __init__(self, redis: Redis, lua_dir: Traversable = LUA_DIR) -> None:
        self._scripts: dict[str, AsyncScript] = {}
        for entry in sorted(lua_dir.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".lua"):
                self._scripts[entry.name.removesuffix(".lua")] = redis.register_script(entry.read_text())
        missing = [name for name in self.__annotations__ if name not in self._scripts]
        if missing:
            raise FileNotFoundError(f"Lua scripts missing from {lua_dir}: {', '.join(missing)}")

    def __getattr__(self, name: str) -> Any:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(name) from None

    async def load(self, redis: Redis) -> None:
        """Loads every script now, so the first calls need no NOSCRIPT round trip."""
        for script in self._scripts.values():
            await redis.script_load(script.script)

    @property
    def names(self) -> list[str]:
        return sorted(self._scripts)
