"""Mailbox: an unbounded single-consumer queue for a session's events and outputs, light when empty.

`asyncio.Queue` carries three deques and an Event (another deque): about 3.3 KiB per queue before the
first item, and a session had three such structures. At 10,000 open sessions that was a sixth of the
scheduler's memory. A mailbox is a list plus a future that exists only while its one reader waits.
Bounding is done elsewhere (the actor's audio semaphore), so `put` never blocks.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        self._items.append(item)
        self.wake()

    def take(self) -> T:
        """The oldest item; the mailbox must not be empty. Lists stay short here (a few items)."""
        return self._items.pop(0)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Returns once `wake` (or `put`) was called after this call started. One waiter at a time."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def get(self) -> T:
        while not self._items:
            await self.wait()
        return self.take()
