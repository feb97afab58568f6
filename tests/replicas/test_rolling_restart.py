"""Three replicas behind haproxy on one Firestore (tests/replicas/conftest.py): the page stays on one
replica by the balancer's cookie, the APIs go round robin with every answer stored in order, and a
rolling restart of every replica under a steady request rate fails no request and loses no answer."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from gradio_client import Client

from tests.replicas.conftest import DRAIN_S, Cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
]

# Requests a second during the rolling restart (ROLLING_RESTART_RATE=20 pytest -s -k under_steady_load).
RATE = float(os.environ.get("ROLLING_RESTART_RATE", "2"))


@dataclass
class Outcome:
    conversation: str
    message: str
    status: int | None = None
    served_by: str = ""
    kind: str | None = None
    text: str = ""
    error: str | None = None
    started: float = 0.0
    took_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.kind == "answer" and self.error is None


async def send(client: httpx.AsyncClient, conversation: str, message: str) -> Outcome:
    """One `/api/chat` turn through the balancer, read to its `done` event."""
    out = Outcome(conversation, message, started=time.monotonic())
    body = {"message": message, "session_id": conversation, "model": "gemma"}
    try:
        async with client.stream("POST", "/api/chat", json=body) as r:
            out.status, out.served_by = r.status_code, r.headers.get("x-served-by", "")
            if out.status != 200:
                out.error = (await r.aread()).decode(errors="replace")[:200]
                return out
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "done":
                    done = json.loads(line[6:])
                    out.kind, out.text = done["kind"], done["text"]
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        out.took_s = time.monotonic() - out.started
    return out


@dataclass
class Load:
    """`rate` requests a second, spread over conversations that each send one message at a time (so
    each conversation's order is the order sent), until `stop` is set."""

    url: str
    rate: float
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    async def run(self) -> None:
        conversations = max(2, round(self.rate * 3))  # a message every 3 s each, at most
        period = conversations / self.rate
        limits = httpx.Limits(max_connections=conversations * 2)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:

            async def conversation(i: int) -> None:
                await asyncio.sleep(i * period / conversations)  # spread evenly
                n = 0
                while not self.stop.is_set():
                    began = time.monotonic()
                    self.outcomes.append(await send(client, f"load-{i}", f"load-{i} message {n}"))
                    n += 1
                    await asyncio.sleep(max(0.0, period - (time.monotonic() - began)))

            await asyncio.gather(*(conversation(i) for i in range(conversations)))


def assert_every_answer_stored_in_order(cluster: Cluster, outcomes: list[Outcome]) -> None:
    sent: dict[str, list[str]] = {}
    for o in sorted(outcomes, key=lambda o: o.started):
        sent.setdefault(o.conversation, []).append(o.message)
    stored = cluster.messages(set(sent))
    for sid, messages in sent.items():
        rows = stored[sid]
        assert [text for kind, text in rows[0::2]] == messages, sid  # every question, in the order sent
        assert [kind for kind, _ in rows] == ["human", "ai"] * len(messages), sid
        for message, (_, answer) in zip(messages, rows[1::2], strict=True):
            # The echo model answers with the questions in its prompt window joined by "|", this one last.
            assert answer.startswith("echo:") and answer.endswith(message), (sid, message, answer[-80:])


def test_the_page_stays_on_one_replica_and_streams_a_turn_through_the_balancer(
    replica_cluster: Cluster,
) -> None:
    url = replica_cluster.url
    page = httpx.get(url + "/")
    assert (page.status_code == 200 and "<gradio-app" in page.text) or "gradio" in page.text.lower()
    sticky = page.cookies.get("SRV")
    assert sticky in {r.name for r in replica_cluster.replicas}
    # With the balancer's cookie every request of this tab goes to that replica; without it, round robin.
    with_cookie = {
        httpx.get(url + "/config", cookies={"SRV": sticky}).headers["x-served-by"] for _ in range(6)
    }
    assert with_cookie == {sticky}
    without = {httpx.get(url + "/config").headers["x-served-by"] for _ in range(6)}
    assert without == {r.name for r in replica_cluster.replicas}

    client = Client(url, verbose=False, headers={"Cookie": f"SRV={sticky}"})
    job = client.submit("Hello through the balancer", "gemma", "page-1", None, 32, api_name="/chat")
    answer = job.result(timeout=60)
    assert answer == "echo:Hello through the balancer"
    assert len(job.outputs()) >= 1  # streamed
    assert replica_cluster.messages({"page-1"})["page-1"] == [
        ("human", "Hello through the balancer"),
        ("ai", "echo:Hello through the balancer"),
    ]


CONVERSATIONS = 5


def test_the_apis_go_round_robin_and_every_answer_is_stored_in_order(replica_cluster: Cluster) -> None:
    async def turns() -> list[Outcome]:
        out = []
        async with httpx.AsyncClient(base_url=replica_cluster.url, timeout=60) as client:
            for n in range(3):
                # Five conversations: prime to two and three replicas, so each meets several.
                for c in range(CONVERSATIONS):
                    out.append(await send(client, f"rr-{c}", f"rr-{c} message {n}"))
        return out

    outcomes = asyncio.run(turns())
    assert [o for o in outcomes if not o.ok] == []
    by_conversation = {
        c: [o.served_by for o in outcomes if o.conversation == f"rr-{c}"] for c in range(CONVERSATIONS)
    }
    for served in by_conversation.values():  # each conversation's turns landed on more than one replica
        assert len(set(served)) > 1, by_conversation
    assert {o.served_by for o in outcomes} == {r.name for r in replica_cluster.replicas}
    assert_every_answer_stored_in_order(replica_cluster, outcomes)


def test_a_rolling_restart_under_steady_load_fails_no_request(replica_cluster: Cluster) -> None:
    """Each replica in turn: SIGTERM, exit, start again, back in the balancer; requests keep coming at
    RATE a second all along. None fails, every answer is stored in order, and each replica left
    within its drain period plus a few seconds."""
    load = Load(replica_cluster.url, RATE)
    stops: list[float] = []

    def roll() -> None:
        try:
            time.sleep(2)  # the load is steady before the first stop
            for replica in replica_cluster.replicas:
                stops.append(replica_cluster.restart(replica))
            time.sleep(2)
        finally:
            load.stop.set()

    roller = threading.Thread(target=roll)
    began = time.monotonic()
    roller.start()
    asyncio.run(load.run())
    roller.join()
    took = time.monotonic() - began
    failed = [o for o in load.outcomes if not o.ok]
    print(  # the figures for the record (pytest -s)
        f"\nrolling restart of {len(replica_cluster.replicas)} replicas at {RATE:g} requests/s: "
        f"{len(load.outcomes)} requests, {len(failed)} failed "
        f"{dict(Counter(o.status or (o.error or '?').split(':')[0] for o in failed))}, in {took:.0f} s; "
        f"SIGTERM to exit: {', '.join(f'{s:.1f} s' for s in stops)}"
    )
    assert len(stops) == len(replica_cluster.replicas)
    assert failed == [], failed[:5]
    assert len(load.outcomes) >= RATE * took * 0.7  # the rate was kept up (no request waited long)
    assert {o.served_by for o in load.outcomes} == {r.name for r in replica_cluster.replicas}
    assert_every_answer_stored_in_order(replica_cluster, load.outcomes)
    for s in stops:  # the drain period, the answers in flight (short ones), the stores' close
        assert DRAIN_S <= s < DRAIN_S + 15, stops
