"""The server's log under requests anyone can send (issue 22, findings 5, 6 and 10), against `hybrid-chat
serve` as deployed (`chat_server`), reading its log file.

5. Nothing a user typed reaches the log, whoever writes it: an event with too few inputs made Gradio
   print "Received inputs: [<the text>]" with its traceback, and one whose value does not fit its
   component quoted the value.
6. A request anyone can repeat writes a line, not a traceback: `queue/data` for a tab the server does not
   know wrote ~130 lines each (99 requests: 12,900 lines).
10. Gradio's `call/v2/<name>` for a name that is not in the API (the page's `stop`) answered 500 with a
    traceback in the log: now 404, and 422 for arguments that do not fit, saying which.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import login, new_id
from tests.hardening.test_tabs import Page
from ui.logs import AsgiErrors, LogLimiter

pytestmark = pytest.mark.timeout(120)


def _lines(server: dict[str, Any]) -> list[str]:
    return server["log"].read_text(errors="replace").splitlines()


async def _settled(server: dict[str, Any]) -> list[str]:
    """The log once the server has written what the requests made it write."""
    await asyncio.sleep(0.5)
    return _lines(server)


@pytest.mark.integration
async def test_an_event_with_the_wrong_inputs_keeps_the_typed_text_out_of_the_log(
    chat_server: dict[str, Any],
) -> None:
    typed = f"TYPED-BY-A-USER-{new_id()}"
    client = await login(chat_server["url"], "typist")
    try:
        page = await Page.open(client)
        assert (await page.join(page.load, [])).status_code == 200
        assert (await page.read())[0] == 200
        before = len(_lines(chat_server))
        # The page's send with one input of its eight (a broken page script, or someone's own).
        r = await page.join(page.send_fn, [{"text": typed, "files": []}], trigger=page.textbox)
        assert r.status_code == 200, r.text
        status, events = await page.read()
        assert status == 200 and "didn't receive enough input values" in events  # the sender is told
        # All eight, one of which does not fit its component: Gradio quotes the value it got.
        box = {"text": typed, "files": []}
        r = await page.join(
            page.send_fn, [box, None, "gemma", typed, 0.95, 4, typed, ""], trigger=page.textbox
        )
        assert r.status_code == 200, r.text
        await page.read()
    finally:
        await client.aclose()
    added = (await _settled(chat_server))[before:]
    assert not [line for line in added if typed in line], "what the user typed is in the log"
    assert any("an event failed: ValueError" in line for line in added), added  # the failure is logged


@pytest.mark.integration
async def test_queue_data_for_unknown_tabs_adds_a_line_not_a_traceback_each(
    chat_server: dict[str, Any],
) -> None:
    client = await login(chat_server["url"], "prober")
    before = len(_lines(chat_server))
    try:
        for _ in range(50):
            try:
                r = await client.get("/gradio_api/queue/data", params={"session_hash": new_id()[:11]})
                await r.aread()
            except httpx.RemoteProtocolError:  # Gradio ends the stream it started by closing it
                pass
    finally:
        await client.aclose()
    added = (await _settled(chat_server))[before:]
    assert len(added) <= 3, added[:20]
    assert not [line for line in added if "Traceback" in line], added[:20]


@pytest.mark.integration
async def test_gradio_call_routes_answer_a_wrong_request_in_words(chat_server: dict[str, Any]) -> None:
    client = await login(chat_server["url"], "prober")
    before = len(_lines(chat_server))
    try:
        for name in ("stop", "send", "no_such_endpoint"):  # the page's events are not in the API
            r = await client.post(f"/gradio_api/call/v2/{name}", json={})
            assert r.status_code == 404, (name, r.status_code, r.text[:200])
            assert f"no API endpoint named '{name}'" in r.json()["detail"]
        r = await client.post("/gradio_api/call/no_such_endpoint", json={"data": []})
        assert r.status_code == 404, r.text[:200]
        r = await client.post("/gradio_api/call/v2/chat", json={"data": ["hi"]})  # v2 takes names
        assert r.status_code == 422 and "`data` is not a valid key-word argument" in r.json()["detail"]
        r = await client.post("/gradio_api/call/v2/chat", json={})
        assert r.status_code == 422 and "required argument: message" in r.json()["detail"]
        r = await client.post("/gradio_api/call/v2/conversations", json={})  # a right one still works
        assert r.status_code == 200 and "event_id" in r.json()
        r = await client.post("/gradio_api/run/chat", json={"data": ["hi"]})  # the event takes more
        assert r.status_code == 422, (r.status_code, r.text[:300])
        assert "input" in r.json()["detail"]
        r = await client.post("/gradio_api/run/no_such_endpoint", json={"data": []})
        assert r.status_code == 404, (r.status_code, r.text[:300])
    finally:
        await client.aclose()
    added = (await _settled(chat_server))[before:]
    assert not [line for line in added if "Traceback" in line or "ERROR" in line], added[:20]


def test_an_error_that_escaped_the_app_is_logged_without_its_text_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn's "Exception in ASGI application" keeps its frames and type, not its text (a KeyError
    quoted the path a user asked for); repeated, one record a minute says how many came."""
    typed = f"typed-path-{new_id()}"
    now = [0.0]
    logger = logging.getLogger("tests.asgi_errors")
    errors = AsgiErrors(LogLimiter(logger, clock=lambda: now[0]), LogLimiter(logger, clock=lambda: now[0]))

    def record() -> logging.LogRecord:
        try:
            {}[f"/{typed}"]
        except KeyError:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None, exc_info
        )

    with caplog.at_level(logging.INFO, logger="tests.asgi_errors"):
        assert not any(errors.filter(record()) for _ in range(20))  # each replaced, or left out
        now[0] += 61
        errors.filter(record())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "Exception in ASGI application: KeyError at tests/hardening/test_server_log.py"
    )
    assert "KeyError (its text is left out of the log)" in lines[0] and "in record" in lines[0]
    assert "(and 19 more in the last 60 s)" in lines[1]
    assert typed not in caplog.text
