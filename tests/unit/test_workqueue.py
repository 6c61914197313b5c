"""The work queue's promises: dedup, one worker per key, requeue of a key added while it is
processed, per-key backoff, delayed adds, shutdown. In-memory asyncio only, no I/O."""

from __future__ import annotations

import asyncio

from controller.workqueue import WorkQueue


async def test_duplicate_adds_collapse() -> None:
    q: WorkQueue[str] = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    assert [await q.get(), await q.get()] == ["a", "b"]


async def test_key_added_while_processing_waits_for_done() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # an event arrives mid-reconcile
    assert len(q) == 0, "a second worker must not get the same key"
    q.done("a")
    assert len(q) == 1
    assert await q.get() == "a"


async def test_rate_limited_backoff_doubles_and_forget_resets() -> None:
    q: WorkQueue[str] = WorkQueue(base_delay=0.001, max_delay=0.004)
    delays = [q.add_rate_limited("a") for _ in range(5)]
    assert delays == [0.001, 0.002, 0.004, 0.004, 0.004]
    q.forget("a")
    assert q.add_rate_limited("a") == 0.001


async def test_add_after_fires_once_and_earliest_wins() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("a", 10.0)
    q.add_after("a", 0.01)
    q.add_after("a", 5.0)  # later than the pending timer: changes nothing
    got = await asyncio.wait_for(q.get(), 2.0)
    assert got == "a"
    q.done("a")
    # A barrier, not a pause: "b" fires after "a" did, so a second firing of "a" at or
    # before its time would be queued ahead of "b".
    q.add_after("b", 0.02)
    assert await asyncio.wait_for(q.get(), 2.0) == "b"
    assert len(q) == 0


async def test_shutdown_releases_waiting_workers() -> None:
    q: WorkQueue[str] = WorkQueue()
    waiters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shutdown()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [None, None, None]
    q.add("late")
    assert len(q) == 0
