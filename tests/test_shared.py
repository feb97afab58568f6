"""What replicas share (ui/shared.py), checked the same way against both implementations: in this process
(`LocalState`) and a real `redis-server` (`RedisState`). Then the store's outage: `redis-server` stopped
and started again, and what each limit does meanwhile."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer, redis_server
from ui.shared import LocalState, RedisState, SharedState, StoreUnavailable, key_part


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis") / "redis.log") as server:
        yield server


@pytest.fixture(params=["local", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    if request.param == "local":
        yield LocalState()
        return
    server: RedisServer = request.getfixturevalue("redis")
    # A generous bound: these check what the store does, not how fast a loaded machine answers.
    store = RedisState(server.url, prefix=f"test-{uuid.uuid4().hex[:8]}:", timeout_s=5)
    yield store
    await store.aclose()


async def test_a_hit_counts_and_is_forgotten_after_its_time(state: SharedState) -> None:
    assert [await state.hit("fails", 0.3) for _ in range(3)] == [1, 2, 3]
    assert 0 < await state.expires_in("fails") <= 0.3
    await state.take_back("fails")
    assert await state.hit("fails", 0.3) == 3
    await asyncio.sleep(0.4)
    assert await state.hit("fails", 0.3) == 1  # forgotten: a fresh count
    await state.forget("fails")
    await state.take_back("fails")  # never below 0
    assert await state.hit("fails", 0.3) == 1


async def test_a_claim_is_won_once_until_it_expires(state: SharedState) -> None:
    assert await state.claim("turn", "replica-a", 0.3)
    assert not await state.claim("turn", "replica-b", 0.3)
    assert await state.get("turn") == "replica-a"
    await state.put("turn", "ended", 0.3)
    assert await state.get("turn") == "ended"
    await asyncio.sleep(0.4)
    assert await state.get("turn") is None and await state.expires_in("turn") == 0
    assert await state.claim("turn", "replica-b", 0.3)


async def test_parallel_claims_have_one_winner(state: SharedState) -> None:
    won = await asyncio.gather(*(state.claim("once", f"r{i}", 5) for i in range(20)))
    assert sum(won) == 1


async def test_an_epoch_only_grows(state: SharedState) -> None:
    assert await state.get("epoch") is None
    assert [await state.bump("epoch") for _ in range(3)] == [1, 2, 3]
    assert await state.get("epoch") == "3" and await state.expires_in("epoch") == 0


async def test_a_token_bucket_lets_the_burst_through_then_refills(state: SharedState) -> None:
    # 3 at once, then one every 0.1 s (600 a minute's pace, to keep the test short).
    taken = [await state.take("bucket", 3, 10) for _ in range(4)]
    assert taken[:3] == [0, 0, 0]
    assert 0.05 < taken[3] <= 0.1
    peek = await state.take("bucket", 3, 10, dry_run=True)
    assert 0 < peek <= 0.1
    await asyncio.sleep(taken[3] + 0.02)
    assert await state.take("bucket", 3, 10) == 0
    assert await state.take("bucket", 3, 10) > 0
    assert await state.take("other", 3, 10) == 0  # buckets are per key


async def test_a_parallel_burst_takes_exactly_the_capacity(state: SharedState) -> None:
    results = await asyncio.gather(*(state.take("burst", 5, 0.01) for _ in range(30)))
    assert sum(1 for r in results if r == 0) == 5


def test_key_parts_stay_short_and_plain() -> None:
    assert key_part("alice") == "alice"
    for odd in ("a b", "x:y", "{tag}", "é" * 10 + "\n", "z" * 500):
        part = key_part(odd)
        assert part.startswith("h-") and len(part) == 34 and part.isascii()
    assert key_part("a b") != key_part("a  b")


async def test_a_stopped_store_is_reported_at_once_and_found_again(tmp_path: Path) -> None:
    """The real server stopped: every call raises `StoreUnavailable` quickly (no hang), and once the
    server is back the same client works again."""
    with redis_server(tmp_path / "redis.log") as server:
        store = RedisState(server.url, timeout_s=0.5)
        try:
            assert await store.hit("k", 10) == 1
            server.stop()
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(5):
                with pytest.raises(StoreUnavailable):
                    await store.hit("k", 10)
            assert loop.time() - started < 2
            with pytest.raises(StoreUnavailable):
                await store.ping()
            # Meanwhile the rate limit lets messages through, counted and logged once a minute.
            from prometheus_client import REGISTRY

            from ui.limits import RateLimiter

            def fallbacks() -> float:
                labels = {"caller": "limits"}
                return REGISTRY.get_sample_value("hybrid_chat_shared_store_fallbacks_total", labels) or 0.0

            before, limiter = fallbacks(), RateLimiter(1, state=store)
            for _ in range(3):
                await limiter.acquire("alice")  # not refused: the limit fails open
            assert fallbacks() == before + 3
            server.start()
            await asyncio.sleep(1.1)  # the store is skipped for a second after a failure
            await store.ping()
            assert await store.hit("k", 10) == 1  # no persistence: a fresh server
        finally:
            await store.aclose()


def test_without_a_url_the_state_is_this_processs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pydantic import SecretStr

    from tests.conftest import local_settings
    from ui.shared import shared_state

    with caplog.at_level(logging.INFO, logger="ui.shared"):
        assert isinstance(shared_state(local_settings(tmp_path)), LocalState)
    assert "HYBRID_CHAT_REDIS_URL unset" in caplog.text
    store = shared_state(local_settings(tmp_path, redis_url=SecretStr("redis://127.0.0.1:1/0")))
    assert isinstance(store, RedisState) and store.shared
