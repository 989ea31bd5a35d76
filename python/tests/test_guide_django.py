"""docs/django.md, followed literally in a brand-new project.

`django-admin startproject` in a temporary folder, then the guide's own
snippets, read from docs/django.md (the model, the settings, events.py, the
view, urls, the template, the plain-topic settings and hook, the JS of
section 7, the feed): `manage.py check` passes, `manage.py
telegraphy_gateway` runs with gateway options after `--` as section 4 shows,
`runserver` serves the page, and in headless Chromium a model change and a
plain topic published with section 9's `telegraphy.publish(...)` reach the
page of a user who may read them, and never the page of one who may not.

Ports: the guide's 8080 (gateway), 8000 (runserver) and 9191 (admin) are
replaced by free ones."""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from tests.support.gateway import API_KEY, GATEWAY_BIN, SECRET, clean_env, free_port, http_status

GUIDE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "django.md"


def blocks() -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", GUIDE.read_text(), re.S | re.M)


def block(first_line: str) -> str:
    """The guide's code block whose first line starts with `first_line`."""
    found = [b for b in blocks() if b.startswith(first_line)]
    assert found, f"docs/django.md has no code block starting with {first_line!r}"
    return found[0]


def line(text: str) -> str:
    """The guide's code line that starts with `text`."""
    for b in blocks():
        for candidate in b.splitlines():
            if candidate.strip().startswith(text):
                return candidate.strip()
    raise AssertionError(f"docs/django.md has no code line starting with {text!r}")


class Project:
    def __init__(self, root: pathlib.Path, gateway_port: int, web_port: int):
        self.root = root
        self.web = f"http://127.0.0.1:{web_port}"
        self.env = {**clean_env(), "TELEGRAPHY_API_KEY": API_KEY, "TELEGRAPHY_JWT_SECRET": SECRET,
                    "TELEGRAPHY_GATEWAY_BIN": GATEWAY_BIN, "DJANGO_SETTINGS_MODULE": "mysite.settings",
                    "PYTHONPATH": str(root)}
        self.processes = []

    def manage(self, *args, check=True) -> str:
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=self.root, env=self.env,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout + result.stderr

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code).strip()

    def start(self, args, log_name):
        log = open(self.root / log_name, "wb")
        proc = subprocess.Popen([sys.executable, "manage.py", *args], cwd=self.root, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.processes.append(proc)
        return proc

    def log(self, name) -> str:
        return (self.root / name).read_text(errors="replace")[-6000:]

    def stop(self):
        import signal

        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(check, what, proc, log, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"{what} did not start:\n{log()}")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("guide") / "mysite"
    root.mkdir()
    gateway_port, web_port, admin_port = free_port(), free_port(), free_port()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(root)], check=True)
    p = Project(root, gateway_port, web_port)
    p.manage("startapp", "shop")

    # 1. Install: the app, and the token view's URLs (the guide's blocks elide the rest with "...").
    assert '"telegraphy.django",' in block("# settings.py\nINSTALLED_APPS")
    assert 'path("telegraphy/", include("telegraphy.django.urls"))' in block("# urls.py\nurlpatterns")
    settings = root / "mysite" / "settings.py"
    text = settings.read_text()
    assert "django.template.context_processors.request" in text  # startproject's default
    text += '\nINSTALLED_APPS += ["telegraphy.django", "shop"]\n'
    # 2. Settings, as written (the gateway's port replaced by a free one).
    text += "\n" + block("import os\n\nTELEGRAPHY = {").replace(":8080", f":{gateway_port}")
    # 6. Plain topics.
    text += "\n" + block("# settings.py, below TELEGRAPHY")
    settings.write_text(text)
    urls = root / "mysite" / "urls.py"
    urls.write_text(urls.read_text().replace("from django.urls import path", "from django.urls import include, path")
                    + '\nurlpatterns += [path("telegraphy/", include("telegraphy.django.urls"))]\n'
                    + block("# urls.py\nfrom shop import views"))
    shop = root / "shop"
    # 3. The model and its events; 5. the view and the template; 6. the hook and the feed; 7. the JS.
    (shop / "models.py").write_text(block("# shop/models.py"))
    (shop / "events.py").write_text(block("# shop/events.py"))
    (shop / "views.py").write_text(block("# shop/views.py"))
    (shop / "telegraphy.py").write_text(block("# shop/telegraphy.py"))
    template = block("{# shop/templates/shop/orders.html #}")
    extra = block("{% telegraphy_feed") + block('<script type="module">\n  import { client, config }')
    assert "</body>" in template
    (shop / "templates" / "shop").mkdir(parents=True)
    (shop / "templates" / "shop" / "orders.html").write_text(template.replace("</body>", extra + "</body>"))

    p.manage("makemigrations", "shop", "-v0")
    p.manage("migrate", "-v0")
    assert "System check identified no issues" in p.manage("check")
    p.shell(
        "from django.contrib.auth.models import Group, User; "
        "alice = User.objects.create_user('alice', password='pw'); alice.groups.add(Group.objects.create(name='managers')); "
        "User.objects.create_user('bob', password='pw')"
    )

    # 4. The gateway, with gateway options after `--`, as the guide writes the command.
    command = shlex.split(line("python manage.py telegraphy_gateway --origin"))
    assert command[:3] == ["python", "manage.py", "telegraphy_gateway"] and "--" in command
    args = [a.replace(":8000", f":{web_port}").replace(":9191", f":{admin_port}") for a in command[2:]]
    try:
        gateway = p.start(args, "gateway.log")
        wait_until(lambda: http_status(f"http://127.0.0.1:{admin_port}/readyz") == 200, "the gateway", gateway,
                   lambda: p.log("gateway.log"))
        web = p.start(["runserver", f"127.0.0.1:{web_port}", "--noreload"], "runserver.log")
        wait_until(lambda: http_status(p.web + "/telegraphy/token/") == 403, "runserver", web,
                   lambda: p.log("runserver.log"))
        yield p
    finally:
        p.stop()


