"""The asyncio idioms of the daemon, each written once.

A stop is an `asyncio.Event`: whatever waits must also wake when it is set,
and whatever is still running at the shutdown timeout is cancelled and
awaited, so that no task outlives the loop and no error is left unretrieved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A named task (its name shows in asyncio's debug output and in a task dump)."""
    return asyncio.get_running_loop().create_task(coro, name=name)


async def sleep_or_stop(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds, or less when `stop` is set; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))
    except asyncio.TimeoutError:
        return False
    return True


async def first_or_stop(task: asyncio.Future[T], stop: asyncio.Event) -> bool:
    """Wait until `task` ends or `stop` is set; True when the task ended.
    The task is left running either way."""
    if task.done():
        return True
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return task.done()


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait for it to end, whatever it raises."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def end_within(task: asyncio.Future[Any], timeout: float, grace: float | None = None) -> bool:
    """Let `task` finish for up to `timeout` seconds, then cancel it; True when
    it finished by itself. With `grace`, the cancelled task is waited for that
    long at most: what it shields (the write that records how it ended) may
    hang on a store that cannot answer, and a stop must not; it is then left
    to the loop's teardown, after the store's connections are dropped."""
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            if grace is None:
                await cancel_and_wait(task)
            else:
                abandon(task)
                await asyncio.wait({task}, timeout=grace)
            return False
    return True


async def next_or_stop(awaitable: Awaitable[T], stop: asyncio.Event | None) -> tuple[bool, T | None]:
    """Await `awaitable` unless `stop` is set first; (True, result) when it
    finished, (False, None) when stopped (it is then cancelled)."""
    if stop is not None and stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        return False, None
    following = asyncio.ensure_future(awaitable)
    if stop is None or await first_or_stop(following, stop):
        return True, await following
    await cancel_and_wait(following)
    return False, None


def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel `task` without waiting for it: what it awaits may never answer
    (a query on a partitioned database, whose cancel request goes to that
    same server). It ends at the loop's teardown, once the store's
    connections are dropped; its outcome is not asked for."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    task.cancel()


async def within(awaitable: Coroutine[Any, Any, T], timeout: float, name: str) -> T:
    """The result of `awaitable`, or asyncio.TimeoutError after `timeout`
    seconds, when it is abandoned (see `abandon`)."""
    task = spawn(awaitable, name)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        abandon(task)
        raise asyncio.TimeoutError(f"no answer within {timeout:g} s")
    return task.result()


def run_bounded(main: Coroutine[Any, Any, T], teardown_s: float = 5.0) -> T:
    """asyncio.run(main), except that the tasks left at the end (abandoned
    ones: see `abandon`) get `teardown_s` to end once cancelled, not for
    ever: a process told to stop must exit even when a partitioned database
    never answers what they wait for."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=teardown_s))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())  # as asyncio.run
        finally:
            asyncio.set_event_loop(None)
            loop.close()
