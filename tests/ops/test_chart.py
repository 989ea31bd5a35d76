"""The Helm chart, rendered by Helm's own engine (helm_python wraps Helm v4's Go
SDK): lint, Kubernetes schema validation of every manifest, and the properties
that make rollouts safe."""

from __future__ import annotations

import copy
import json
import re
import tomllib

import kubernetes_validate
import pytest
import yaml

from conftest import (ALERTS, CHART, CHART_ALERTS, EXISTING_SECRETS, NAMESPACE, RELEASE, VARIANTS, Rendered,
                      deep_merge, duration_ms, render_raw)

import helm_python

# Kubernetes versions the manifests are validated against: the oldest the
# chart supports (Chart.yaml kubeVersion >=1.25) and a current one.
KUBE_VERSIONS = ["1.25.0", "1.34.0"]
# kubernetes-validate only knows the built-in API kinds. These come from the
# Prometheus Operator's CRDs, whose schemas it does not ship: they are checked
# structurally below (test_servicemonitor_*, test_prometheusrule_*) instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

RENDERED: dict[str, Rendered] = {}


def rendered(variant: str) -> Rendered:
    if variant not in RENDERED:
        RENDERED[variant] = Rendered(VARIANTS[variant])
    return RENDERED[variant]


def render_error(values: dict) -> str:
    with pytest.raises(helm_python.HelmError) as e:
        render_raw(values)
    return str(e.value)


def toml_port(addr: str) -> int:
    host, _, port = addr.rpartition(":")
    return int(port)


def container_port(r: Rendered, name: str) -> int:
    return next(p["containerPort"] for p in r.container["ports"] if p["name"] == name)


# ---------------------------------------------------------------- lint, schemas


@pytest.mark.parametrize("variant", ["default", "everything", "existing-secret"])
def test_helm_lint_is_clean(variant):
    report = helm_python.lint(str(CHART), VARIANTS[variant], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_validates_against_kubernetes_schemas(variant):
    r = rendered(variant)
    checked = 0
    for m in r.manifests:
        if m["kind"] in CRD_KINDS:
            continue
        doc = {k: v for k, v in m.items() if k != "__source__"}
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{m['__source__']} ({m['kind']}) is invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 5
    kinds = {m["kind"] for m in r.manifests}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget" if variant != "no-pdb-no-spread" else "Deployment"} <= kinds


def test_default_render_has_the_expected_objects():
    r = rendered("default")
    kinds = sorted(m["kind"] for m in r.manifests)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "Service", "ServiceAccount"]
    names = {m["metadata"]["name"] for m in r.manifests}
    assert names == {f"{RELEASE}-telegraphy", f"{RELEASE}-telegraphy-metrics"}


