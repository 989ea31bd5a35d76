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
from telegraphy.django.management.commands.telegraphy_gateway import (
    find_binary, gateway_environment, listen_address, passthrough_flags, plan)
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
        start_new_session=True,  # its gateway child is in its group: stop_command can end both
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
        out = stop_command(proc)
    assert proc.returncode == 0, out
    assert f"WebSocket   ws://127.0.0.1:{port}/ws" in out
    assert "origins     http://127.0.0.1:8000" in out


def test_the_command_refuses_bad_settings():
    env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings_bad", "PYTHONPATH": str(PYTHON_DIR)}
    result = subprocess.run([sys.executable, "-m", "django", "telegraphy_gateway"], cwd=PYTHON_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "telegraphy.E002" in result.stderr


# -- the command's values give way to the user's ---------------------------------------------------------------


@pytest.fixture
def django_like(settings):
    settings.TELEGRAPHY = {"SECRET": SECRET, "API_KEY": API_KEY, "GATEWAY_URL": "ws://127.0.0.1:8080/ws",
                           "RPC_SECRET": RPC_SECRET}


RPC_SECRET = "test-rpc-secret-0123456789-0123456789-abcdef"


def test_passthrough_flags():
    assert passthrough_flags(["--admin-listen", "a:1", "--listen=b:2", "-c", "f.toml", "--dev"]) == {
        "--admin-listen": "a:1", "--listen": "b:2", "--config": "f.toml", "--dev": True}
    assert passthrough_flags(["-cgw.toml", "--print-config"]) == {"--config": "gw.toml", "--print-config": True}


def test_the_defaults(django_like):
    p = plan("gw", {}, [], environ={})
    assert p.command == ["gw"]
    assert p.env["TELEGRAPHY_LISTEN"] == "127.0.0.1:8080"
    assert p.env["TELEGRAPHY_ADMIN_LISTEN"].startswith("127.0.0.1:")
    assert p.env["TELEGRAPHY_ADMIN_LISTEN"] != "127.0.0.1:9090"  # Prometheus's port: a free one instead
    assert p.env["TELEGRAPHY_ALLOWED_ORIGINS"] == "http://127.0.0.1:8000,http://localhost:8000"
    assert (p.env["TELEGRAPHY_JWT_SECRET"], p.env["TELEGRAPHY_API_KEYS"]) == (SECRET, API_KEY)
    assert p.env["TELEGRAPHY_ALLOW_ANONYMOUS"] == "false" and p.warnings == []


def test_procedures_configure_the_gateways_http_callees_and_the_user_role(django_like, settings):
    p = plan("gw", {}, [], environ={})
    assert p.env["TELEGRAPHY_RPC_SECRET"] == RPC_SECRET
    http = p.env["TELEGRAPHY_RPC__HTTP"]
    assert '{procedure = "tests.rpc.add", url = "http://127.0.0.1:8000/telegraphy/rpc/"}' in http
    assert "tests.rpc.add" in p.env["TELEGRAPHY_ROLES__USER__CALL"].split(",")
    assert p.env["TELEGRAPHY_ROLES__USER__SUBSCRIBE"] == "*", "the built-in user role, written out, plus call"
    # A [roles.user] of the user's own is left alone.
    p = plan("gw", {}, [], environ={"TELEGRAPHY_ROLES__USER__SUBSCRIBE": "shop.*"})
    assert not any(k.startswith("TELEGRAPHY_ROLES__USER__") for k in p.env)
    # Without RPC_SECRET: nothing to configure, and a warning that says why.
    settings.TELEGRAPHY = {**settings.TELEGRAPHY, "RPC_SECRET": None}
    p = plan("gw", {}, [], environ={})
    assert "TELEGRAPHY_RPC__HTTP" not in p.env
    assert any("RPC_SECRET" in w for w in p.warnings), p.warnings


def test_model_events_with_history_configure_the_gateways_history_topics(django_like, tmp_path):
    p = plan("gw", {}, [], environ={})
    assert p.env["TELEGRAPHY_HISTORY__TOPICS"] == "telegraphy.testapp.note"
    assert p.sources["history_topics"] == "ModelEvents with history = True"
    # The user's own history settings win.
    config = tmp_path / "gw.toml"
    config.write_text('[history]\ntopics = ["telegraphy.*"]\n')
    p = plan("gw", {}, ["--config", str(config)], environ={})
    assert "TELEGRAPHY_HISTORY__TOPICS" not in p.env and p.values["history_topics"] == ["telegraphy.*"]


def test_flags_after_the_double_dash_win(django_like):
    p = plan("gw", {}, ["--admin-listen", "127.0.0.1:7001", "--listen=127.0.0.1:7002", "--realm", "realm1"],
             environ={})
    assert p.command == ["gw", "--admin-listen", "127.0.0.1:7001", "--listen=127.0.0.1:7002", "--realm", "realm1"]
    assert not {"TELEGRAPHY_ADMIN_LISTEN", "TELEGRAPHY_LISTEN", "TELEGRAPHY_REALMS"} & set(p.env)
    assert p.values["admin_listen"] == "127.0.0.1:7001" and p.sources["admin_listen"] == "--admin-listen (after --)"
    assert any("browsers connect to TELEGRAPHY['GATEWAY_URL']" in w for w in p.warnings)


def test_the_config_file_wins(django_like, tmp_path):
    (tmp_path / "gw.toml").write_text(
        'admin_listen = "127.0.0.1:7003"\nallowed_origins = ["https://app.example.com"]\n'
        '[auth]\njwt_secret = "another-secret-0123456789-0123456789"\n')
    p = plan("gw", {}, ["--config", str(tmp_path / "gw.toml")], environ={})
    assert not {"TELEGRAPHY_ADMIN_LISTEN", "TELEGRAPHY_ALLOWED_ORIGINS", "TELEGRAPHY_JWT_SECRET"} & set(p.env)
    assert p.env["TELEGRAPHY_LISTEN"] == "127.0.0.1:8080"  # what the file leaves unset still comes from Django
    assert p.values["allowed_origins"] == ["https://app.example.com"] and p.sources["allowed_origins"] == "gw.toml"
    assert any("is not TELEGRAPHY['SECRET']" in w for w in p.warnings)


def test_the_users_environment_wins(django_like):
    p = plan("gw", {}, [], environ={"TELEGRAPHY_ADMIN_LISTEN": "127.0.0.1:7004", "TELEGRAPHY_JWT_SECRET": SECRET})
    assert "TELEGRAPHY_ADMIN_LISTEN" not in p.env and "TELEGRAPHY_JWT_SECRET" not in p.env
    assert p.sources["admin_listen"] == "$TELEGRAPHY_ADMIN_LISTEN" and p.warnings == []


def test_the_commands_own_options(django_like, tmp_path):
    (tmp_path / "gw.toml").write_text('admin_listen = "127.0.0.1:7003"\n')
    p = plan("gw", {"admin_listen": "127.0.0.1:7005", "origins": ["http://127.0.0.1:3000"]},
             ["-c", str(tmp_path / "gw.toml")], environ={})
    assert p.env["TELEGRAPHY_ADMIN_LISTEN"] == "127.0.0.1:7005"  # an explicit option beats the file
    assert p.env["TELEGRAPHY_ALLOWED_ORIGINS"] == "http://127.0.0.1:3000"
    with pytest.raises(CommandError, match="--admin-listen is given twice"):
        plan("gw", {"admin_listen": "127.0.0.1:7005"}, ["--admin-listen", "127.0.0.1:7006"], environ={})


def test_origins_as_a_string(settings):
    settings.TELEGRAPHY = {"SECRET": SECRET, "API_KEY": API_KEY, "ALLOWED_ORIGINS": "http://a:1, http://b:2"}
    assert plan("gw", {}, [], environ={}).env["TELEGRAPHY_ALLOWED_ORIGINS"] == "http://a:1,http://b:2"


def run_command(args, admin_port):
    """Starts `manage.py telegraphy_gateway ARGS`, waits for its admin port,
    returns (process, banner); the caller stops it."""
    env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(PYTHON_DIR),
           "TELEGRAPHY_GATEWAY_BIN": GATEWAY_BIN}
    proc = subprocess.Popen([sys.executable, "-m", "django", "telegraphy_gateway", *args], cwd=PYTHON_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for _ in range(150):
        try:
            if http_status(f"http://127.0.0.1:{admin_port}/readyz") == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_command(proc)
    pytest.fail(f"the gateway did not start:\n{proc.stdout.read()}")


def stop_command(proc) -> str:
    """Ctrl-C to the command (it stops its gateway and exits); if it does not
    within 20 s, SIGKILL to its whole process group, the gateway included, so
    that no process outlives the test."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        out = ""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of its group (none after a clean exit)
    except ProcessLookupError:
        pass
    if proc.returncode is None:
        out, _ = proc.communicate()
    return out


def test_admin_listen_after_the_double_dash():
    port, admin = free_port(), free_port()
    proc = run_command(["--listen", f"127.0.0.1:{port}", "--", "--admin-listen", f"127.0.0.1:{admin}"], admin)
    out = stop_command(proc)
    assert proc.returncode == 0, out
    assert "cannot be used multiple times" not in out
    assert f"metrics     http://127.0.0.1:{admin}/metrics (from --admin-listen (after --))" in out


def test_a_config_file_after_the_double_dash(tmp_path):
    port, admin = free_port(), free_port()
    (tmp_path / "gw.toml").write_text(f'listen = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n')
    proc = run_command(["--", "--config", str(tmp_path / "gw.toml")], admin)
    try:
        assert http_status(f"http://127.0.0.1:{port}/ws") in (400, 426)  # the public listener is the file's too
    finally:
        out = stop_command(proc)
    assert proc.returncode == 0, out
    assert f"metrics     http://127.0.0.1:{admin}/metrics (from gw.toml)" in out


def test_a_taken_port_is_named():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**clean_env(), "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(PYTHON_DIR),
               "TELEGRAPHY_GATEWAY_BIN": GATEWAY_BIN}
        result = subprocess.run([sys.executable, "-m", "django", "telegraphy_gateway", "--listen", f"127.0.0.1:{port}"],
                                cwd=PYTHON_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"127.0.0.1:{port} (the WebSocket/publish listener, from --listen) is already in use" in result.stderr
