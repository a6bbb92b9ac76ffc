"""Prometheus, its alerts and Grafana's dashboard, as docker-compose.yml runs them.

promtool (Debian's ``prometheus`` package) checks the config and the rules and runs the rules'
unit tests (deploy/prometheus/alerts_test.yml); these tests fail, never skip, without it. The
rest reads the files: every alert has its unit tests (firing and not) and its runbook section;
every query, of an alert or of a dashboard panel, names metrics that exist and jobs that are
scraped; and the compose file publishes only what it should, with credentials from ``.env``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
RUNBOOKS = ROOT / "deploy" / "runbooks.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "darkroom.json"
COMPOSE = ROOT / "docker-compose.yml"

INSTALL = "apt-get install -y --no-install-recommends prometheus"

# Metrics the services are gaining in the same change as these rules (the code scan below finds
# them once they are in): messages ready and the oldest unacknowledged message's age per consumer
# queue, uploads by protocol and outcome, finished Operations.
BEING_ADDED = frozenset(
    {
        "queue_messages",
        "queue_oldest_message_age_seconds",
        "uploads_total",
        "operations_finished_total",
    }
)
# Prometheus's own series, and the families of prometheus_client's default collectors.
BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
DEFAULT_COLLECTOR_PREFIXES = ("process_", "python_gc_", "python_info")
# Scraped from RabbitMQ's and MinIO's own endpoints.
THIRD_PARTY_PREFIXES = ("rabbitmq_", "minio_")

PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


# ---- promtool ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is missing: {INSTALL} (make test installs it)")
    return found


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # From another folder than the repository's: the rule paths must resolve from the config's.
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd="/", check=False
    )


def test_promtool_accepts_the_config_and_finds_its_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load(CONFIG)['rule_files'])} rule files found" in result.stdout


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    """Each panel's query as a recording rule: promtool parses it as Prometheus would."""
    rules = [
        {"record": f"dashboard:panel_{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel, target in dashboard_targets()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- alerts, their tests and runbooks ---------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules()]


def test_the_alerts_are_the_expected_ones() -> None:
    names = alert_names()
    assert len(names) == len(set(names)), "an alert name is used twice"
    assert set(names) >= {
        "DarkroomServiceDown",
        "DarkroomApiErrorRatioHigh",
        "DarkroomApiLatencyP99High",
        "DarkroomMessagesDeadLettered",
        "DarkroomThumbnailBacklogOld",
        "DarkroomWebhookEndpointsFailing",
        "DarkroomWebhookEndpointsDisabled",
        "DarkroomWebhookDeliveryFailureRatioHigh",
        "DarkroomUploadsRefusedRatioHigh",
        "DarkroomOperationsFailing",
    }


@pytest.mark.parametrize("rule", alert_rules(), ids=alert_names())
def test_every_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert rule.get("labels", {}).get("severity") in {"critical", "warning", "info"}
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{rule['alert']}: no {key}"
    assert annotations["runbook_url"] == f"deploy/runbooks.md#{rule['alert'].lower()}"


def rule_tests() -> list[dict[str, Any]]:
    return [case for test in load(ALERTS_TEST)["tests"] for case in test["alert_rule_test"]]


def test_the_unit_tests_load_the_alerts_file() -> None:
    files = load(ALERTS_TEST)["rule_files"]
    assert [(ALERTS_TEST.parent / f).resolve() for f in files] == [ALERTS.resolve()]


@pytest.mark.parametrize("name", alert_names())
def test_every_alert_is_tested_firing_and_not_firing(name: str) -> None:
    cases = [case for case in rule_tests() if case["alertname"] == name]
    assert any(case.get("exp_alerts") for case in cases), f"{name}: no case where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{name}: no case where it does not"


def test_the_unit_tests_name_only_alerts_that_exist() -> None:
    # A case about a misspelt alert expecting nothing would pass, testing nothing.
    unknown = {case["alertname"] for case in rule_tests()} - set(alert_names())
    assert not unknown


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Each ``## `` section of the runbooks by its anchor, with its text."""
    sections: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[github_anchor(heading)] = body
    return sections


@pytest.mark.parametrize("rule", alert_rules(), ids=alert_names())
def test_every_alert_has_its_runbook_section(rule: dict[str, Any]) -> None:
    anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
    sections = runbook_sections()
    assert anchor in sections, f"deploy/runbooks.md has no section '## {rule['alert']}'"
    body = sections[anchor]
    for part in ("**What it means.**", "**How to confirm.**", "**What to do.**"):
        assert part in body, f"{rule['alert']}'s runbook has no {part}"


def test_every_runbook_section_is_an_alert_or_the_introduction() -> None:
    anchors = set(runbook_sections()) - {"before-you-start"}
    assert anchors == {name.lower() for name in alert_names()}


# ---- metric names, jobs and services in the queries -------------------------------------------


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row's


def dashboard_targets() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            yield panel, target


def code_metric_names() -> set[str]:
    """The names the services and the kit expose, from their metric definitions."""
    definition = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][\w:]*)\"")
    names: set[str] = set()
    sources = [*ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("libs/*/src/**/*.py")]
    for path in sources:
        for kind, name in definition.findall(path.read_text()):
            names |= exposed(kind, name)
    return names


