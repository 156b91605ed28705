"""Helpers for the chart tests: render with the real helm, validate, read PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kubellama"
DASHBOARD = CHART / "dashboards" / "kubellama.json"
MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
# What `helm template --api-versions` passes for a cluster running the Prometheus Operator.
PROMETHEUS_OPERATOR_APIS = [f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS]


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass
class Helm:
    path: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HELM_CACHE_HOME": str(Path(tempfile.gettempdir()) / "kubellama-helm-cache"),
               "HELM_CONFIG_HOME": str(Path(tempfile.gettempdir()) / "kubellama-helm-config")}
        return subprocess.run([self.path, *args], capture_output=True, text=True, timeout=timeout, env=env)

    def template(self, values: dict[str, Any] | None = None, *, api_versions: list[str] = (),
                 release: str = "kubellama", namespace: str = "kubellama-system",
                 extra: list[str] = ()) -> list[dict[str, Any]]:
        """`helm template` of the chart with `values`; the rendered objects (CRDs included)."""
        return [d for d in yaml.safe_load_all(self.template_text(values, api_versions=api_versions,
                                                                 release=release, namespace=namespace,
                                                                 extra=["--include-crds", *extra]))
                if d]

    def template_text(self, values: dict[str, Any] | None = None, *, api_versions: list[str] = (),
                      release: str = "kubellama", namespace: str = "kubellama-system",
                      extra: list[str] = ()) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values or {}, f)
            f.flush()
            args = ["template", release, str(CHART), "--namespace", namespace, "--values", f.name, *extra]
            for api in api_versions:
                args += ["--api-versions", api]
            proc = self.run(*args)
        if proc.returncode != 0:
            raise HelmError(proc.stderr.strip())
        return proc.stdout

    def lint(self, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(values or {}, f)
            f.flush()
            return self.run("lint", "--strict", str(CHART), "--values", f.name)


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


# --- Prometheus Operator CRD validation (npm @kubernetes-models/prometheus-operator) -------------

VALIDATORS = Path(os.environ.get("KUBELLAMA_MONITORING_VALIDATORS", REPO_ROOT / ".tools" / "monitoring-schemas"))
_VALIDATE_JS = Path(__file__).with_name("validate_monitoring.mjs")


def monitoring_validator_available() -> str | None:
    """Why the validators cannot run, or None when they can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (VALIDATORS / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        return f"the validators are not installed in {VALIDATORS}: run `make monitoring-schemas`"
    return None


def validate_monitoring(objects: list[dict[str, Any]]) -> list[str]:
    """Errors from the Prometheus Operator CRD schemas for each object, "" when valid."""
    proc = subprocess.run(["node", str(_VALIDATE_JS), str(VALIDATORS)], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- PromQL ---------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (good enough for our own expressions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                 # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                               # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                              # range/subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(\boffset|@)\s*-?[\w.]+", " ", text)                # offset 5m, @ 1609746000
    text = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][-+]?\d+)?", " ", text)   # numbers (1e-9)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name, rest = m.group(0), text[m.end():].lstrip()
        if name.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(name)
    return names


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included, rows themselves excluded."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every panel target."""
    return [(p["title"], t["expr"]) for p in dashboard_panels(dashboard) for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> the `label_values(...)` query of each query variable."""
    return {v["name"]: v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}


def label_values_as_promql(query: str) -> tuple[str, str]:
    """`label_values(sel, label)` -> (`count by (label) (sel)`, label)."""
    m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)", query.strip())
    assert m, f"unsupported variable query {query!r}"
    return f"count by ({m.group(2)}) ({m.group(1)})", m.group(2)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace Grafana variables ($name, ${name}) with values."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"undefined dashboard variable ${name} in {expr!r}"
        return variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def rule_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return one(objects, "PrometheusRule")["spec"]["groups"]


def alert_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in rule_groups(objects) for r in g["rules"]]
