"""The task board in headless Chromium: pages follow ORM and admin changes
within a second, each user sees only what they may, the page recovers when
the gateway restarts, and two gateway nodes on Redis work together."""

from __future__ import annotations

import time
import uuid

import pytest

from conftest import (API_KEY, ARTIFACTS, RPC_SECRET, SECRET, Gateway, Site, free_port, gateway_env, login, publish_through,
                      wait_connected)
from support.gateway import REDIS_URL

LIVE = 1000  # ms: "the page updates within a second"


def cell(page, title):
    """The text of the table row whose title is `title` (None if absent)."""
    return page.evaluate(
        """(title) => { const row = [...document.querySelectorAll('table.telegraphy-table tbody tr[data-pk]')]
             .find((tr) => tr.querySelector('td[data-field=title]').textContent === title);
             return row ? row.textContent : null; }""", title)


def wait_row(page, title, *, gone=False, timeout=LIVE):
    started = time.monotonic()
    page.wait_for_function(
        """([title, gone]) => { const found = [...document.querySelectorAll(
             'table.telegraphy-table tbody td[data-field=title]')].some((td) => td.textContent === title);
             return gone ? !found : found; }""", arg=[title, gone], timeout=timeout)
    return time.monotonic() - started


def set_doing_and_wait(page, task):
    """Moves `task` to "doing" and waits until `page` shows its row so."""
    task.status = "doing"
    task.save()
    page.wait_for_function(
        """(title) => [...document.querySelectorAll('table.telegraphy-table tbody tr')]
             .some((tr) => tr.textContent.includes(title) && tr.textContent.includes('Doing'))""",
        arg=task.title, timeout=LIVE)


def rows(page):
    return page.eval_on_selector_all("table.telegraphy-table tbody td[data-field=title]", "tds => tds.map(t => t.textContent)")


def activity(page):
    return page.eval_on_selector_all("#activity li", "lis => lis.map(l => l.textContent)")


@pytest.fixture
def single_node(database):
    site_port = free_port()
    origin = f"http://127.0.0.1:{site_port}"
    gateway = Gateway(env=gateway_env([origin]), secret=SECRET, api_key=API_KEY)
    site = Site(database, gateway.ws_url, gateway.http_url, port=site_port)
    with publish_through(gateway.http_url):
        yield gateway, site
    site.stop()
    gateway.stop()


