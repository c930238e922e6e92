"""The session mailbox: items in order, a waiting reader woken by a put."""

from __future__ import annotations

import asyncio

from lingua_grpc.sessions._mailbox import Mailbox


async def test_items_come_out_in_the_order_they_went_in() -> None:
    box: Mailbox[int] = Mailbox()
    for i in range(5):
        box.put(i)
    assert len(box) == 5
    assert [await box.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(box) == 0


async def test_a_waiting_reader_gets_the_next_put() -> None:
    box: Mailbox[str] = Mailbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)  # the reader is now waiting on an empty mailbox
    assert not reader.done()
    box.put("hello")
    assert await asyncio.wait_for(reader, 1) == "hello"


async def test_a_cancelled_reader_leaves_the_mailbox_usable() -> None:
    box: Mailbox[str] = Mailbox()
    reader = asyncio.create_task(box.get())
    await asyncio.sleep(0)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    box.put("after")
    assert await asyncio.wait_for(box.get(), 1) == "after"
