"""Signing in with a user name and password (`HYBRID_CHAT_AUTH_USERS`), in Chromium, as a person does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from pydantic import SecretStr

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import serve_app
from tests.browser.conftest import sign_in
from tests.browser.test_chat_ui import INPUT, send, wait_answer
from tests.browser.test_first_minutes import EARLY
from tests.conftest import local_settings

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

GOOGLE_BLUE = "rgb(26, 115, 232)"  # the chat's Send button and this form's button


@pytest.fixture(scope="module")
def signin_url(tmp_path_factory: pytest.TempPathFactory, local_backends: Backends) -> Iterator[str]:
    from ui.server import create_app

    settings = local_settings(
        tmp_path_factory.mktemp("signin"),
        auth_users=SecretStr("alice:right-pw,bob:bobs-pw"),
        login_max_failures=3,
        rate_limit_per_minute=0,
    )
    backends = Backends(settings, **local_backends.shared_standins())
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    with serve_app(app) as url:
        yield url


@pytest.fixture
def visitor(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def test_the_sign_in_form_wears_the_chat_theme(visitor: Any, signin_url: str) -> None:
    visitor.goto(signin_url)
    expect(visitor).to_have_url(re.compile(r"/signin$"))
    expect(visitor.get_by_text("Sign in to hybrid-chat.")).to_be_visible()
    expect(visitor.get_by_label("User name")).to_be_focused()
    button = visitor.get_by_role("button", name="Sign in")
    assert button.evaluate("b => getComputedStyle(b).backgroundColor") == GOOGLE_BLUE
    font = visitor.locator("body").evaluate("b => getComputedStyle(b).fontFamily")
    assert font.startswith("system-ui"), font  # the chat's system fonts, not Gradio's web font
    expect(visitor.get_by_text("Incorrect Credentials")).to_have_count(0)


def test_a_wrong_password_keeps_the_user_name(visitor: Any, signin_url: str) -> None:
    visitor.goto(signin_url)
    sign_in(visitor, "alice", "not-the-password")
    expect(visitor.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(visitor.get_by_label("User name")).to_have_value("alice")
    expect(visitor.get_by_label("Password")).to_have_value("")
    expect(visitor.get_by_label("Password")).to_be_focused()  # type the password again, nothing else
    visitor.get_by_label("Password").fill("right-pw")
    visitor.get_by_label("Password").press("Enter")
    expect(visitor.locator(INPUT)).to_be_enabled()
    expect(visitor.get_by_text("alice")).to_be_visible()  # the header names who is signed in


def test_signing_in_reopens_the_conversation_in_the_address(visitor: Any, signin_url: str) -> None:
    visitor.goto(signin_url)
    sign_in(visitor, "bob", "bobs-pw")
    expect(visitor.locator(INPUT)).to_be_enabled()
    visitor.evaluate(EARLY)
    wait_answer(visitor, send(visitor, "Remember the word quince."))
    # The page's straight request for the first tokens is signed in by the same cookie ...
    assert visitor.evaluate("window.__hcEarlySeen.texts.length") > 0
    # ... and without it is refused before anything runs.
    r = httpx.post(f"{signin_url}/page/turn", json={"turn_id": "0123456789", "message": "hi"}, timeout=10)
    assert r.status_code == 401
    expect(visitor).to_have_url(re.compile(r"\?c=\w+"))
    address = visitor.url
    visitor.context.clear_cookies()  # signed out (as after the server's restart or a logout)
    visitor.goto(address)
    expect(visitor).to_have_url(re.compile(r"/signin\?c=\w+$"))
    sign_in(visitor, "bob", "bobs-pw")
    expect(visitor).to_have_url(address)
    expect(visitor.locator("#hc-chatbot").get_by_test_id("user")).to_have_text(
        "Remember the word quince.", use_inner_text=True
    )


def test_repeated_failures_say_how_long_to_wait(visitor: Any, signin_url: str) -> None:
    visitor.goto(signin_url)
    for _ in range(3):
        sign_in(visitor, "carol", "guess")
        expect(visitor.get_by_role("alert")).to_have_text("Wrong user name or password.")
    sign_in(visitor, "carol", "guess")
    alert = visitor.get_by_role("alert")
    expect(alert).to_have_text(re.compile(r"Too many failed sign-ins. Try again in \d+ (seconds?|minutes)."))
    expect(visitor.get_by_label("User name")).to_have_value("carol")
    assert "{" not in alert.inner_text()  # words, not the JSON Gradio's route answers
