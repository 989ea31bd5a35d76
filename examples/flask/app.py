"""Flask + Telegraphy: a page that receives the reports its user may read.

    export TELEGRAPHY_JWT_SECRET=... TELEGRAPHY_API_KEY=... TELEGRAPHY_GATEWAY_URL=http://127.0.0.1:8080
    flask --app app run            # then open /login/alice (may read reports) or /login/bob (may not)

* GET /token mints the signed-in user's token (telegraphy.tokens.mint) with
  the topics this user may receive; the JS client fetches it before every
  (re)connect.
* POST /reports publishes an event (telegraphy.publish); every page whose
  user may read reports shows it at once; the gateway refuses the others.
See docs/python.md.
"""

import os

from flask import Flask, abort, jsonify, redirect, render_template_string, send_from_directory, session

import telegraphy
from telegraphy import tokens

# Where browsers connect: the WebSocket next to the gateway's HTTP endpoint
# that telegraphy.publish() uses (TELEGRAPHY_GATEWAY_URL).
GATEWAY_URL = os.environ.get("TELEGRAPHY_GATEWAY_URL", "http://127.0.0.1:8080")
WS_URL = GATEWAY_URL.replace("http", "ws", 1) + "/ws"

# A stand-in for your users and your rules.
USERS = {"alice": {"reads_reports": True}, "bob": {"reads_reports": False}}


def topics_for(name: str) -> list[str]:
    """The topic patterns this user's browser may receive."""
    topics = ["shop.news", f"shop.users.{name}.*"]
    if USERS[name]["reads_reports"]:
        topics.append("shop.reports.*")
    return topics


app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "dev-only-not-secret")


@app.get("/login/<name>")
def login(name):
    """A stand-in for your login view."""
    if name not in USERS:
        abort(404)
    session["user"] = name
    return redirect("/")


@app.get("/token")
def token():
    name = session.get("user")
    if name is None:
        return jsonify(error="not_authenticated"), 403
    return jsonify(token=tokens.mint(name, subscribe=topics_for(name), ttl=300))


@app.post("/reports")
def report_ready():
    publication = telegraphy.publish("shop.reports.ready", "daily.pdf", size=12345)
    return jsonify(publication=publication)


@app.get("/telegraphy/<path:name>")
def telegraphy_js(name):
    """The JS client's ES modules, shipped in the telegraphy package."""
    return send_from_directory(telegraphy.JS_DIR, name, mimetype="text/javascript")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Reports</title></head>
<body>
<h1>Reports for {{ user }}</h1>
<ul id="reports"></ul>
<script type="module">
  import { Telegraphy } from "/telegraphy/telegraphy.js";

  const root = document.documentElement;
  const client = new Telegraphy({ url: {{ ws_url|tojson }}, tokenUrl: "/token" });
  client.on("state", (state) => { root.dataset.state = state; });
  client.subscribeTopic("shop.reports.ready", (args, kwargs) => {
    const item = document.createElement("li");
    item.textContent = `${args[0]} (${kwargs.size} bytes)`;
    document.getElementById("reports").append(item);
  }).then(() => { root.dataset.reports = "subscribed"; },
          (err) => { root.dataset.reports = err.uri || err.code; });   // wamp.error.not_authorized for bob
  client.connect();
</script>
</body></html>
"""


@app.get("/")
def index():
    name = session.get("user")
    if name is None:
        return redirect("/login/alice")
    return render_template_string(PAGE, user=name, ws_url=WS_URL)