# ------------------------------------------------------- probes, ports, config


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_and_services_use_the_ports_the_config_binds(variant):
    r = rendered(variant)
    cfg = tomllib.loads(r.config_toml())
    http_port, admin_port = container_port(r, "http"), container_port(r, "admin")
    # The gateway binds every interface of the pod on exactly the container ports.
    assert cfg["listen"] == f"0.0.0.0:{http_port}"
    assert cfg["admin_listen"] == f"0.0.0.0:{admin_port}"
    assert http_port != admin_port
    c = r.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # Public Service -> http port; metrics Service -> admin port; nothing else.
    public = r.one("Service", f"{RELEASE}-telegraphy")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    metrics = r.one("Service", f"{RELEASE}-telegraphy-metrics")
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["admin"]
    assert metrics["spec"]["type"] == "ClusterIP"
    pod_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    for svc in (public, metrics):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    # The config file the gateway is told to read is the ConfigMap's key, mounted.
    assert c["args"] == ["--config", "/etc/telegraphy/telegraphy.toml"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/telegraphy")
    volume = next(v for v in r.deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    assert "telegraphy.toml" in r.one("ConfigMap")["data"]


def test_custom_ports_flow_everywhere():
    r = rendered("custom-ports")
    cfg = tomllib.loads(r.config_toml())
    assert (cfg["listen"], cfg["admin_listen"]) == ("0.0.0.0:8000", "0.0.0.0:9100")
    assert container_port(r, "http") == 8000 and container_port(r, "admin") == 9100
    assert r.one("Service", f"{RELEASE}-telegraphy")["spec"]["ports"][0]["port"] == 80


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_toml_is_owned_by_the_chart_where_it_must_be(variant):
    r = rendered(variant)
    cfg = tomllib.loads(r.config_toml())
    bus = deep_merge({"type": "memory"}, VARIANTS[variant].get("bus", {}))["type"]
    assert cfg["dev"] is False
    assert "api_keys" not in cfg, "API keys belong in the Secret"
    env_names = [e["name"] for e in r.container.get("env", [])]
    if bus == "memory":
        assert cfg["bus"] == "memory://"
        assert "TELEGRAPHY_BUS" not in env_names
    else:
        # Bus URLs carry passwords: never in the ConfigMap.
        assert "bus" not in cfg
        assert "s3cret" not in r.config_toml()
        assert "TELEGRAPHY_BUS" in env_names
        bus_env = next(e for e in r.container["env"] if e["name"] == "TELEGRAPHY_BUS")
        assert "optional" not in bus_env["valueFrom"]["secretKeyRef"], "a missing bus URL must stop the pod, not fall back to memory://"
    # Every Secret reference resolves (rendered Secret or the existing one).
    r.pod_env()
    # Integers stay integers in the TOML (Helm reads YAML numbers as floats).
    assert not re.search(r"=\s*\d+\.0\s*$", r.config_toml(), re.M)


def test_values_config_reaches_the_toml():
    cfg = tomllib.loads(rendered("everything").config_toml())
    assert cfg["uri_rules"] == "strict"
    assert cfg["limits"] == {"max_connections": 50000, "ping_interval": "20s"}
    assert cfg["shutdown"] == {"drain_delay": "10s", "drain_timeout": "40s"}
    assert cfg["amqp"] == {"exchange": "telegraphy", "prefetch": 1000, "queue_max_length": 100000}
    cfg = tomllib.loads(rendered("redis").config_toml())
    assert cfg["redis"] == {"key_prefix": "telegraphy:", "buffer_bytes": 67108864}


# ------------------------------------------------------------ rollout safety


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_grace_period_outlasts_the_drain(variant):
    r = rendered(variant)
    shutdown = tomllib.loads(r.config_toml())["shutdown"]
    grace_ms = r.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] * 1000
    assert grace_ms > duration_ms(shutdown["drain_timeout"]) > duration_ms(shutdown["drain_delay"])


def test_default_drain_delay_is_about_the_readiness_period():
    r = rendered("default")
    probe = r.container["readinessProbe"]
    not_ready_after_ms = probe["periodSeconds"] * probe["failureThreshold"] * 1000
    delay = duration_ms(tomllib.loads(r.config_toml())["shutdown"]["drain_delay"])
    assert not_ready_after_ms <= delay <= 3 * not_ready_after_ms


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rolling_update_never_removes_a_pod_first(variant):
    strategy = rendered(variant).deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] not in (0, "0", "0%")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pod_runs_non_root_read_only(variant):
    r = rendered(variant)
    pod = r.deployment["spec"]["template"]["spec"]
    c = r.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "add" not in c["securityContext"]["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    res = c["resources"]
    assert {"cpu", "memory"} <= res["requests"].keys() and "memory" in res["limits"]


def test_checksum_annotations_follow_config_and_secret():
    def annotations(values):
        return Rendered(values).deployment["spec"]["template"]["metadata"]["annotations"]

    base = annotations({"apiKeys": [VARIANTS["redis"]["apiKeys"][0]]})
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/config"])
    assert re.fullmatch(r"[0-9a-f]{64}", base["checksum/secret"])
    # A config value changes: the pods roll.
    changed = annotations({"apiKeys": [VARIANTS["redis"]["apiKeys"][0]], "config": {"log": {"level": "debug"}}})
    assert changed["checksum/config"] != base["checksum/config"]
    assert changed["checksum/secret"] == base["checksum/secret"]
    # A key rotation: the pods roll.
    rotated = annotations({"apiKeys": ["another-key-0123456789"]})
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert rotated["checksum/config"] == base["checksum/config"]
    # Something that is not in the pod's config: no needless rollout.
    same = annotations({"apiKeys": [VARIANTS["redis"]["apiKeys"][0]], "service": {"port": 80}})
    assert same == base
    # An existing Secret cannot be checksummed: no annotation pretends to.
    assert "checksum/secret" not in annotations(VARIANTS["existing-secret"])


# ------------------------------------------------------------- secrets and bus


def test_secret_holds_api_keys_and_bus_url():
    r = rendered("redis")
    assert r.secret_data(f"{RELEASE}-telegraphy") == {"TELEGRAPHY_API_KEYS": VARIANTS["redis"]["apiKeys"][0], "TELEGRAPHY_BUS": VARIANTS["redis"]["bus"]["redis"]["url"]}
    assert r.pod_env() == {"TELEGRAPHY_API_KEYS": VARIANTS["redis"]["apiKeys"][0], "TELEGRAPHY_BUS": VARIANTS["redis"]["bus"]["redis"]["url"]}
    r = rendered("memory-api-keys")
    assert r.pod_env() == {"TELEGRAPHY_API_KEYS": ",".join(VARIANTS["memory-api-keys"]["apiKeys"])}


def test_existing_secret_is_used_and_no_secret_rendered():
    r = rendered("existing-secret")
    assert r.all("Secret") == []
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in r.container["env"]}
    assert refs["TELEGRAPHY_BUS"] == {"name": "telegraphy-credentials", "key": "TELEGRAPHY_BUS"}
    assert refs["TELEGRAPHY_API_KEYS"]["name"] == "telegraphy-credentials" and refs["TELEGRAPHY_API_KEYS"]["optional"] is True
    assert r.pod_env() == EXISTING_SECRETS["telegraphy-credentials"]


