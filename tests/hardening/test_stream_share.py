"""One user's share of the streams (issue 22, finding 9): in a 50-client load two users held all 32
places and 55% of requests got 503. A signed-in user now holds at most `HYBRID_CHAT_STREAMS_PER_USER`
(default: a quarter of the limit, at least 2); over it they wait `HYBRID_CHAT_STREAM_WAIT_S` for one of
their own answers to end, then are refused, while others still get places. Without sign-in everyone is
the one local user, and there is no share.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import local_settings
from tests.hardening.conftest import SERVER_PASSWORD, ScriptedModel, echo
from ui.limits import Busy, StreamSlots

pytestmark = pytest.mark.timeout(120)

LIMIT, PER_USER, WAIT_S = 4, 2, 1.0


async def test_a_user_over_their_share_waits_then_is_refused_while_others_get_places() -> None:
    slots = StreamSlots(LIMIT, 0.2, per_user=PER_USER)
    alice = [await slots.acquire("alice") for _ in range(PER_USER)]
    started = time.perf_counter()
    with pytest.raises(Busy, match="you have 2 answers streaming already"):
        await slots.acquire("alice")
    assert time.perf_counter() - started >= 0.15  # waited for one of hers
    bob = [await slots.acquire("bob") for _ in range(PER_USER)]  # the others' places are still there
    with pytest.raises(Busy, match="busy answering 4 questions"):
        await slots.acquire("carol")
    alice[0].release()
    late = asyncio.create_task(slots.acquire("alice"))  # a place of hers ends while she waits
    await asyncio.sleep(0.05)
    assert late.done()
    for slot in [*alice, *bob, late.result()]:
        slot.release()
    assert slots.in_use == 0 and not slots._users  # nothing kept per user once their answers end


async def test_a_place_taken_without_its_user_counts_once_claimed() -> None:
    """The page takes a place before its turn knows whose it is: the turn claims it for its user."""
    slots = StreamSlots(LIMIT, 0.2, per_user=PER_USER)
    held = [await slots.acquire("alice") for _ in range(PER_USER)]
    unnamed = await slots.acquire()
    with pytest.raises(Busy, match="you have 2 answers streaming already"):
        await unnamed.claim("alice")
    assert slots.in_use == PER_USER  # the refused place was given back
    other = await slots.acquire()
    await other.claim("bob")
    for slot in [*held, other]:
        slot.release()
    assert slots.in_use == 0 and not slots._users


async def test_the_share_defaults_to_a_quarter_and_the_local_user_has_none(tmp_path: Path) -> None:
    from graph.client import ChatClient
    from tests.fakes import ScriptedBackends
    from ui.chat import ChatService

    def service(**overrides: Any) -> ChatService:
        settings = local_settings(tmp_path, **overrides)
        model = ScriptedModel(reply=echo)
        backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
        return ChatService(ChatClient.from_settings(settings, backends=backends))

    assert service().streams.per_user == 8  # of 32
    assert service(max_concurrent_streams=4).streams.per_user == 2  # at least 2
    local = service(max_concurrent_streams=4, streams_per_user=1, stream_wait_s=0.1)
    slots = [await local.stream_slot("local") for _ in range(4)]  # everyone is "local": no share
    for slot in slots:
        slot.release()
    signed_in = service(max_concurrent_streams=4, streams_per_user=1, stream_wait_s=0.1, auth_users="a:b")
    slot = await signed_in.stream_slot("a")
    with pytest.raises(Busy):
        await signed_in.stream_slot("a")
    slot.release()


# --- the load of the issue, scaled down, against `hybrid-chat serve` ------------------------------
@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Room for 4 answers at once, 2 a user; Gemma answers a word every 0.2 s (`echo_slow`)."""
    from tests.support.fault_server import fault_server
    from tests.support.server import running_server

    tmp = tmp_path_factory.mktemp("share")
    with fault_server("echo_slow") as fault:
        env = {
            "HYBRID_CHAT_SQLITE_PATH": str(tmp / "chat.db"),
            "HYBRID_CHAT_GEMMA_BASE_URL": fault.base_url,
            "HYBRID_CHAT_MAX_CONCURRENT_STREAMS": str(LIMIT),
            "HYBRID_CHAT_STREAMS_PER_USER": str(PER_USER),
            "HYBRID_CHAT_STREAM_WAIT_S": str(WAIT_S),
            "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": "0",
            "HYBRID_CHAT_FALLBACK_ENABLED": "false",
            "HYBRID_CHAT_AUTH_USERS": ",".join(f"{u}:{SERVER_PASSWORD}" for u in ("hog", "other")),
        }
        with running_server(env, tmp / "serve.log") as (url, _started, _pid):
            yield {"url": url, "fault": fault}


async def _api_chat(url: str, user: str, message: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=url, auth=(user, SERVER_PASSWORD), timeout=60) as c:
        r = await c.post("/api/chat", json={"message": message, "model": "gemma", "max_tokens": 10})
    return r.status_code, r.text


@pytest.mark.integration
async def test_one_user_cannot_take_every_stream(shared_server: dict[str, Any]) -> None:
    url, fault = shared_server["url"], shared_server["fault"]
    hog = [asyncio.create_task(_api_chat(url, "hog", f"hog {i}")) for i in range(LIMIT + 2)]
    for _ in range(500):  # the hog's answers are streaming
        if fault.in_progress >= PER_USER:
            break
        await asyncio.sleep(0.01)
    other = await asyncio.gather(*(_api_chat(url, "other", f"other {i}") for i in range(PER_USER)))
    assert [status for status, _ in other] == [200] * PER_USER, other  # the hog left places free
    hogged = await asyncio.gather(*hog)
    assert sorted(status for status, _ in hogged) == [200] * PER_USER + [503] * (LIMIT + 2 - PER_USER)
    refusal = next(text for status, text in hogged if status == 503)
    assert "you have 2 answers streaming already" in json.loads(refusal)["detail"]
    assert fault.max_in_progress <= LIMIT
