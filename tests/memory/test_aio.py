"""AsyncMemory: the SDK's calls as coroutines on worker threads; concurrent use loses nothing, errors keep their
types, and the event loop keeps running while a call works."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from t4dm import AsyncMemory, Memory
from t4dm.errors import InvalidInput, StoreClosed

from .conftest import bag_of_words


def test_concurrent_calls_lose_nothing_and_keep_their_results(tmp_path):
    async def main() -> None:
        async with await AsyncMemory.open(tmp_path / "m", embedder=bag_of_words, workers=3) as m:
            users = [f"user{i}" for i in range(8)]
            added = await asyncio.gather(
                *(m.add(f"{user} adopted a cat named Cat{i}", user_id=user) for i, user in enumerate(users))
            )
            assert [len(r) for r in added] == [1] * 8
            hits = await asyncio.gather(*(m.search("cat", user_id=user, k=3) for user in users))
            for i, (user, found) in enumerate(zip(users, hits, strict=True)):
                assert [h.text for h in found] == [f"{user} adopted a cat named Cat{i}"]
            [cats, dogs] = await m.search_many(["cat", "Cat2"], user_id="user2", k=3)
            assert [h.text for h in cats] == [h.text for h in dogs] == ["user2 adopted a cat named Cat2"]
            id = added[0][0].id
            await m.update(id, text="user0 adopted a dog named Rex")
            assert (await m.get(id)).text == "user0 adopted a dog named Rex"
            assert len(await m.history(id)) == 2
            assert (await m.stats())["memories"] == 8
            await m.delete(id)
            assert await m.get(id) is None
            await m.erase(added[1][0].id)
            assert await m.get(added[1][0].id) is None
            report = await m.consolidate()  # a full compaction: the erased memory's past goes too
            assert report.phases == ("nrem", "rem", "prune")
            assert await m.history(added[1][0].id) == [] and len(await m.history(id)) == 2
            # the SDK's errors, with their fields
            with pytest.raises(InvalidInput) as info:
                await m.add("", user_id="user1")
            assert info.value.field
        with pytest.raises(StoreClosed):
            await m.search("cat", user_id="user1")
        await m.aclose()  # twice is fine

    asyncio.run(main())
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:  # closed cleanly: it opens again
        assert len(memory) == 6  # 8 added, one deleted, one erased


def test_the_event_loop_runs_while_a_call_works(tmp_path):
    """A slow embedder holds its worker thread, not the loop: a ticker keeps ticking meanwhile."""
    started = threading.Event()

    def slow(texts):
        started.set()
        time.sleep(0.3)
        return bag_of_words(texts)

    async def main() -> int:
        m = AsyncMemory(Memory(tmp_path / "m", embedder=slow))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await m.add("Alice moved to Paris", user_id="alice")
        task.cancel()
        await m.aclose()
        return ticks

    assert asyncio.run(main()) >= 10
    assert started.is_set()


def test_bad_construction_is_refused(tmp_path):
    with pytest.raises(InvalidInput) as info:
        AsyncMemory("not a memory")  # type: ignore[arg-type]
    assert info.value.field == "memory"
    with Memory(tmp_path / "m", embedder=bag_of_words) as memory:
        for workers in (0, 2.0, True):
            with pytest.raises(InvalidInput) as info:
                AsyncMemory(memory, workers=workers)  # type: ignore[arg-type]
            assert info.value.field == "workers"


def test_a_read_only_async_memory_refreshes_and_refuses_writes(tmp_path):
    from t4dm.errors import ReadOnlyStore

    async def main() -> None:
        with Memory(tmp_path / "m", embedder=bag_of_words) as writer:
            writer.add("Alice moved to Paris", user_id="alice")
            async with await AsyncMemory.open(tmp_path / "m", embedder=bag_of_words, read_only=True) as m:
                assert not await m.refresh()
                writer.add("Alice visited Lisbon", user_id="alice")
                assert await m.refresh()
                assert [h.text for h in await m.search("Lisbon", user_id="alice", k=1)] == [
                    "Alice visited Lisbon"
                ]
                with pytest.raises(ReadOnlyStore):
                    await m.add("Alice likes tea", user_id="alice")

    asyncio.run(main())
