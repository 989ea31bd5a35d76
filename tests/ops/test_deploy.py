"""deploy/: the Dockerfile (hadolint plus structural checks, since no Docker
engine runs here to build it), the compose stack, its Prometheus and Grafana
provisioning. The gateways' compose settings are checked by the real binary."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import DEPLOY, ROOT, clean_env, gateway_bin, tool

DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"


def hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    if path.exists():
        return str(path)
    return tool("hadolint")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile_instructions():
        if instr == "FROM":
            result.append([])
        if result:
            result[-1].append((instr, args))
    return result


def test_hadolint_passes():
    proc = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    assert subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, timeout=60).returncode != 0


def test_dockerfile_is_multi_stage_non_root_and_small():
    build, runtime = stages()
    assert build[0] == ("FROM", "rust:1-bookworm AS build")
    assert re.fullmatch(r"(gcr\.io/distroless/cc-debian12(:nonroot)?|debian:bookworm-slim)", runtime[0][1]), runtime[0]
    cargo = " ".join(a for i, a in build if i == "RUN" and "cargo build" in a)
    assert "--release" in cargo and "--locked" in cargo
    assert "-p telegraphy-gateway" in cargo and "-p telegraphy-publish" in cargo
    # The runtime stage gets the two binaries and nothing else.
    copies = [a for i, a in runtime if i == "COPY"]
    assert len(copies) == 1 and copies[0].startswith("--from=build ")
    sources = copies[0].split()[1:-1]
    assert sorted(Path(s).name for s in sources) == ["telegraphy-gateway", "telegraphy-publish"]
    user = [a for i, a in runtime if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    exposed = {p for i, a in runtime if i == "EXPOSE" for p in a.split()}
    assert exposed == {"8080", "9090"}
    assert ("ENTRYPOINT", '["/usr/local/bin/telegraphy-gateway"]') in runtime
    # No TELEGRAPHY_* ENV: it would override the Helm chart's config file.
    assert not [a for i, a in runtime if i == "ENV" and "TELEGRAPHY_" in a]
    # The chart's command is the binary's path in the image.
    deployment = (ROOT / "helm/telegraphy/templates/deployment.yaml").read_text()
    assert 'command: ["/usr/local/bin/telegraphy-gateway"]' in deployment
    # The image's default arguments listen on every interface.
    cmd = [a for i, a in runtime if i == "CMD"]
    assert cmd and "0.0.0.0:8080" in cmd[-1] and "0.0.0.0:9090" in cmd[-1]


def test_dockerfile_copies_every_workspace_member():
    """The build context is the repository root; a crate added to the workspace
    but not copied would break `cargo build --locked`."""
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    build = stages()[0]
    copied = {a.split()[0].rstrip("/") for i, a in build if i == "COPY"}
    assert {"Cargo.toml", "Cargo.lock"} <= {p for a in (a for i, a in build if i == "COPY") for p in a.split()[:-1]}
    missing = [m for m in members if m not in copied]
    assert not missing, f"deploy/Dockerfile does not COPY workspace members {missing}"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "**/target/" in ignore or "target" in ignore
    for m in members:
        assert f"!{m}/" in ignore, f"deploy/Dockerfile.dockerignore excludes {m}"
    # Anything a crate includes at compile time lives inside its own folder.
    for m in members:
        for src in (ROOT / m).rglob("*.rs"):
            if "/tests/" in str(src) or "/benches/" in str(src):
                continue
            for inc in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', src.read_text()):
                target = (src.parent / inc).resolve()
                assert str(target).startswith(str((ROOT / m).resolve())), f"{src} includes {inc}, outside {m}/"


# ------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_stack(compose):
    services = compose["services"]
    assert {"redis", "rabbitmq", "gateway-1", "gateway-2", "prometheus", "grafana"} <= set(services)
    assert "example-site" in COMPOSE.read_text(), "placeholder for the example Django site"
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / gw["build"]["context"] / gw["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert gw["environment"]["TELEGRAPHY_BUS"].startswith("redis://redis:")
        assert "redis" in gw["depends_on"]
        assert gw["read_only"] is True and gw["cap_drop"] == ["ALL"]


def test_compose_bind_mounts_exist(compose):
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_compose_gateway_settings_are_accepted_by_the_gateway(compose):
    gw = compose["services"]["gateway-1"]
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in gw["volumes"]}
    args = [str(mounts.get(a, a)) for a in gw["command"]]
    env = {k: str(v) for k, v in gw["environment"].items()}
    proc = subprocess.run([str(gateway_bin()), *args, "--print-config"], env=clean_env(**env),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    effective = tomllib.loads(proc.stdout)
    listen_port = effective["listen"].rsplit(":", 1)[1]
    admin_port = effective["admin_listen"].rsplit(":", 1)[1]
    assert effective["listen"].startswith("0.0.0.0:") and effective["admin_listen"].startswith("0.0.0.0:")
    for name in ("gateway-1", "gateway-2"):
        container_ports = {p.rsplit(":", 1)[1] for p in compose["services"][name]["ports"]}
        assert container_ports == {listen_port, admin_port}
    # Prometheus scrapes both gateways on their admin port, as job "telegraphy".
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "telegraphy")
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"gateway-1:{admin_port}", f"gateway-2:{admin_port}"}
    # docker stop waits longer than the drain.
    grace = int(gw["stop_grace_period"].rstrip("s"))
    assert grace > int(effective["shutdown"]["drain_timeout"].rstrip("s"))


def test_prometheus_config_is_valid_and_loads_the_alerts(compose):
    proc = subprocess.run([tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_grafana_provisioning_points_at_the_dashboard(compose):
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboard_in_container = mounts["./grafana/telegraphy.json"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/telegraphy.yml").read_text())["providers"]
    assert any(dashboard_in_container.startswith(p["options"]["path"].rstrip("/") + "/") for p in providers)
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    prom = next(d for d in datasources if d["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090" and prom.get("isDefault") is True
