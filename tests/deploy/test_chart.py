"""The Kubernetes deploy (deploy/helm/darkroom) and the image's healthcheck, checked offline.

The chart is rendered by Helm's own engine (Helm's Go SDK, bundled by the ``helm-python-sdk``
package: no ``helm`` binary, no cluster) for several value sets, and every rendered manifest is
validated against the Kubernetes JSON schemas bundled by ``kubernetes-validate`` (strict: an
unknown field fails too), for the oldest and the newest Kubernetes the chart is checked for.
Custom resources (ServiceMonitor) are validated against their CRD's schema, vendored in
deploy/helm/schemas/. No network is used.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "darkroom"
SCHEMAS = ROOT / "deploy" / "helm" / "schemas"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion), and the newest whose
# schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

SERVICES = {
    "upload-ingest": 8080,
    "thumbnailing": 8081,
    "metadata-repair": 8082,
    "webhook-dispatch": 8083,
}
SECRET_VARS = {"MONGO_URL", "AMQP_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
RELEASE = "darkroom"
NAMESPACE = "photos"

Manifest = dict[str, Any]

# The value sets the chart is rendered with: its defaults, a production-like set (Ingress with
# TLS, an operator-made Secret, ServiceMonitors, a pinned digest) and a pared-down one.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": {
        "image": {"repository": "registry.example.com/darkroom", "digest": "sha256:" + "a" * 64},
        "imagePullSecrets": ["registry"],
        "publicBaseUrl": "https://photos.example.com",
        "s3": {
            "endpointUrl": "http://minio.minio-tenant.svc:80",
            "publicEndpointUrl": "https://s3.photos.example.com",
        },
        "secret": {
            "existingSecret": "darkroom-credentials",
            "keys": {"AMQP_URL": "amqp-url"},
            "refs": {
                "MONGO_URL": {
                    "name": "darkroom-mongodb-admin-darkroom",
                    "key": "connectionString.standard",
                }
            },
            "existingSecretExtraKeys": ["IMPORT_SOURCES"],
        },
        "config": {
            "logLevel": "WARNING",
            "extra": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318"},
        },
        "services": {
            "upload-ingest": {
                "replicas": 3,
                "env": {"CORS_ALLOWED_ORIGINS": '["https://photos.example.com"]'},
            },
            "thumbnailing": {"autoscaling": {"maxReplicas": 20}},
        },
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0"},
            "hosts": [
                {"host": "photos.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
            ],
            "tls": [{"secretName": "photos-tls", "hosts": ["photos.example.com"]}],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podAnnotations": {"example.com/team": "photos"},
        "tolerations": [{"key": "workload", "operator": "Equal", "value": "media"}],
    },
    "minimal": {
        "services": {
            "metadata-repair": {"enabled": False},
            "webhook-dispatch": {
                "autoscaling": {"enabled": False},
                "podDisruptionBudget": {"minAvailable": 1},
            },
        },
        "secret": {"extra": {"IMPORT_SOURCES": '{"drop": {"bucket": "darkroom-drop"}}'}},
        "serviceAccount": {"create": False},
        "shutdown": {"preStopSleepSeconds": 0},
        "spreadAcrossNodes": False,
    },
}


def render(values: dict[str, Any]) -> list[Manifest]:
    """The chart's manifests for these values, as ``helm template`` would render them."""
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                assert isinstance(document, dict), f"{path}: not a manifest: {document!r}"
                manifests.append(document)
    return manifests


@cache
def _rendered(value_set: str) -> tuple[Manifest, ...]:
    return tuple(render(VALUE_SETS[value_set]))


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def manifests(value_set: str) -> list[Manifest]:
    return copy.deepcopy(list(_rendered(value_set)))


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def component(manifest: Manifest) -> str:
    name: str = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
    return name


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: Manifest = only
    return result


def config_of(manifests: list[Manifest], deployment: Manifest) -> dict[str, str]:
    (source,) = container(deployment)["envFrom"]
    data: dict[str, str] = of_kind(manifests, "ConfigMap")[source["configMapRef"]["name"]]["data"]
    return data