def test_pages_follow_changes_and_users_see_only_their_own(browser, single_node):
    from board.models import Announcement, Task, Team

    gateway, site = single_node
    alice = login(browser, site, "alice")
    bob = login(browser, site, "bob")
    assert rows(alice) == ["Write the release notes", "Review the gateway metrics"]
    assert rows(bob) == ["Fix the flaky login test", "Water the office plants"]

    # An ORM change reaches alice's table within a second; bob sees nothing of it.
    task = Task.objects.get(title="Write the release notes")
    task.title = "Write the release notes (v2)"
    task.save()
    latency = wait_row(alice, "Write the release notes (v2)")
    print(f"ORM save → alice's page: {latency * 1000:.0f} ms")
    assert "Write the release notes" not in " ".join(rows(bob))

    # A new team task joins the table and the open list; done, it leaves the list.
    core = Team.objects.get(name="Core")
    new = Task.objects.create(title="Plan the demo", team=core, points=5)
    wait_row(alice, "Plan the demo")
    alice.wait_for_function("[...document.querySelectorAll('ul.telegraphy-list li[data-pk]')]"
                            ".some((li) => li.textContent === 'Plan the demo')", timeout=LIVE)
    new.status = "done"
    new.save()
    alice.wait_for_function("![...document.querySelectorAll('ul.telegraphy-list li[data-pk]')]"
                            ".some((li) => li.textContent === 'Plan the demo')", timeout=LIVE)
    assert "Done" in cell(alice, "Plan the demo")
    alice.wait_for_function("document.getElementById('points-done').textContent === '5'", timeout=LIVE)

    # The team's motto (a label widget).
    core.motto = "Live updates, no reloads"
    core.save()
    alice.wait_for_function("[...document.querySelectorAll('.telegraphy-label')]"
                            ".some((s) => s.textContent === 'Live updates, no reloads')", timeout=LIVE)

    # Staff announcements: alice's token lists the topic, bob's does not.
    Announcement.objects.create(text="Demo at four")
    alice.wait_for_function("document.body.textContent.includes('Demo at four')", timeout=LIVE)
    assert bob.locator("#no-announcements").is_visible()
    refused = bob.evaluate("""() => window.telegraphy.subscribeTopic('taskboard.board.announcement', () => {})
        .then(() => 'subscribed', (err) => err.uri)""")
    assert refused == "wamp.error.not_authorized"

    # Bob's own task: bob sees it change, alice does not.
    set_doing_and_wait(bob, Task.objects.get(title="Fix the flaky login test"))

    # The page's own form: posted without a reload, the row comes back as an event.
    bob.fill("#new-task input[name=title]", "Bob's typed task")
    bob.click("#new-task button")
    wait_row(bob, "Bob's typed task", timeout=2 * LIVE)

    # An admin change (alice is a superuser) in another tab.
    admin = alice.context.new_page()
    admin.goto(f"{site.url}/admin/board/task/{task.pk}/change/")
    admin.fill("input[name=title]", "Release notes, edited in the admin")
    admin.click("input[name=_save]")
    admin.wait_for_url(f"{site.url}/admin/board/task/")
    wait_row(alice, "Release notes, edited in the admin")
    admin.close()

    # A delete removes the row.
    Task.objects.filter(pk=new.pk).delete()
    wait_row(alice, "Plan the demo", gone=True)

    # A marker bob may see, published after everything above: one publisher,
    # one order, so once it shows on bob's page anything that leaked to him
    # would already be there.
    set_doing_and_wait(bob, Task.objects.get(title="Water the office plants"))
    assert rows(bob) == ["Fix the flaky login test", "Water the office plants", "Bob's typed task"]
    assert not any("release" in line.lower() or "Plan the demo" in line or "Demo at four" in line
                   for line in activity(bob)), activity(bob)
    assert any("Plan the demo" in line for line in activity(alice))

    alice.wait_for_timeout(300)
    alice.screenshot(path=str(ARTIFACTS / "board-alice.png"), full_page=True)
    bob.screenshot(path=str(ARTIFACTS / "board-bob.png"), full_page=True)
    assert alice.problems == [] and bob.problems == []
    alice.context.close()
    bob.context.close()


@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_the_page_recovers_when_the_gateway_restarts(browser, single_node, how):
    from board.models import Task

    gateway, site = single_node
    page = login(browser, site, "alice")
    task = Task.objects.get(title="Review the gateway metrics")

    if how == "kill":
        gateway.kill()  # the node vanishes: close code 1006
    else:
        gateway.stop()  # drain: GOODBYE system_shutdown, close code 1012
    page.wait_for_function("document.documentElement.dataset.telegraphyState !== 'connected'", timeout=5000)

    task.title = f"Changed while the gateway was down ({how})"
    task.save()  # the publish fails and is logged; the row is saved

    gateway.start()
    wait_connected(page, timeout=20_000)
    # The widgets refresh from the server after a reconnect: the outage change shows.
    wait_row(page, f"Changed while the gateway was down ({how})", timeout=5000)
    # And live updates go on.
    task.title = f"Live again after the restart ({how})"
    task.save()
    latency = wait_row(page, f"Live again after the restart ({how})")
    print(f"after the restart ({how}): {latency * 1000:.0f} ms")
    task.title = "Review the gateway metrics"
    task.save()
    wait_row(page, "Review the gateway metrics")
    page.context.close()


