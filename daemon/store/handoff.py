"""Awaiting SQLite safely: work that must finish even when its caller is cancelled, and the one
hand-off of a whole transaction to aiosqlite's thread.

A COMMIT or ROLLBACK abandoned half-way, or a close cut short, leaves a connection in a state
nobody can reason about; these helpers wait for it and let the cancellation through after.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiosqlite
import anyio

__all__ = ["on_thread", "run_to_end", "shielded"]

T = TypeVar("T")


async def shielded(aw: Awaitable[T]) -> T:
    """Finish `aw` even if we are cancelled meanwhile, then let the cancellation through.

    A COMMIT or ROLLBACK that is abandoned half-way would leave the connection in a state we
    cannot reason about; waiting for it is cheap and bounded by busy_timeout.
    """
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` in its own task to the end whatever happens to the caller, then re-raise a
    cancellation the caller received meanwhile.

    Both kinds are held off: an anyio cancel scope (by the shielded scope, which also stops
    anyio re-delivering the cancellation in a loop) and `Task.cancel()`, which passes through
    anyio's shield and is therefore caught and remembered.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        with contextlib.suppress(BaseException):
            task.result()  # retrieved, so asyncio does not report it as lost
        raise asyncio.CancelledError
    return task.result()


async def on_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(raw_connection, *args)` on `conn`'s own thread, in one hand-off.

    Each aiosqlite call is a hand-off to that thread and back, and the way back needs the GIL,
    which a busy event loop gives up only at its switch interval (5 ms): a transaction made of
    BEGIN, INSERT and COMMIT calls could wait three times. aiosqlite runs every call of its own
    through `Connection._execute`; we use it too (checked at import, below) so a whole
    transaction is one hand-off.
    """
    execute: Callable[..., Awaitable[T]] = conn._execute

    def call() -> T:
        raw: sqlite3.Connection = conn._conn
        return fn(raw, *args)

    return await execute(call)


if not callable(getattr(aiosqlite.Connection, "_execute", None)):  # pragma: no cover
    raise ImportError("this aiosqlite has no Connection._execute: pin aiosqlite<0.23")