def test_bus_tls_mounts_the_secret_and_points_the_gateway_at_its_files():
    r = Rendered({"bus": {"type": "redis", "redis": {"url": "rediss://user:pw@redis.internal:6380/0"},
                          "tls": {"secretName": "redis-tls", "ca": "ca.crt", "cert": "tls.crt", "key": "tls.key"}}})
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert {"name": "bus-tls", "secret": {"secretName": "redis-tls"}} in pod["volumes"]
    assert {"name": "bus-tls", "mountPath": "/etc/telegraphy-bus-tls", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    config = tomllib.loads(r.one("ConfigMap")["data"]["telegraphy.toml"])
    assert config["bus_tls"] == {"ca_file": "/etc/telegraphy-bus-tls/ca.crt", "cert_file": "/etc/telegraphy-bus-tls/tls.crt",
                                 "key_file": "/etc/telegraphy-bus-tls/tls.key"}
    # Without a Secret: no files, the system's CAs; a plain URL with TLS files is refused.
    plain = Rendered({"bus": {"type": "amqp", "amqp": {"url": "amqps://u:p@mq.internal:5671/%2f"}}})
    assert "bus_tls" not in tomllib.loads(plain.one("ConfigMap")["data"]["telegraphy.toml"])
    assert all(v["name"] != "bus-tls" for v in plain.one("Deployment")["spec"]["template"]["spec"]["volumes"])
    msg = render_error({"bus": {"type": "redis", "redis": {"url": "redis://redis:6379/0"}, "tls": {"secretName": "x"}}})
    assert "not a rediss:// URL" in msg


@pytest.mark.parametrize("url", ["redis+cluster://u:pw@r1:6379,r2:6379,r3:6379", "rediss+sentinel://s1:26379,s2:26379/mymaster/0"])
def test_redis_cluster_and_sentinel_urls_are_accepted(url):
    tls = {"secretName": "redis-tls"} if url.startswith("rediss") else {}
    r = Rendered({"replicaCount": 3, "bus": {"type": "redis", "redis": {"url": url}, "tls": tls}})
    assert r.secret_data(f"{RELEASE}-telegraphy")["TELEGRAPHY_BUS"] == url
    # Another form is refused by the values schema, before the templates.
    msg = render_error({"bus": {"type": "redis", "redis": {"url": "redis+kafka://r1:6379"}}})
    assert "redis+kafka" in msg and "cluster|" in msg
    msg = render_error({"bus": {"type": "redis", "redis": {"url": "redis+cluster://r1:6379"}, "tls": {"secretName": "x"}}})
    assert "not a rediss:// URL" in msg


def test_memory_bus_refuses_several_replicas():
    msg = render_error({"replicaCount": 2})
    assert "bus.type=memory is a single-node bus" in msg and "replicaCount must be 1" in msg


def test_memory_bus_refuses_autoscaling():
    msg = render_error({"autoscaling": {"enabled": True}})
    assert "bus.type=memory is a single-node bus" in msg and "autoscaling" in msg


@pytest.mark.parametrize("bus", ["redis", "amqp"])
def test_cluster_bus_needs_a_url(bus):
    msg = render_error({"bus": {"type": bus}})
    assert f"bus.type={bus} needs bus.{bus}.url" in msg


# ------------------------------------------------------ grace period enforcement


@pytest.mark.parametrize("grace, timeout, ok", [
    (30, "25s", True),
    (25, "25s", False),       # equal is not longer
    (20, "25s", False),
    (91, "1m 30s", True),     # multi-part durations are parsed
    (90, "1m30s", False),
    (61, "60000ms", True),
    (60, "1m", False),
])
def test_grace_period_must_exceed_drain_timeout(grace, timeout, ok):
    values = {"terminationGracePeriodSeconds": grace, "config": {"shutdown": {"drain_delay": "5s", "drain_timeout": timeout}}}
    if ok:
        render_raw(values)
    else:
        msg = render_error(values)
        assert "terminationGracePeriodSeconds" in msg and "must be longer than config.shutdown.drain_timeout" in msg


def test_drain_delay_must_be_shorter_than_drain_timeout():
    msg = render_error({"config": {"shutdown": {"drain_delay": "25s", "drain_timeout": "25s"}}})
    assert "drain_timeout (25s) must be longer than config.shutdown.drain_delay" in msg


# --------------------------------------------------------------------- schema


@pytest.mark.parametrize("values, where", [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"bus": {"type": "kafka"}}, "/bus/type"),
    ({"bus": {"type": "redis", "redis": {"url": "https://redis:6379/0"}}}, "/bus/redis/url"),
    ({"config": {"bus_tls": {"ca_file": "/x"}}}, "/config"),
    ({"config": {"listen": "0.0.0.0:1"}}, "/config"),
    ({"config": {"api_keys": ["0123456789"]}}, "/config"),
    ({"config": {"shutdown": {"drain_delay": "5", "drain_timeout": "25s"}}}, "/config/shutdown/drain_delay"),
    ({"config": {"limits": {"max_message_size": 512}}}, "/config/limits/max_message_size"),
    ({"apiKeys": ["short"]}, "/apiKeys/0"),
    ({"containerPorts": {"http": 70000, "admin": 9090}}, "/containerPorts/http"),
    ({"updateStrategy": {"maxSurge": 0}}, "/updateStrategy/maxSurge"),
    ({"replicas": 3}, "replicas"),  # a typo of replicaCount
])
def test_schema_rejects_bad_values(values, where):
    with pytest.raises(helm_python.HelmValuesError) as e:
        render_raw(values)
    assert where in str(e.value), str(e.value)


