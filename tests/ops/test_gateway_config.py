"""The chart's config, read by the real gateway binary: for every variant, the
rendered TOML plus the environment the pod would get (Secret references
resolved) must be accepted by `telegraphy-gateway --print-config`, and the
effective configuration must be what the probes, Services and values expect."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from conftest import VARIANTS, Rendered, clean_env, deep_merge, gateway_bin
from test_chart import container_port, rendered


def print_config(r: Rendered, tmp_path) -> dict:
    cfg_file = tmp_path / "telegraphy.toml"
    cfg_file.write_text(r.config_toml())
    argv = [str(gateway_bin())] + [a if a != "/etc/telegraphy/telegraphy.toml" else str(cfg_file) for a in r.container["args"]]
    proc = subprocess.run(argv + ["--print-config"], env=clean_env(**r.pod_env()), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"the gateway refused the chart's config:\n{proc.stderr}\n--- config ---\n{r.config_toml()}"
    return tomllib.loads(proc.stdout)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_gateway_accepts_the_rendered_config(variant, tmp_path):
    r = rendered(variant)
    effective = print_config(r, tmp_path)
    assert effective["listen"] == f"0.0.0.0:{container_port(r, 'http')}"
    assert effective["admin_listen"] == f"0.0.0.0:{container_port(r, 'admin')}"
    assert effective["dev"] is False
    bus = deep_merge({"type": "memory"}, VARIANTS[variant].get("bus", {}))["type"]
    expected_bus = {"memory": "memory://"}.get(bus) or r.pod_env()["TELEGRAPHY_BUS"]
    assert effective["bus"] == expected_bus
    assert effective["shutdown"] == tomllib.loads(r.config_toml())["shutdown"]
    # API keys are never printed, whatever the source.
    assert "api_keys" not in effective


def test_gateway_rejects_a_config_the_chart_must_never_produce(tmp_path):
    """The check above can fail: a typo'd key in the TOML stops the gateway."""
    r = rendered("default")
    bad = tmp_path / "bad.toml"
    bad.write_text(r.config_toml().replace("uri_rules", "uri_rulez"))
    proc = subprocess.run([str(gateway_bin()), "--config", str(bad), "--print-config"], env=clean_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "uri_rulez" in proc.stderr


def test_no_service_links_reach_the_gateway(tmp_path):
    """`helm install telegraphy ...` names the Service `telegraphy`; with service
    links Kubernetes would give the pod TELEGRAPHY_SERVICE_HOST, TELEGRAPHY_PORT,
    .... The gateway ignores those (they are not settings), and the chart turns
    service links off anyway, so nothing else leaks into the pod's environment."""
    r = Rendered({}, release="telegraphy")
    assert r.one("Service", "telegraphy")["metadata"]["name"] == "telegraphy"
    assert r.deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
    for variant in VARIANTS:
        assert rendered(variant).deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
    # What the kubelet would inject does not stop the gateway...
    cfg_file = tmp_path / "telegraphy.toml"
    cfg_file.write_text(r.config_toml())
    links = {"TELEGRAPHY_SERVICE_HOST": "10.96.0.10", "TELEGRAPHY_SERVICE_PORT": "8080", "TELEGRAPHY_PORT": "tcp://10.96.0.10:8080",
             "TELEGRAPHY_PORT_8080_TCP_ADDR": "10.96.0.10", "TELEGRAPHY_METRICS_SERVICE_PORT_ADMIN": "9090"}
    proc = subprocess.run([str(gateway_bin()), "--config", str(cfg_file), "--print-config"], env=clean_env(**links),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    # ...while a real typo in a TELEGRAPHY_ variable still does.
    proc = subprocess.run([str(gateway_bin()), "--config", str(cfg_file), "--print-config"], env=clean_env(TELEGRAPHY_LISTN="x"),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "listn" in proc.stderr.lower()