def test_two_gateway_nodes_on_redis(browser, database):
    """Django publishes to node 1; the page is connected to node 2."""
    from board.models import Task

    prefix = f"taskboard-e2e-{uuid.uuid4().hex[:8]}:"
    config = f'bus = "{REDIS_URL}"\n[redis]\nkey_prefix = "{prefix}"\n'
    site_port = free_port()
    origin = [f"http://127.0.0.1:{site_port}"]
    node1 = Gateway(config, env=gateway_env(origin), secret=SECRET, api_key=API_KEY)
    node2 = Gateway(config, env=gateway_env(origin), secret=SECRET, api_key=API_KEY)
    site = Site(database, node2.ws_url, node1.http_url, port=site_port)
    try:
        with publish_through(node1.http_url):
            page = login(browser, site, "alice")
            assert page.evaluate("window.telegraphy.url") == node2.ws_url
            task = Task.objects.get(title="Review the gateway metrics")
            task.title = "Published on node 1, shown by node 2"
            task.save()
            latency = wait_row(page, "Published on node 1, shown by node 2")
            print(f"node 1 → Redis → node 2 → page: {latency * 1000:.0f} ms")
            # The site's own publishes (runserver → node 1) too.
            page.fill("#new-task input[name=title]", "Added through the site")
            page.click("#new-task button")
            wait_row(page, "Added through the site", timeout=2 * LIVE)
            # Node 2 restarts: the page reconnects to it and keeps updating.
            node2.restart()
            wait_connected(page, timeout=20_000)
            task.title = "Still live after node 2 restarted"
            task.save()
            wait_row(page, "Still live after node 2 restarted", timeout=3 * LIVE)
            page.screenshot(path=str(ARTIFACTS / "board-two-nodes.png"), full_page=True)
            assert page.problems == []
            task.title = "Review the gateway metrics"
            task.save()
            Task.objects.filter(title="Added through the site").delete()
            page.context.close()
    finally:
        site.stop()
        node1.stop()
        node2.stop()


def test_a_page_resumes_across_a_node_restart_without_reloading(browser, database):
    """History on Redis: the page's node is killed, a task changes meanwhile
    (published through the other node), the node comes back: the page gets
    the change from the gateway's history, without re-reading itself."""
    from board.models import Task

    prefix = f"taskboard-history-{uuid.uuid4().hex[:8]}:"
    config = f'bus = "{REDIS_URL}"\n[redis]\nkey_prefix = "{prefix}"\n[history]\ntopics = ["*"]\n'
    site_port = free_port()
    origin = [f"http://127.0.0.1:{site_port}"]
    node1 = Gateway(config, env=gateway_env(origin), secret=SECRET, api_key=API_KEY)
    node2 = Gateway(config, env=gateway_env(origin), secret=SECRET, api_key=API_KEY)
    site = Site(database, node2.ws_url, node1.http_url, port=site_port)
    try:
        with publish_through(node1.http_url):
            page = login(browser, site, "alice")
            task = Task.objects.get(title="Review the gateway metrics")
            # An event the page saw: its position is where it resumes from.
            task.title = "Seen before the restart"
            task.save()
            wait_row(page, "Seen before the restart")
            page_loads = []
            page.on("request", lambda r: r.url.rstrip("/") == site.url and r.method == "GET" and page_loads.append(r.url))
            node2.kill()
            page.wait_for_function("document.documentElement.dataset.telegraphyState !== 'connected'", timeout=5000)
            task.title = "Changed while the page's node was down"
            task.save()  # published through node 1, kept in Redis
            node2.start()
            wait_connected(page, timeout=20_000)
            wait_row(page, "Changed while the page's node was down", timeout=5000)
            page.wait_for_timeout(500)  # a re-read would have started by now
            assert page_loads == [], f"the page re-read itself: {page_loads}"
            task.title = "Review the gateway metrics"
            task.save()
            wait_row(page, "Review the gateway metrics", timeout=2 * LIVE)
            # The client retries while its node is down: Chromium logs each
            # refused attempt. Anything else is a problem.
            refused = f"WebSocket connection to '{node2.ws_url}' failed: Error in connection establishment: net::ERR_CONNECTION_REFUSED"
            assert [p for p in page.problems if p != refused] == []
            page.context.close()
    finally:
        site.stop()
        node1.stop()
        node2.stop()


