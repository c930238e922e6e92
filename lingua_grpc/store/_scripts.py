"""The Lua scripts of lua/, each registered once and called by SHA through redis-py's `Script`.

`Script` sends EVALSHA and falls back to loading the script on NOSCRIPT (after a Redis restart or SCRIPT
FLUSH), so callers never deal with script caching.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).resolve().parents[2] / "lua"


class ScriptBook:
    """One `AsyncScript` per file of lua/, as attributes named after the file."""

    register_node: AsyncScript
    heartbeat_node: AsyncScript
    drain_node: AsyncScript
    deregister_node: AsyncScript
    expire_node: AsyncScript
    start_job: AsyncScript
    transition_job: AsyncScript
    reserve_slot: AsyncScript
    release_slot: AsyncScript

    def __init__(self, redis: Redis, lua_dir: Path = LUA_DIR) -> None:
        self._scripts: dict[str, AsyncScript] = {}
        for path in sorted(lua_dir.glob("*.lua")):
            self._scripts[path.stem] = redis.register_script(path.read_text())
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