def test_schema_accepts_the_chart_defaults_and_gateway_keys_it_does_not_list():
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(chart_values) <= set(schema["properties"])
    # Settings added to the gateway later pass through to its config file (the
    # gateway itself refuses keys it does not know).
    r = Rendered({"config": {"allowed_origins": ["https://app.example.com"], "limits": {"max_connections_per_ip": 100}}})
    cfg = tomllib.loads(r.config_toml())
    assert cfg["allowed_origins"] == ["https://app.example.com"] and cfg["limits"]["max_connections_per_ip"] == 100


# ------------------------------------------------------------- autoscaling, PDB


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hpa_only_when_enabled(variant):
    r = rendered(variant)
    hpa = r.maybe("HorizontalPodAutoscaler")
    enabled = VARIANTS[variant].get("autoscaling", {}).get("enabled", False)
    assert (hpa is not None) == enabled
    if not enabled:
        assert r.deployment["spec"]["replicas"] == VARIANTS[variant].get("replicaCount", 1)
        return
    assert "replicas" not in r.deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": r.deployment["metadata"]["name"]}
    metrics = hpa["spec"]["metrics"]
    assert metrics[0]["resource"]["name"] == "cpu"
    custom = [m for m in metrics if m["type"] == "Pods"]
    if VARIANTS[variant]["autoscaling"].get("connections", {}).get("enabled"):
        assert len(custom) == 1
        assert custom[0]["pods"]["metric"]["name"] == "telegraphy_connections"
        assert custom[0]["pods"]["target"]["type"] == "AverageValue"
    else:
        assert custom == []
    # Scale-down drains pods: it must be slower than scale-up.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60