# --- validation ------------------------------------------------------------------------------


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The vendored schema of a custom resource kind (deploy/helm/schemas/), if there is one."""
    group, _, version = api_version.partition("/")
    path = SCHEMAS / f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
    if not path.exists():
        return None
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


def schema_errors(manifest: Manifest) -> list[str]:
    """Why the manifest is not valid Kubernetes (empty: it is). A kind without a schema is an
    error, not a skip: a new kind needs its schema vendored."""
    where = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    schema = crd_schema(manifest.get("apiVersion", ""), manifest.get("kind", ""))
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(manifest)
        ]
    errors = []
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            errors.append(f"{where} (Kubernetes {version}): {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{where}: no schema: {e.message}")
    return errors


def test_every_manifest_is_valid_kubernetes(manifests: list[Manifest]) -> None:
    assert manifests
    errors = [error for manifest in manifests for error in schema_errors(manifest)]
    assert not errors, "\n".join(errors)


def test_the_oldest_kubernetes_checked_is_the_charts_minimum() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={KUBE_VERSIONS[0]}-0"


def test_object_names_are_unique(manifests: list[Manifest]) -> None:
    names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        # Wrong types, a misspelt field, missing required fields.
        (lambda d: d["spec"].update(replicas="two"), "'two' is not of type 'integer'"),
        (lambda d: container(d).update(imagePullPolicy_="Always"), "imagePullPolicy_"),
        (lambda d: container(d).pop("name"), "'name' is a required property"),
        (lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
        (lambda d: container(d).update(env={"HOME": "/tmp"}), "is not of type 'array'"),
    ],
    ids=["wrong-type", "unknown-field", "missing-container-name", "missing-selector", "env-map"],
)
def test_validation_catches_a_broken_deployment(mutate: Any, expected: str) -> None:
    """The validation is not vacuous: a broken manifest fails it."""
    deployment = copy.deepcopy(next(m for m in _rendered("defaults") if m["kind"] == "Deployment"))
    assert not schema_errors(deployment)
    mutate(deployment)
    errors = schema_errors(deployment)
    assert errors
    assert any(expected in error for error in errors), errors


def test_validation_catches_a_broken_service_monitor() -> None:
    monitor = copy.deepcopy(
        next(m for m in _rendered("production") if m["kind"] == "ServiceMonitor")
    )
    assert not schema_errors(monitor)
    monitor["spec"]["endpoints"][0]["honorLabels"] = "yes"
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "30s"
    errors = "\n".join(schema_errors(monitor))
    assert "'yes' is not of type 'boolean'" in errors
    assert "scrape_interval" in errors


def test_an_unknown_kind_is_an_error_not_a_skip() -> None:
    errors = schema_errors(
        {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    )
    assert errors
    assert "no schema" in errors[0]


def test_lint_is_clean() -> None:
    for name, values in VALUE_SETS.items():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, (name, problems)


# --- what the manifests say ------------------------------------------------------------------


def test_one_deployment_service_configmap_and_pdb_per_service(
    manifests: list[Manifest], value_set: str
) -> None:
    enabled = {
        name
        for name in SERVICES
        if VALUE_SETS[value_set].get("services", {}).get(name, {}).get("enabled", True)
    }
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
        assert {component(m) for m in of_kind(manifests, kind).values()} == enabled, kind
    for deployment in of_kind(manifests, "Deployment").values():
        name = component(deployment)
        port = SERVICES[name]
        main = container(deployment)
        assert main["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert config_of(manifests, deployment)["HTTP_PORT"] == str(port)
        assert config_of(manifests, deployment)["HTTP_HOST"] == "0.0.0.0"
        (service,) = (s for s in of_kind(manifests, "Service").values() if component(s) == name)
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["targetPort"] == "http"
    for pdb in of_kind(manifests, "PodDisruptionBudget").values():
        (deployment,) = (
            d for d in of_kind(manifests, "Deployment").values() if component(d) == component(pdb)
        )
        assert (
            pdb["spec"]["selector"]["matchLabels"]
            == (deployment["spec"]["selector"]["matchLabels"])
        )


def test_probes_are_healthz_and_readyz(manifests: list[Manifest]) -> None:
    for deployment in of_kind(manifests, "Deployment").values():
        main = container(deployment)
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert main["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # Each /readyz dependency check is bounded by READY_CHECK_TIMEOUT_SECONDS (2 s).
        assert main["readinessProbe"]["timeoutSeconds"] > 2


def test_commands_are_the_console_scripts(manifests: list[Manifest]) -> None:
    expected = {
        "upload-ingest": "darkroom_ingest",
        "thumbnailing": "darkroom_thumbnailing",
        "metadata-repair": "darkroom_repair",
        "webhook-dispatch": "darkroom_webhooks",
    }
    scripts: dict[str, str] = {}
    for project in (ROOT / "services").glob("*/pyproject.toml"):
        found = re.findall(r'^(darkroom-[a-z]+) = "(\w+)\.main:main"', project.read_text(), re.M)
        scripts.update(found)
    for deployment in of_kind(manifests, "Deployment").values():
        (command,) = container(deployment)["command"]
        assert scripts.get(command) == expected[component(deployment)], command


def test_resources_have_requests_and_limits(manifests: list[Manifest]) -> None:
    for deployment in of_kind(manifests, "Deployment").values():
        resources = container(deployment)["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}


def test_autoscalers_are_for_thumbnailing_and_webhook_dispatch(
    manifests: list[Manifest], value_set: str
) -> None:
    hpas = of_kind(manifests, "HorizontalPodAutoscaler")
    expected = {"thumbnailing"} if value_set == "minimal" else {"thumbnailing", "webhook-dispatch"}
    assert {component(h) for h in hpas.values()} == expected
    deployments = of_kind(manifests, "Deployment")
    for hpa in hpas.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert component(deployments[target["name"]]) == component(hpa)
        # The HPA owns the replica count: the Deployment does not fight it.
        assert "replicas" not in deployments[target["name"]]["spec"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"
    for deployment in deployments.values():
        if component(deployment) not in expected:
            assert deployment["spec"]["replicas"] >= 1


def test_secrets_come_from_a_secret_not_the_configmap(
    manifests: list[Manifest], value_set: str
) -> None:
    values = VALUE_SETS[value_set]
    existing = values.get("secret", {}).get("existingSecret")
    secrets = of_kind(manifests, "Secret")
    if existing:
        assert not secrets, "the chart makes no Secret when existingSecret is set"
    else:
        (secret,) = secrets.values()
        assert set(secret["stringData"]) >= SECRET_VARS
    for configmap in of_kind(manifests, "ConfigMap").values():
        assert not SECRET_VARS & set(configmap["data"]), configmap["metadata"]["name"]
        assert not any("change-me" in value for value in configmap["data"].values())
    refs = values.get("secret", {}).get("refs", {})
    keys = values.get("secret", {}).get("keys", {})
    for deployment in of_kind(manifests, "Deployment").values():
        env = {e["name"]: e for e in container(deployment)["env"]}
        for var in SECRET_VARS:
            assert "value" not in env[var]
            ref = env[var]["valueFrom"]["secretKeyRef"]
            if var in refs:
                assert ref == refs[var]
            elif existing:
                assert ref == {"name": existing, "key": keys.get(var, var)}
            else:
                assert ref == {"name": RELEASE, "key": var}
        for var in values.get("secret", {}).get("existingSecretExtraKeys", []):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": existing, "key": var}
        for var in values.get("secret", {}).get("extra", {}):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": RELEASE, "key": var}


def test_a_secret_in_the_settings_is_refused() -> None:
    with pytest.raises(helm.HelmError, match="MONGO_URL is a secret"):
        render({"config": {"extra": {"MONGO_URL": "mongodb://user:pw@mongo"}}})
    with pytest.raises(helm.HelmError, match="S3_SECRET_KEY is a secret"):
        render({"services": {"thumbnailing": {"env": {"S3_SECRET_KEY": "x"}}}})


def test_settings_reach_the_services(manifests: list[Manifest], value_set: str) -> None:
    values = VALUE_SETS[value_set]
    for deployment in of_kind(manifests, "Deployment").values():
        config = config_of(manifests, deployment)
        assert config["S3_ENDPOINT_URL"]
        for key, value in values.get("config", {}).get("extra", {}).items():
            assert config[key] == value
        own = values.get("services", {}).get(component(deployment), {}).get("env", {})
        for key, value in own.items():
            assert config[key] == value
    if value_set == "defaults":
        thumbnailing = of_kind(manifests, "Deployment")["darkroom-thumbnailing"]
        # One rendering process per core of the CPU limit, not per core of the node.
        assert config_of(manifests, thumbnailing)["RENDER_PROCESSES"] == str(
            container(thumbnailing)["resources"]["limits"]["cpu"]
        )


def test_later_settings_win() -> None:
    manifests = render(
        {
            "config": {"extra": {"HTTP_HOST": "::", "LOG_LEVEL": "DEBUG"}},
            "services": {"thumbnailing": {"env": {"LOG_LEVEL": "WARNING", "HTTP_PORT": "1"}}},
        }
    )
    configs = {component(m): m["data"] for m in of_kind(manifests, "ConfigMap").values()}
    assert configs["upload-ingest"]["HTTP_HOST"] == "::"
    assert configs["upload-ingest"]["LOG_LEVEL"] == "DEBUG"
    assert configs["thumbnailing"]["LOG_LEVEL"] == "WARNING"
    # The port is the Deployment's and the Service's too: services.<name>.port, never env.
    assert configs["thumbnailing"]["HTTP_PORT"] == "8081"


def test_termination_grace_outlasts_the_drain(manifests: list[Manifest]) -> None:
    for deployment in of_kind(manifests, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        drain = float(config_of(manifests, deployment)["SHUTDOWN_GRACE_SECONDS"])
        pre_stop = container(deployment).get("lifecycle", {}).get("preStop")
        sleep = float(pre_stop["exec"]["command"][1]) if pre_stop else 0.0
        assert pod["terminationGracePeriodSeconds"] > sleep + drain


def test_pods_are_locked_down(manifests: list[Manifest]) -> None:
    for deployment in of_kind(manifests, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        main = container(deployment)
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # The one writable place: /tmp, an emptyDir.
        (mount,) = main["volumeMounts"]
        assert mount["mountPath"] == "/tmp"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mount["name"]]


def test_ingress_only_for_upload_ingest(manifests: list[Manifest], value_set: str) -> None:
    ingresses = of_kind(manifests, "Ingress")
    if not VALUE_SETS[value_set].get("ingress", {}).get("enabled"):
        assert not ingresses
        return
    (ingress,) = ingresses.values()
    services = of_kind(manifests, "Service")
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends
    for backend in backends:
        assert component(services[backend["name"]]) == "upload-ingest"
        assert backend["port"] == {"name": "http"}
    assert ingress["spec"]["tls"][0]["secretName"] == "photos-tls"


def test_service_monitors_scrape_every_service(manifests: list[Manifest], value_set: str) -> None:
    monitors = of_kind(manifests, "ServiceMonitor")
    if not VALUE_SETS[value_set].get("serviceMonitor", {}).get("enabled"):
        assert not monitors
        return
    services = of_kind(manifests, "Service")
    assert {component(m) for m in monitors.values()} == {component(s) for s in services.values()}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [
            s
            for s in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert [component(s) for s in selected] == [component(monitor)]
        # job="<service>" as in deploy/prometheus/prometheus.yml; the metrics' own "service"
        # label is kept.
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["honorLabels"] is True
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}


def test_notes_render() -> None:
    for values in VALUE_SETS.values():
        notes = helm.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE)
        text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
        assert "upload-ingest" in text


# --- the image's healthcheck -----------------------------------------------------------------


def healthcheck_command() -> list[str]:
    """The exec form of deploy/Dockerfile's HEALTHCHECK CMD."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK")]
    command: list[str] = json.loads(line.split(" CMD ", 1)[1])
    return command


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), type("Handler", (_Healthz,), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int | None) -> int:
    python, *args = healthcheck_command()
    assert python == "python"
    env = {k: v for k, v in os.environ.items() if k != "HTTP_PORT"}
    if port is not None:
        env["HTTP_PORT"] = str(port)
    # A proxy in the environment must not matter (http.client ignores it).
    env["HTTP_PROXY"] = env["http_proxy"] = "http://127.0.0.1:9"
    return subprocess.run([sys.executable, *args], env=env, timeout=30, check=False).returncode


def test_healthcheck_passes_when_healthz_answers(healthz_server: HTTPServer) -> None:
    assert run_healthcheck(healthz_server.server_address[1]) == 0


def test_healthcheck_fails_when_healthz_fails(healthz_server: HTTPServer) -> None:
    healthz_server.RequestHandlerClass.status = 503  # type: ignore[attr-defined]
    assert run_healthcheck(healthz_server.server_address[1]) != 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert run_healthcheck(closed) != 0
