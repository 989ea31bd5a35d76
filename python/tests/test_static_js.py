"""The JS client shipped in the Django app is the one in js/src."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATIC = ROOT / "python" / "src" / "telegraphy" / "django" / "static" / "telegraphy"


def test_the_copy_of_the_js_client_is_current():
    if not (ROOT / "js" / "src" / "telegraphy.js").exists():
        pytest.skip("js/src is not in this checkout")
    result = subprocess.run([sys.executable, str(ROOT / "python" / "tools" / "sync_js.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_app_modules_import_what_exists():
    import re

    for name in ("boot.js", "widgets.js"):
        text = (STATIC / name).read_text()
        for target in re.findall(r'from "\./([\w.]+)"', text):
            assert (STATIC / target).exists(), f"{name} imports ./{target}, which is not shipped"
    boot = (STATIC / "boot.js").read_text()
    assert "export class Telegraphy" in (STATIC / "telegraphy.js").read_text()
    assert "getToken" in boot


def test_the_modules_parse(tmp_path):
    """node --check on each module (ES module syntax)."""
    import shutil

    if not shutil.which("node"):
        pytest.skip("node is not installed")
    for path in sorted(STATIC.glob("*.js")):
        copy = tmp_path / (path.stem + ".mjs")
        copy.write_text(path.read_text())
        result = subprocess.run(["node", "--check", str(copy)], capture_output=True, text=True)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