def test_pdb_selects_the_pods():
    r = rendered("redis")
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= r.deployment["spec"]["template"]["metadata"]["labels"].items()
    assert rendered("no-pdb-no-spread").maybe("PodDisruptionBudget") is None


# ------------------------------------------- ServiceMonitor, PrometheusRule, Ingress


def test_servicemonitor_scrapes_the_metrics_service():
    r = rendered("servicemonitor")
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = r.one("Service", f"{RELEASE}-telegraphy-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # ...and only it: the public Service must not match.
    public = r.one("Service", f"{RELEASE}-telegraphy")
    assert not sm["spec"]["selector"]["matchLabels"].items() <= public["metadata"]["labels"].items()
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] in [p["name"] for p in svc["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "telegraphy"} in endpoint["relabelings"]
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    assert rendered("default").maybe("ServiceMonitor") is None


def test_prometheusrule_is_the_shared_alert_file():
    assert ALERTS.read_bytes() == CHART_ALERTS.read_bytes(), "helm/telegraphy/files/alerts.yml must be a copy of deploy/prometheus/alerts.yml"
    rule = rendered("prometheusrule").one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    # Default memory limit (1Gi): the rules are exactly the file's.
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    assert rendered("default").maybe("PrometheusRule") is None


def test_prometheusrule_memory_threshold_follows_the_memory_limit():
    rule = rendered("everything").one("PrometheusRule")  # limits.memory: 2Gi
    expected = yaml.safe_load(ALERTS.read_text())
    for group in expected["groups"]:
        for r in group["rules"]:
            if r["alert"] == "TelegraphyMemoryNearLimit":
                assert "> 858993459" in r["expr"]
                r["expr"] = r["expr"].replace("> 858993459", f"> {2 * 1024**3 * 80 // 100}")
    assert rule["spec"] == expected


def test_ingress_is_websocket_friendly():
    r = rendered("ingress")
    ing = r.one("Ingress")
    ann = ing["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = r.one("Service", f"{RELEASE}-telegraphy")
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in [p["name"] for p in svc["spec"]["ports"]]
    assert ing["spec"]["tls"] == [{"secretName": "rt-tls", "hosts": ["rt.example.com"]}]
    assert "wss://rt.example.com/ws" in r.notes


# ---------------------------------------------------------------------- NOTES


def test_notes_tell_how_to_connect_publish_and_scrape():
    notes = rendered("redis").notes
    assert f"kubectl port-forward -n {NAMESPACE} svc/{RELEASE}-telegraphy 8080:8080" in notes
    assert "ws://127.0.0.1:8080/ws" in notes
    assert f"ws://{RELEASE}-telegraphy.{NAMESPACE}.svc:8080/ws" in notes
    assert "Authorization: Bearer $API_KEY" in notes and "/publish" in notes
    assert f"svc/{RELEASE}-telegraphy-metrics 9090:9090" in notes and "/metrics" in notes
    default = rendered("default").notes
    assert "HTTP publishing is off" in default and "single-node" in default