def test_a_page_calls_the_site_through_the_gateway(browser, database):
    """The "Your work" buttons are client.call()s: the gateway signs each
    call and asks Django (board/procedures.py) as the signed-in user.
    Taking a task assigns it in the database, and the page shows it live."""
    from board.models import Task
    from django.contrib.auth.models import User

    site_port = free_port()
    origin = f"http://127.0.0.1:{site_port}"
    config = (
        '[roles.user]\nsubscribe = ["*"]\ncall = ["board.*"]\n'
        f'[rpc]\nsecret = "{RPC_SECRET}"\n'
        f'[[rpc.http]]\nprocedure = "board.*"\nurl = "{origin}/telegraphy/rpc/"\n'
    )
    gateway = Gateway(config, env=gateway_env([origin]), secret=SECRET, api_key=API_KEY)
    site = Site(database, gateway.ws_url, gateway.http_url, port=site_port)
    alice = User.objects.get(username="alice")
    task = Task.objects.create(title="Nobody has this one yet", team=alice.teams.first(), assignee=None)
    try:
        with publish_through(gateway.http_url):
            page = login(browser, site, "alice")
            page.click("#work-refresh")
            page.wait_for_function("document.getElementById('work-summary').textContent.startsWith('You have')", timeout=5000)
            assert "nobody yet" in page.text_content("#work-summary")
            page.click("#work-take")
            page.wait_for_function("document.getElementById('work-summary').textContent.includes('is yours now')", timeout=5000)
            task.refresh_from_db()
            assert task.assignee == alice, "Django assigned the task to the caller the gateway authenticated"
            assert page.text_content("#work-error") == ""
            wait_row(page, "Nobody has this one yet")
            page.screenshot(path=str(ARTIFACTS / "board-your-work.png"), full_page=True)
            assert page.problems == []
            page.context.close()
    finally:
        task.delete()
        site.stop()
        gateway.stop()


def presence_of(page, team_pk):
    """(others' count, their names) in the presence tag of a team."""
    widget = f'.presence[data-team="{team_pk}"] [data-telegraphy-widget=presence]'
    return int(page.get_attribute(widget, "data-count")), page.text_content(f"{widget} .telegraphy-presence-names")


def wait_presence(page, team_pk, names, timeout=5 * LIVE):
    """Waits until the team's presence tag names exactly `names` (others)."""
    widget = f'.presence[data-team="{team_pk}"] [data-telegraphy-widget=presence]'
    started = time.monotonic()
    page.wait_for_function(
        """([sel, want]) => {
            const w = document.querySelector(sel);
            return w && w.dataset.count === String(want.length)
              && w.querySelector('.telegraphy-presence-names').textContent === want.join(', ');
        }""",
        arg=[widget, names], timeout=timeout,
    )
    return time.monotonic() - started


def test_two_users_see_each_other_in_the_presence_tag(browser, database):
    """{% telegraphy_presence "board.Team" team %}: alice and carol (both in
    team Core) see each other; carol closing her tab takes her off alice's
    page; carol back on another gateway node shows up again, and leaves
    alice's page when that node is killed (SIGKILL, no goodbye)."""
    from board.models import Team

    prefix = f"taskboard-presence-{uuid.uuid4().hex[:8]}:"
    config = f'bus = "{REDIS_URL}"\n[redis]\nkey_prefix = "{prefix}"\n'
    ports = [free_port(), free_port()]
    origins = [f"http://127.0.0.1:{p}" for p in ports]
    node1 = Gateway(config, env=gateway_env(origins), secret=SECRET, api_key=API_KEY)
    node2 = Gateway(config, env=gateway_env(origins), secret=SECRET, api_key=API_KEY)
    site1 = Site(database, node1.ws_url, node1.http_url, port=ports[0])
    site2 = Site(database, node2.ws_url, node1.http_url, port=ports[1])
    core = Team.objects.get(name="Core").pk
    try:
        alice = login(browser, site1, "alice")
        assert presence_of(alice, core) == (0, "")
        carol = login(browser, site1, "carol")
        wait_presence(alice, core, ["carol"])
        wait_presence(carol, core, ["alice"])
        alice.screenshot(path=str(ARTIFACTS / "board-presence.png"), full_page=True)
        carol.context.close()
        left = wait_presence(alice, core, [])
        print(f"carol closed her tab: gone from alice's page in {left * 1000:.0f} ms")
        carol = login(browser, site2, "carol")
        came = wait_presence(alice, core, ["carol"])
        print(f"carol on node 2: on alice's page (node 1) in {came * 1000:.0f} ms")
        node2.kill()
        gone = wait_presence(alice, core, [], timeout=15_000)
        print(f"node 2 killed: carol gone from alice's page in {gone * 1000:.0f} ms")
        assert alice.problems == []
        carol.context.close()
        alice.context.close()
    finally:
        site1.stop()
        site2.stop()
        node1.stop()
        node2.stop()
