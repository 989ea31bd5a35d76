"""`manage.py telegraphy_gateway` runs a gateway that accepts the project's
tokens and API key, and stops on Ctrl-C."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError

from telegraphy import Publisher
from telegraphy.django.management.commands.telegraphy_gateway import find_binary, gateway_environment, listen_address
from telegraphy.django.tokens import mint
from tests.support.gateway import API_KEY, GATEWAY_BIN, SECRET, clean_env, free_port, http_status

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]


def test_listen_address():
    assert listen_address("ws://127.0.0.1:8080/ws") == "127.0.0.1:8080"
    assert listen_address("ws://localhost:9000/ws") == "127.0.0.1:9000"
    assert listen_address("wss://events.example.com/ws") == "events.example.com:443"


def test_environment(settings):
    settings.TELEGRAPHY = {"SECRET": SECRET, "API_KEY": API_KEY, "REALM": "r2", "REDIS_KEY_PREFIX": "p:"}
    env = gateway_environment("redis://h:6379/0", ["http://127.0.0.1:8000"])
    assert env == {
        "TELEGRAPHY_JWT_SECRET": SECRET, "TELEGRAPHY_API_KEYS": API_KEY, "TELEGRAPHY_ALLOW_ANONYMOUS": "false",
        "TELEGRAPHY_REALMS": "r2", "TELEGRAPHY_ALLOWED_ORIGINS": "http://127.0.0.1:8000",
        "TELEGRAPHY_BUS": "redis://h:6379/0", "TELEGRAPHY_REDIS__KEY_PREFIX": "p:",
    }


def test_find_binary(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("TELEGRAPHY_GATEWAY_BIN", GATEWAY_BIN)
    assert find_binary() == GATEWAY_BIN
    with pytest.raises(CommandError, match="does not exist"):
        find_binary(str(tmp_path / "nothing"))
    monkeypatch.delenv("TELEGRAPHY_GATEWAY_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    settings.BASE_DIR = PYTHON_DIR  # the repo's target/ is found from the project folder upwards
    assert pathlib.Path(find_binary()).name == "telegraphy-gateway"
    settings.BASE_DIR = tmp_path
    with pytest.raises(CommandError, match="cargo build -p telegraphy-gateway"):
        find_binary()


@pytest.mark.django_db
def test_the_command_runs_a_gateway_for_the_project(telegraphy_settings, wamp):
    port, admin = free_port(), free_port()
    env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(PYTHON_DIR),
           "TELEGRAPHY_GATEWAY_BIN": GATEWAY_BIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "telegraphy_gateway", "--listen", f"127.0.0.1:{port}",
         "--admin-listen", f"127.0.0.1:{admin}", "--origin", "http://127.0.0.1:8000"],
        cwd=PYTHON_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for _ in range(150):
            try:
                if http_status(f"http://127.0.0.1:{admin}/readyz") == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            proc.kill()
            pytest.fail(f"the gateway did not start:\n{proc.stdout.read()}")
        # The project's tokens and API key work on it; anonymous sessions do not.
        user = get_user_model().objects.create_user("alice")
        client = wamp(f"ws://127.0.0.1:{port}/ws", token=mint(user)["token"])
        client.subscribe("tests.testapp.article")
        pid = Publisher(gateway_url=f"http://127.0.0.1:{port}", api_key=API_KEY).publish(
            "tests.testapp.article", [{"meta": {}, "data": {}}])
        assert client.next_event().publication == pid
        from tests.support.wamp import Aborted

        with pytest.raises(Aborted, match="no_auth_method"):
            wamp(f"ws://127.0.0.1:{port}/ws")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert f"WebSocket   ws://127.0.0.1:{port}/ws" in out
    assert "origins     http://127.0.0.1:8000" in out


def test_the_command_refuses_bad_settings():
    env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings_bad", "PYTHONPATH": str(PYTHON_DIR)}
    result = subprocess.run([sys.executable, "-m", "django", "telegraphy_gateway"], cwd=PYTHON_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "telegraphy.E002" in result.stderr
