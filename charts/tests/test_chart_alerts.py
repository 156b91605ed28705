"""The chart's alerting rules under Debian's promtool: they load, and they fire when they should."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_support import PROMETHEUS_OPERATOR_APIS, alert_rules, rule_groups

SERVER = 'namespace="team-a", llamaserver="gemma", pod="gemma-0", model="gemma.gguf"'
WHERE = {"namespace": "team-a", "llamaserver": "gemma"}
ROUTER = 'namespace="team-a", llamaserver="gemma", pod="gemma-router-7d9f-x2x4z"'


@pytest.fixture(scope="module")
def objects(helm):
    return helm.template({"monitoring": {"enabled": True}}, api_versions=PROMETHEUS_OPERATOR_APIS)


def write_rules(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_check_rules(objects, promtool, tmp_path):
    rules = write_rules(tmp_path / "rules.yaml", rule_groups(objects))
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules(objects))} rules found" in proc.stdout


def test_promtool_rejects_a_broken_rule(promtool, tmp_path):
    """The check above can fail: promtool does parse the expressions."""
    rules = write_rules(tmp_path / "bad.yaml", [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "sum by (pod (llamacpp:requests_deferred)", "for": "5m"}]}])
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


def alert(alertname: str, severity: str, **labels: str) -> dict[str, Any]:
    """An expected alert (promtool adds `alertname` itself)."""
    return {"exp_labels": {"severity": severity, **labels}}


# Each case: alert name, input series (1m steps), [(eval time, expected alerts)].
OPERATOR = 'job="kubellama-operator", namespace="team-a", name="gemma"'
OPERATOR_ALERT = {"namespace": "team-a", "name": "gemma", "llamaserver": "gemma", "job": "kubellama-operator"}

CASES = [
    ("KubellamaNoReadyReplicas",
     [{"series": f"kubellama_operator_llamaserver_replicas{{{OPERATOR}}}", "values": "2x30"},
      {"series": f"kubellama_operator_llamaserver_ready_replicas{{{OPERATOR}}}", "values": "2 2 0x30"},
      {"series": 'kubellama_operator_llamaserver_replicas{job="kubellama-operator", namespace="team-a", name="idle"}',
       "values": "0x30"},
      {"series": 'kubellama_operator_llamaserver_ready_replicas{job="kubellama-operator", namespace="team-a", '
                 'name="idle"}', "values": "0x30"}],
     [("8m", []), ("14m", [alert("KubellamaNoReadyReplicas", "critical", **OPERATOR_ALERT)])]),
    ("KubellamaModelDownloadFailing",
     [{"series": f'kubellama_operator_llamaserver_condition{{{OPERATOR}, condition="ModelReady", status="False", '
                 f'reason="Downloading"}}', "values": "1 1 1 _x20"},
      {"series": f'kubellama_operator_llamaserver_condition{{{OPERATOR}, condition="ModelReady", status="False", '
                 f'reason="DownloadFailed"}}', "values": "_ _ _ 1x20"}],
     [("3m", []), ("10m", [alert("KubellamaModelDownloadFailing", "critical", **OPERATOR_ALERT,
                                 condition="ModelReady", status="False", reason="DownloadFailed")])]),
    ("KubellamaLlamaServerFailed",
     [{"series": f'kubellama_operator_llamaserver_phase{{{OPERATOR}, phase="{phase}"}}', "values": values}
      for phase, values in (("Ready", "1 0x20"), ("Failed", "0 1x20"))],
     [("3m", []), ("8m", [alert("KubellamaLlamaServerFailed", "warning", **OPERATOR_ALERT, phase="Failed")])]),
    ("KubellamaOperatorDown",
     [{"series": 'up{job="kubellama-operator", namespace="kubellama-system"}', "values": "1 1 0x20"}],
     [("5m", []), ("14m", [alert("KubellamaOperatorDown", "critical", job="kubellama-operator",
                                 namespace="kubellama-system")])]),
    ("KubellamaOperatorReconcileErrors",
     [{"series": 'kubellama_operator_reconcile_errors_total{job="kubellama-operator", reason="ApiError"}',
       "values": "0+3x30"}],
     [("10m", []), ("20m", [alert("KubellamaOperatorReconcileErrors", "warning", reason="ApiError")])]),
    ("KubellamaServerDown",
     [{"series": f'up{{{SERVER}, job="kubellama"}}', "values": "1 1 0x10"},
      {"series": 'up{job="kubellama-operator"}', "values": "0x10"}],   # no llamaserver label: not a server
     [("4m", []), ("9m", [alert("KubellamaServerDown", "critical", **WHERE, pod="gemma-0", model="gemma.gguf",
                                job="kubellama")])]),
    ("KubellamaRequestsDeferred",
     [{"series": f"llamacpp:requests_deferred{{{SERVER}}}", "values": "0 0 3x10"}],
     [("5m", []), ("8m", [alert("KubellamaRequestsDeferred", "warning", **WHERE)])]),
    ("KubellamaKVCacheNearlyFull",
     [{"series": f"llamacpp:kv_cache_usage_ratio{{{SERVER}}}", "values": "0.5 0.95x15"},
      {"series": 'llamacpp:kv_cache_usage_ratio{namespace="team-a", llamaserver="other", pod="other-0"}',
       "values": "0.85x15"}],
     [("8m", []), ("12m", [alert("KubellamaKVCacheNearlyFull", "warning", **WHERE, pod="gemma-0")])]),
    ("KubellamaSlowTimeToFirstToken",
     # 10 first tokens a minute, all between 5 and 10 s
     [{"series": f'kubellama_time_to_first_token_seconds_bucket{{{SERVER}, le="{le}"}}', "values": values}
      for le, values in (("1", "0x20"), ("5", "0x20"), ("10", "0+10x20"), ("+Inf", "0+10x20"))],
     [("5m", []), ("17m", [alert("KubellamaSlowTimeToFirstToken", "warning", **WHERE)])]),
    ("KubellamaSlotSaveFailures",
     # client mistakes (invalid file names) are no alert; a failed restore is
     [{"series": f'kubellama_slot_saves_total{{{SERVER}, result="invalid"}}', "values": "0+1x20"},
      {"series": f'kubellama_slot_saves_total{{{SERVER}, result="ok"}}', "values": "0+5x20"},
      {"series": f'kubellama_slot_restores_total{{{SERVER}, result="error"}}', "values": "0x5 1x15"}],
     [("4m", []), ("7m", [alert("KubellamaSlotSaveFailures", "warning", **WHERE, pod="gemma-0")])]),
    ("KubellamaRouterRejecting",
     # the rejection counters exist at 0 from the router's start; queue_full rejections start at 3m
     [{"series": f'kubellama_router_rejected_total{{{ROUTER}, reason="{reason}"}}', "values": values}
      for reason, values in (("timeout", "0x20"), ("queue_full", "0 0 0 0+6x17"))],
     [("3m", []), ("10m", [alert("KubellamaRouterRejecting", "warning", namespace="team-a", llamaserver="gemma",
                                 reason="queue_full")])]),
    ("KubellamaRequestErrors",
     [{"series": f'kubellama_requests_total{{{SERVER}, endpoint="/v1/chat/completions", status="200"}}',
       "values": "0+60x20"},
      {"series": f'kubellama_requests_total{{{SERVER}, endpoint="/v1/chat/completions", status="500"}}',
       "values": "0+30x20"}],
     [("8m", []), ("17m", [alert("KubellamaRequestErrors", "warning", **WHERE)])]),
]


@pytest.mark.parametrize("name, series, checks", CASES, ids=[c[0] for c in CASES])
def test_alert_fires_when_it_should(objects, promtool, tmp_path, name, series, checks):
    """promtool's rule unit tests: the alert stays quiet, then fires with the right labels."""
    groups = rule_groups(objects)
    for group in groups:              # annotations are checked by `promtool check rules`
        for rule in group["rules"]:
            rule.pop("annotations", None)
    write_rules(tmp_path / "rules.yaml", groups)
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": t, "alertname": name, "exp_alerts": exp} for t, exp in checks]}]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_operator_metrics_used_by_the_alerts_exist(objects):
    """Every kubellama_operator_* name in the rules is one the operator exports."""
    from chart_support import metric_names
    from kubellama_operator import metrics

    exported = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    used = {n for rule in alert_rules(objects) for n in metric_names(rule["expr"]) if n.startswith("kubellama_operator_")}
    assert used and used <= exported, f"not exported by the operator: {sorted(used - exported)}"


def test_metric_names_reads_promql():
    """The helper the 'no metric missing' checks rely on."""
    from chart_support import metric_names
    expr = ('histogram_quantile(0.95, sum by (le, pod) (rate(kubellama_ttft_bucket{pod=~"a|b", le!="1"}[5m]))) > 1e-3 '
            'or on (pod) label_replace(llamacpp:kv_cache_tokens offset 5m, "x", "$1", "pod", "(.*)") / ignoring (le) foo2'
            ' unless absent(up{job="x"})')
    assert metric_names(expr) == {"kubellama_ttft_bucket", "llamacpp:kv_cache_tokens", "foo2", "up"}