def session_for(project: Project, username: str) -> str:
    return project.shell(
        "from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY; "
        "from django.contrib.auth.models import User; from django.contrib.sessions.backends.db import SessionStore; "
        f"u = User.objects.get(username={username!r}); s = SessionStore(); s[SESSION_KEY] = str(u.pk); "
        "s[BACKEND_SESSION_KEY] = 'django.contrib.auth.backends.ModelBackend'; "
        "s[HASH_SESSION_KEY] = u.get_session_auth_hash(); s.create(); print('session', s.session_key)"
    ).split("session ")[-1].strip()


def open_page(browser, project: Project, username: str):
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": session_for(project, username), "url": project.web}])
    page = context.new_page()
    page.problems, page.logs = [], []
    page.on("pageerror", lambda e: page.problems.append(str(e)))
    page.on("console", lambda m: page.logs.append(m.text))
    page.goto(project.web + "/orders/")
    page.wait_for_function("document.documentElement.dataset.telegraphyState === 'connected'", timeout=10_000)
    return page


def test_the_guide_in_a_new_project(project, browser):
    the_banner = project.log("gateway.log")
    assert "cannot be used multiple times" not in the_banner and "(from --admin-listen (after --))" in the_banner
    alice, bob = open_page(browser, project, "alice"), open_page(browser, project, "bob")
    # Both subscriptions of section 7 are confirmed before anything is published.
    for page in (alice, bob):
        page.wait_for_function("window.telegraphy && window.telegraphy.state === 'connected'")
    time.sleep(0.5)

    # Section 3 and 5: a saved Order reaches both tables (authenticated users may see orders).
    project.shell("from django.contrib.auth.models import User; from shop.models import Order; "
                  "Order.objects.create(status='paid', total='19.90', customer=User.objects.get(username='bob'))")
    for page in (alice, bob):
        page.wait_for_selector("table.telegraphy-table tbody tr[data-pk]", timeout=5_000)
        assert "paid" in page.inner_text("table.telegraphy-table tbody tr[data-pk]")

    # Section 9's publish, as written, reaches the feed of a user in TOPICS' audience (group managers)...
    publish = line('telegraphy.publish("myshop.reports.ready"')
    project.shell("import telegraphy; " + publish)
    alice.wait_for_selector("ul.telegraphy-feed li.telegraphy-item", timeout=5_000)
    assert alice.inner_text("ul.telegraphy-feed li.telegraphy-item") == "daily.pdf · size: 12345"
    for _ in range(50):  # section 7's classic script logs it too
        if any(log.startswith("report daily.pdf 12345") for log in alice.logs):
            break
        alice.wait_for_timeout(100)
    assert any(log.startswith("report daily.pdf 12345") for log in alice.logs), alice.logs
    assert alice.problems == []

    # ... and never reaches bob: his feed is denied, his section-7 prefix subscription to `myshop.` got the
    # order but not the report, and subscribing from the page is refused by the gateway.
    time.sleep(0.5)
    assert bob.evaluate("document.querySelectorAll('ul.telegraphy-feed li.telegraphy-item').length") == 0
    assert "telegraphy-denied" in bob.get_attribute("ul.telegraphy-feed", "class")
    assert any("myshop.shop.order" in log for log in bob.logs)
    assert not any("reports" in log for log in bob.logs if "not_authorized" not in log), bob.logs
    refused = bob.evaluate("""async () => {
        try { await window.telegraphy.subscribeTopic("myshop.reports.ready", () => {}); return "subscribed"; }
        catch (err) { return err.uri; }
    }""")
    assert refused == "wamp.error.not_authorized"
    for page in (alice, bob):
        page.context.close()