def exposed(kind: str, name: str) -> set[str]:
    """What prometheus_client exposes for one metric (a counter always ends in _total)."""
    if kind == "Counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    if kind in {"Histogram", "Summary"}:
        return {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (regexes, label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    found = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group().lower() in PROMQL_KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        found.add(match.group())
    return found


def known(name: str, defined: set[str]) -> bool:
    return (
        name in defined
        or name in BEING_ADDED
        or name in BUILTIN
        or name.startswith(DEFAULT_COLLECTOR_PREFIXES + THIRD_PARTY_PREFIXES)
    )


def all_queries() -> list[tuple[str, str]]:
    queries = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    queries += [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel, target in dashboard_targets()
    ]
    return queries


def test_the_metric_name_reader_reads_promql() -> None:
    expr = (
        'sum by (service, le) (rate(a_bucket{route!~"x|y", le="+Inf"}[5m]) or b{c="d"} offset 1h)'
        " / ignoring (x) count(up == 0) > bool 0.5 and on (job) vector(0) unless max(c_total)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "up", "c_total"}


def test_every_query_names_metrics_that_exist() -> None:
    defined = code_metric_names()
    assert {"http_requests_total", "messages_consumed_total", "webhook_endpoints"} <= defined
    unknown = [
        f"{where}: {name}"
        for where, expr in all_queries()
        for name in sorted(metric_names(expr))
        if not known(name, defined)
    ]
    assert not unknown, "no such metric in the code:\n" + "\n".join(unknown)


def matcher_values(expr: str, label: str) -> set[str]:
    """The values (each alternative of a regex) a query's matchers on ``label`` ask for."""
    values: set[str] = set()
    for _, value in re.findall(rf'\b{label}\s*(=~|=)\s*"([^"]*)"', expr):
        values |= set(value.split("|"))
    return values


def service_names() -> set[str]:
    names = set()
    for path in ROOT.glob("services/*/src/*/app.py"):
        names |= set(re.findall(r'^SERVICE = "([^"]+)"$', path.read_text(), re.MULTILINE))
    return names


def test_every_job_a_query_names_is_scraped() -> None:
    jobs = {job["job_name"] for job in load(CONFIG)["scrape_configs"]}
    wrong = [
        f"{where}: job {value!r}"
        for where, expr in all_queries()
        for value in matcher_values(expr, "job")
        if value not in jobs
    ]
    assert not wrong, "\n".join(wrong)


def test_every_service_a_query_names_exists() -> None:
    services = service_names()
    assert services == {"upload-ingest", "thumbnailing", "metadata-repair", "webhook-dispatch"}
    wrong = [
        f"{where}: service {value!r}"
        for where, expr in all_queries()
        for value in matcher_values(expr, "service")
        if value not in services
    ]
    assert not wrong, "\n".join(wrong)


# ---- the scrape config ------------------------------------------------------------------------


def test_one_job_per_service_and_no_service_target_label() -> None:
    """The metrics carry their own ``service`` label: a target label of that name would push
    theirs aside (to ``exported_service``)."""
    config = load(CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert service_names() <= set(jobs)
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            assert "service" not in static.get("labels", {}), job["job_name"]
        relabelled = {r.get("target_label") for r in job.get("relabel_configs", [])}
        assert "service" not in relabelled, job["job_name"]
        assert not job.get("honor_labels"), job["job_name"]
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"]
    assert jobs["minio"]["metrics_path"] == "/minio/v2/metrics/cluster"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load(COMPOSE)
    return loaded


def test_compose_mounts_the_rule_files_where_the_config_looks() -> None:
    mounts = {}
    for volume in compose()["services"]["prometheus"]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = source
    config_source = mounts["/etc/prometheus/prometheus.yml"]
    assert (ROOT / config_source).resolve() == CONFIG.resolve()
    for rule_file in load(CONFIG)["rule_files"]:
        target = str(Path("/etc/prometheus") / rule_file)
        assert target in mounts, f"compose does not mount {rule_file} at {target}"
        assert (ROOT / mounts[target]).resolve() == (CONFIG.parent / rule_file).resolve()


# ---- the dashboard ----------------------------------------------------------------------------


def test_the_dashboard_panels_have_unique_ids_and_a_prometheus_source() -> None:
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]


def test_stat_panels_show_zero_rather_than_no_data() -> None:
    for panel in dashboard_panels():
        if panel.get("type") != "stat":
            continue
        assert panel["fieldConfig"]["defaults"].get("noValue") == "0", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].rstrip().endswith("or vector(0)"), panel["title"]


def test_the_dashboard_has_the_operating_panels() -> None:
    queries = " ".join(target["expr"] for _, target in dashboard_targets())
    for metric in (
        "queue_messages",
        "queue_oldest_message_age_seconds",
        "uploads_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "ALERTS",
    ):
        assert re.search(rf"\b{metric}\b", queries), f"no panel shows {metric}"


# ---- docker-compose.yml -----------------------------------------------------------------------

PUBLISHED = {"upload-ingest", "grafana", "minio"}  # minio: the S3 API, for direct uploads


def test_compose_publishes_only_the_api_grafana_and_minio_s3() -> None:
    services = compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == PUBLISHED
    assert services["upload-ingest"]["ports"] == ["${API_PUBLISH:-8080}:8080"]
    assert services["grafana"]["ports"] == ["${GRAFANA_PUBLISH:-3000}:3000"]
    # MinIO's S3 API only, on loopback unless MINIO_S3_PUBLISH says otherwise.
    assert services["minio"]["ports"] == ["${MINIO_S3_PUBLISH:-127.0.0.1:9000}:9000"]


def test_compose_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        if "build" in service:
            continue  # darkroom's own, built from deploy/Dockerfile
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert tag != "latest", name
        assert re.search(r"\d+\.\d+\.\d+|RELEASE\.\d{4}-", tag), f"{name}: {image} is no exact tag"


def test_compose_takes_credentials_from_env() -> None:
    services = compose()["services"]
    secrets = [
        services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"],
        services["minio"]["environment"]["MINIO_ROOT_PASSWORD"],
        services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"],
        services["upload-ingest"]["environment"]["S3_SECRET_KEY"],
        services["upload-ingest"]["environment"]["AMQP_URL"],
    ]
    for value in secrets:
        assert re.search(r"\$\{[A-Z_]+:\?[^}]*\}", value), value
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    required = {
        variable
        for value in strings(compose())
        for variable in re.findall(r"\$\{([A-Z_]+):\?", value)
    }
    assert required >= {"RABBITMQ_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    example = (ROOT / ".env.example").read_text()
    for variable in required:
        assert re.search(rf"^{variable}=", example, re.MULTILINE), f".env.example: {variable}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def strings(node: Any) -> Iterator[str]:
    """Every string of a parsed YAML document (its comments are gone)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
