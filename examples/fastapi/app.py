"""FastAPI + Telegraphy: a page that receives the reports its user may read.

    export TELEGRAPHY_JWT_SECRET=... TELEGRAPHY_API_KEY=... TELEGRAPHY_GATEWAY_URL=http://127.0.0.1:8080
    uvicorn app:app --port 8000    # then open /login/alice (may read reports) or /login/bob (may not)

* GET /token mints the signed-in user's token (telegraphy.tokens.mint).
* POST /reports publishes an event (telegraphy.publish). The publisher is
  synchronous: these endpoints are plain `def`, which FastAPI runs in its
  thread pool (in an `async def`, use `await asyncio.to_thread(telegraphy.publish, ...)`).
See docs/python.md.
"""

import json
import os

from fastapi import Cookie, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

import telegraphy
from telegraphy import tokens

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


app = FastAPI()
# The JS client's ES modules, shipped in the telegraphy package.
app.mount("/telegraphy", StaticFiles(directory=telegraphy.JS_DIR), name="telegraphy")


@app.get("/login/{name}")
def login(name: str):
    """A stand-in for your authentication (a plain cookie: never do this for real)."""
    if name not in USERS:
        raise HTTPException(404)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie("user", name, httponly=True, samesite="lax")
    return response


@app.get("/token")
def token(user: str | None = Cookie(None)):
    if user not in USERS:
        return JSONResponse({"error": "not_authenticated"}, status_code=403)
    return {"token": tokens.mint(user, subscribe=topics_for(user), ttl=300)}


@app.post("/reports")
def report_ready():
    return {"publication": telegraphy.publish("shop.reports.ready", "daily.pdf", size=12345)}


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Reports</title></head>
<body>
<h1>Reports for USER</h1>
<ul id="reports"></ul>
<script type="module">
  import { Telegraphy } from "/telegraphy/telegraphy.js";

  const root = document.documentElement;
  const client = new Telegraphy({ url: WS_URL, tokenUrl: "/token" });
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


@app.get("/", response_class=HTMLResponse)
def index(user: str | None = Cookie(None)):
    if user not in USERS:
        return RedirectResponse("/login/alice", status_code=303)
    return PAGE.replace("USER", user).replace("WS_URL", json.dumps(WS_URL))
