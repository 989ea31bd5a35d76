"""examples/flask and examples/fastapi, run for real: the app mints a token
for its user (telegraphy.tokens.mint) and publishes (telegraphy.publish);
a real gateway delivers the event to the pages in headless Chromium (the
JS client, with the app's token) and to a Python WAMP client, and never to a
user whose token does not list the topic."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.gateway import API_KEY, SECRET, Gateway, clean_env, free_port
from tests.support.wamp import WampError

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


class App:
    """The example app as its README runs it, on a free port."""

    def __init__(self, name: str, gateway: Gateway, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**clean_env(), "TELEGRAPHY_JWT_SECRET": SECRET, "TELEGRAPHY_API_KEY": API_KEY,
               "TELEGRAPHY_GATEWAY_URL": gateway.http_url}
        command = {
            "flask": [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(self.port)],
            "fastapi": [sys.executable, "-m", "uvicorn", "app:app", "--port", str(self.port)],
        }[name]
        self.proc = subprocess.Popen(command, cwd=EXAMPLES / name, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/telegraphy/telegraphy.js", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start:\n{self.proc.stdout.read()}")

    def opener(self, user: str):
        """A urllib opener signed in as `user` (cookies kept)."""
        import http.cookiejar

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener.open(f"{self.url}/login/{user}", timeout=5).read()
        return opener

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(params=["flask", "fastapi"])
def example(request):
    port = free_port()
    gateway = Gateway(env={"TELEGRAPHY_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"})
    try:
        app = App(request.param, gateway, port)
    except Exception:
        gateway.stop()
        raise
    yield app, gateway
    app.stop()
    gateway.stop()


def test_a_python_subscriber_with_the_apps_token(example, wamp):
    app, gateway = example
    alice, bob = app.opener("alice"), app.opener("bob")
    assert app.opener("alice").open(app.url + "/token").status == 200
    reader = wamp(gateway, token=json.load(alice.open(app.url + "/token"))["token"])
    assert reader.welcome["authid"] == "alice"
    reader.subscribe("shop.reports.ready")
    other = wamp(gateway, token=json.load(bob.open(app.url + "/token"))["token"])
    with pytest.raises(WampError, match="not_authorized"):
        other.subscribe("shop.reports.ready")
    other.subscribe("shop.", match="prefix")  # overlaps shop.news: accepted, and checked per event
    published = json.load(alice.open(urllib.request.Request(app.url + "/reports", method="POST")))
    event = reader.next_event()
    assert (event.publication, event.args, event.kwargs) == (published["publication"], ["daily.pdf"], {"size": 12345})
    assert other.no_event(0.5)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(app.url + "/token")
    assert refused.value.code == 403


def test_pages_in_chromium(example, browser):
    app, _ = example
    pages = {}
    for user in ("alice", "bob"):
        context = browser.new_context()
        page = context.new_page()
        page.problems = []
        page.on("pageerror", lambda e, page=page: page.problems.append(str(e)))
        page.goto(f"{app.url}/login/{user}")
        page.wait_for_function("document.documentElement.dataset.state === 'connected'", timeout=10_000)
        page.wait_for_function("document.documentElement.dataset.reports !== undefined", timeout=10_000)
        pages[user] = page
    assert pages["alice"].evaluate("document.documentElement.dataset.reports") == "subscribed"
    assert pages["bob"].evaluate("document.documentElement.dataset.reports") == "wamp.error.not_authorized"
    app.opener("bob").open(urllib.request.Request(app.url + "/reports", method="POST")).read()
    pages["alice"].wait_for_function("document.querySelectorAll('#reports li').length === 1", timeout=5_000)
    assert pages["alice"].inner_text("#reports li") == "daily.pdf (12345 bytes)"
    time.sleep(0.5)
    assert pages["bob"].evaluate("document.querySelectorAll('#reports li').length") == 0
    for page in pages.values():
        assert page.problems == []
        page.context.close()
