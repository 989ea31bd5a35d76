"""The shared close-code and error-URI vectors (tests/vectors/codes.json):
consistent in themselves, described by docs/protocol.md section 6, and
followed by the JS client the Django app ships (static/telegraphy/codes.js,
run with node). The Python package has no WebSocket client of its own and
maps no WAMP URI or close code (its errors are about publishing): the close
code logic it ships is that JS client."""

import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "codes.json").read_text())
STATIC = ROOT / "python" / "src" / "telegraphy" / "django" / "static" / "telegraphy"
ACTIONS = {"reconnect": True, "do_not_reconnect": False}
CODES = {c["code"]: c for c in VECTORS["close"]["codes"]}
RULE = VECTORS["close"]["rule"]


def reconnects(code: int) -> bool:
    """What the vectors say for `code`: its entry, else its range, else the default."""
    if code in CODES:
        return ACTIONS[CODES[code]["action"]]
    for r in RULE["ranges"]:
        if r["from"] <= code <= r["to"]:
            return ACTIONS[r["action"]]
    return ACTIONS[RULE["otherwise"]]


def test_the_close_codes_are_consistent():
    codes = VECTORS["close"]["codes"]
    assert len(CODES) == len(codes), "a close code is listed twice"
    assert len({c["name"] for c in codes}) == len(codes), "a close code name is used twice"
    for c in codes:
        assert c["action"] in ACTIONS, c
        assert 1000 <= c["code"] <= 4999 and re.fullmatch(r"[A-Z][A-Z_]*", c["name"]), c
        for r in RULE["ranges"]:
            if r["from"] <= c["code"] <= r["to"]:
                assert c["action"] == r["action"], f"{c['code']} contradicts the range {r}"
    assert RULE["otherwise"] in ACTIONS


def test_the_uris_are_consistent():
    uris = VECTORS["uris"]
    assert len({u["uri"] for u in uris}) == len(uris), "a URI is listed twice"
    assert len({u["name"] for u in uris}) == len(uris), "a URI name is used twice"
    for u in uris:
        assert re.fullmatch(r"(wamp|telegraphy)\.(error|close)\.[a-z_]+", u["uri"]), u["uri"]
        assert set(u["messages"]) <= {"ERROR", "ABORT", "GOODBYE"} and u["messages"], u["uri"]
        for code in u["close"]:
            assert code in CODES, f"{u['uri']} is followed by {code}, which close.codes does not list"
        # An error never ends a session with a code that says "reconnect"
        # (the JS client treats an ABORT with an error URI as final).
        if ".error." in u["uri"]:
            assert not any(reconnects(code) for code in u["close"]), f"{u['uri']} is an error but its close code reconnects"


def section_6() -> str:
    text = (ROOT / "docs" / "protocol.md").read_text()
    start = text.index("## 6. Close codes and error URIs")
    return text[start:text.index("\n## 7.", start)]


def test_docs_protocol_section_6_agrees():
    section = section_6()
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Close code")]
    documented = {}
    for row in rows:
        code = re.match(r"(\d{4})\b", row[0])
        if code:
            answer = row[-1].split(",")[0].split(" ")[0]
            assert answer in ("yes", "no"), f"docs/protocol.md: Reconnect? of {row[0]} is `{row[-1]}`"
            documented.setdefault(int(code.group(1)), set()).add(answer == "yes")
    for code, c in CODES.items():
        assert code in documented, f"docs/protocol.md section 6 has no row for close code {code} ({c['name']})"
        assert documented[code] == {reconnects(code)}, f"docs/protocol.md: close code {code} should say {c['action']}"
    assert set(documented) <= set(CODES), f"docs/protocol.md lists close codes the vectors do not: {set(documented) - set(CODES)}"

    rule = section[section.index("**Reconnect rule for clients:**"):]
    rule = rule[:rule.index("\n\n")].split(". ")[0]
    listed = {int(n) for n in re.findall(r"\b(\d{4})\b", rule) if int(n) < 4000}
    assert listed == {code for code in CODES if code < 4000 and reconnects(code)}, f"the reconnect rule lists {sorted(listed)}"

    uris = set(re.findall(r"`((?:wamp|telegraphy)\.(?:error|close)\.[a-z_]+)`", section))
    assert uris == {u["uri"] for u in VECTORS["uris"]}, "docs/protocol.md section 6 and the vectors list other URIs"


def test_the_shipped_js_client_follows_the_vectors(tmp_path):
    if not shutil.which("node"):
        pytest.skip("node is not installed")
    script = tmp_path / "codes.mjs"
    script.write_text(
        f"import {{ CloseCode, shouldReconnect }} from {json.dumps((STATIC / 'codes.js').as_uri())};\n"
        "const reconnect = [];\n"
        "for (let code = 0; code <= 65535; code++) if (shouldReconnect(code)) reconnect.push(code);\n"
        "console.log(JSON.stringify({ names: CloseCode, reconnect }));\n"
    )
    result = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    shipped = json.loads(result.stdout)
    assert shipped["names"] == {c["name"]: c["code"] for c in CODES.values()}
    reconnect = set(shipped["reconnect"])
    wrong = [code for code in range(65536) if (code in reconnect) != reconnects(code)]
    assert not wrong, f"static/telegraphy/codes.js disagrees with tests/vectors/codes.json on close codes {wrong[:20]}"
