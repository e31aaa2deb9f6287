"""The memory SDK for asyncio: :class:`AsyncMemory`, every call of :class:`~t4dm.memory.Memory` as a coroutine.

An agent's event loop should not stop while a text is embedded (milliseconds) or a consolidation runs
(seconds): each call runs on a worker thread of the memory's own pool, as the HTTP server runs the same
calls on its threads (the memory is safe to share between threads: texts are embedded side by side, the
store and index work of each call holds the memory's lock).

    async with await AsyncMemory.open("./memories") as m:
        await m.add("Alice moved to Paris", user_id="alice")
        hits = await m.search("where does Alice live?", user_id="alice")

A call whose task is cancelled still finishes on its thread (a write is never left half-done); its result is
dropped. Errors keep their types (:class:`~t4dm.errors.InvalidInput` naming the field, and so on).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from t4dm.errors import InvalidInput, StoreClosed

from .memory import Memory

__all__ = ["AsyncMemory"]

T = TypeVar("T")


class AsyncMemory:
    """A :class:`~t4dm.memory.Memory` behind coroutines. ``AsyncMemory(memory)`` wraps an open memory;
    ``await AsyncMemory.open(path, **options)`` opens one off the event loop (loading the embedder takes a
    while). ``workers`` threads run the calls (default 4): their embedding runs side by side, the store and index
    work of each takes the memory's lock in turn.
    ``aclose()`` (or ``async with``) closes the memory and the pool."""

    def __init__(self, memory: Memory, *, workers: int = 4) -> None:
        if not isinstance(memory, Memory):
            raise InvalidInput(
                "memory", type(memory).__name__, "expected a t4dm.Memory (or use AsyncMemory.open)"
            )
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidInput("workers", workers, "expected an int >= 1")
        self.memory = memory
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="t4dm-memory")
        self._closed = False

    @classmethod
    async def open(
        cls, path: str | os.PathLike | None = None, *, workers: int = 4, **options: Any
    ) -> AsyncMemory:
        """Open ``Memory(path, **options)`` on a worker thread and wrap it."""
        loop = asyncio.get_running_loop()
        memory = await loop.run_in_executor(None, functools.partial(Memory, path, **options))
        return cls(memory, workers=workers)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise StoreClosed(f"the memory at {self.memory.path!r} was closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # Each call is Memory's, with its arguments, results and errors.
    async def add(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.add <t4dm.memory.Memory.add>`."""
        return await self._run(self.memory.add, *args, **kwargs)

    async def search(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.search <t4dm.memory.Memory.search>`."""
        return await self._run(self.memory.search, *args, **kwargs)

    async def search_many(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.search_many <t4dm.memory.Memory.search_many>`."""
        return await self._run(self.memory.search_many, *args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.get <t4dm.memory.Memory.get>`."""
        return await self._run(self.memory.get, *args, **kwargs)

    async def history(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.history <t4dm.memory.Memory.history>`."""
        return await self._run(self.memory.history, *args, **kwargs)

    async def update(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.update <t4dm.memory.Memory.update>`."""
        return await self._run(self.memory.update, *args, **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        """:meth:`Memory.delete <t4dm.memory.Memory.delete>`."""
        await self._run(self.memory.delete, *args, **kwargs)

    async def erase(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.erase <t4dm.memory.Memory.erase>`."""
        return await self._run(self.memory.erase, *args, **kwargs)

    async def erase_all(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.erase_all <t4dm.memory.Memory.erase_all>`."""
        return await self._run(self.memory.erase_all, *args, **kwargs)

    async def delete_all(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.delete_all <t4dm.memory.Memory.delete_all>`."""
        return await self._run(self.memory.delete_all, *args, **kwargs)

    async def stats(self) -> dict[str, Any]:
        """:meth:`Memory.stats <t4dm.memory.Memory.stats>`."""
        return await self._run(self.memory.stats)

    async def consolidate(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Memory.consolidate <t4dm.memory.Memory.consolidate>` (no progress bar unless asked)."""
        kwargs.setdefault("progress", False)
        return await self._run(self.memory.consolidate, *args, **kwargs)

    async def export_jsonl(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """:meth:`Memory.export_jsonl <t4dm.memory.Memory.export_jsonl>`."""
        return await self._run(self.memory.export_jsonl, *args, **kwargs)

    async def import_jsonl(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """:meth:`Memory.import_jsonl <t4dm.memory.Memory.import_jsonl>`."""
        return await self._run(self.memory.import_jsonl, *args, **kwargs)

    async def refresh(self) -> bool:
        """:meth:`Memory.refresh <t4dm.memory.Memory.refresh>` (a memory opened ``read_only=True``)."""
        return await self._run(self.memory.refresh)

    async def aclose(self) -> None:
        """Refuse new calls, let the calls under way finish, then close the memory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, functools.partial(self._pool.shutdown, wait=True))
        await loop.run_in_executor(None, self.memory.close)

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncMemory({self.memory.path!r})"
