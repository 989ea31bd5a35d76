"""End-to-end fixtures: the task board served by `manage.py runserver` on a
free port with its own SQLite file, real gateway nodes, and headless
Chromium (Debian's /usr/bin/chromium) driven by Python Playwright.

The test process configures Django with the same settings and database, so
its ORM changes publish events just like the site would."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import urllib.request

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1]
REPO = EXAMPLE.parents[1]
ARTIFACTS = EXAMPLE / "test-artifacts"
sys.path[:0] = [str(EXAMPLE), str(REPO / "python" / "tests")]

from support.gateway import Gateway, clean_env, free_port  # noqa: E402,F401  (python/tests/support)

SECRET = "e2e-secret-0123456789-0123456789-abcdef"
RPC_SECRET = "e2e-rpc-secret-0123456789-0123456789-abcdef"
API_KEY = "e2e-api-key-12345"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Site:
    """`manage.py runserver` for the example, talking to given gateways."""

    def __init__(self, db: pathlib.Path, gateway_url: str, publish_url: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**clean_env(), **site_env(db, gateway_url, publish_url, self.url)}
        self.log = open(ARTIFACTS / f"runserver-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            cwd=EXAMPLE, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            try:
                urllib.request.urlopen(self.url + "/login/", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"runserver did not start; see {self.log.name}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def site_env(db, gateway_url, publish_url, origin):
    return {
        "TASKBOARD_DB": str(db), "TASKBOARD_GATEWAY_URL": gateway_url, "TASKBOARD_PUBLISH_URL": publish_url,
        "TASKBOARD_SECRET": SECRET, "TASKBOARD_API_KEY": API_KEY, "TASKBOARD_ORIGINS": origin,
        "TASKBOARD_RPC_SECRET": RPC_SECRET,
        "TASKBOARD_DEBUG": "true",
    }


def gateway_env(origins):
    return {"TELEGRAPHY_ALLOWED_ORIGINS": ",".join(origins)}


@pytest.fixture(scope="session")
def database(tmp_path_factory):
    """A migrated SQLite file (demo users and tasks); Django in this process uses it."""
    ARTIFACTS.mkdir(exist_ok=True)
    for old in ARTIFACTS.glob("runserver-*.log"):
        old.unlink()
    db = tmp_path_factory.mktemp("taskboard") / "db.sqlite3"
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=EXAMPLE, check=True,
                   env={**clean_env(), "TASKBOARD_DB": str(db)})
    os.environ["DJANGO_SETTINGS_MODULE"] = "taskboard.settings"
    os.environ["TASKBOARD_DB"] = str(db)
    os.environ["TASKBOARD_SECRET"] = SECRET
    os.environ["TASKBOARD_API_KEY"] = API_KEY
    # Playwright's sync API runs an event loop in this thread; the ORM calls
    # here are plain synchronous code all the same.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    import django

    django.setup()
    return db


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set CHROMIUM_BIN)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def publish_through(publish_url: str):
    """Points this process's Django at a gateway's HTTP endpoint."""
    from django.conf import settings
    from django.test.utils import override_settings

    return override_settings(TELEGRAPHY={**settings.TELEGRAPHY, "PUBLISH_URL": publish_url, "API_KEY": API_KEY})


def login(browser, site: Site, username: str):
    """A new browser context signed in as `username`, on the board, connected."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
    page.on("response", lambda r: r.status >= 400 and page.problems.append(f"HTTP {r.status} {r.url}"))
    page.goto(site.url + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", "telegraphy")
    page.click("button[type=submit]")
    page.wait_for_url(site.url + "/")
    wait_connected(page)
    return page


def wait_connected(page, timeout=10_000):
    page.wait_for_function("document.documentElement.dataset.telegraphyState === 'connected'", timeout=timeout)
