"""ops/: every alert and dashboard expression parses, and every metric it names exists in the code.

Expressions are parsed with promql-parser (a real PromQL parser, from the dev extra); promtool checks
the rule and scrape files too where it is installed (Debian's `prometheus` package; CI installs it).
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS_BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def code_metric_names() -> set[str]:
    return Metrics(CollectorRegistry()).names()


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects (Grafana's range variables made concrete)."""
    concrete = re.sub(r"\$__(rate_)?interval|\$__range", "5m", expr)
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.append(node.name)

    promql_parser.walk(promql_parser.parse(concrete), visit)
    return found


def test_the_alerts_cover_the_issue_list() -> None:
    exprs = " ".join(rule["expr"] for rule in alert_rules())
    for metric in ("eventflow_dead_letters_total", "eventflow_group_lag", "eventflow_http_requests_total",
                   "eventflow_workers_alive", "eventflow_redis_up"):
        assert metric in exprs


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_parses_and_names_only_metrics_the_code_exports(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, "an alert must select at least one metric"
    unknown = set(names) - code_metric_names() - PROMETHEUS_BUILTIN
    assert unknown == set()
    assert rule["annotations"]["summary"]


@pytest.mark.parametrize("expr", dashboard_exprs())
def test_every_dashboard_query_parses_and_names_only_metrics_the_code_exports(expr: str) -> None:
    unknown = set(metric_names(expr)) - code_metric_names() - PROMETHEUS_BUILTIN
    assert unknown == set()


def test_the_dashboard_shows_every_metric_the_code_exports() -> None:
    shown = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    # A histogram is shown through its _bucket or _count series, a counter through _total.
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in code_metric_names()}
    missing = {f for f in families if not any(s == f or s.startswith(f + "_") for s in shown)}
    assert missing == set()


def test_the_scrape_config_uses_the_ports_the_processes_listen_on() -> None:
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    ports = {job["job_name"]: job["dns_sd_configs"][0]["port"] for job in config["scrape_configs"]}
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    assert ports["eventflow-web"] == int(fly["env"]["EVENTFLOW_METRICS_PORT"])
    assert ports["eventflow-worker"] == int(fly["env"]["EVENTFLOW_WORKER_METRICS_PORT"])
    assert ports["eventflow-worker"] == Settings().worker_metrics_port
    assert config["rule_files"] == ["alerts.yml"]



def test_promtool_accepts_the_rules_the_rule_tests_and_the_scrape_config() -> None:
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=OPS, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
