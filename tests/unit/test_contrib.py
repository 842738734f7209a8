"""contrib/: the alert and recording rules pass promtool's checks and unit tests, and the rules and the dashboard
use only metric names netpath export serves (netpath-export(8), the contract)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
RULES_DIR = REPO / "contrib" / "prometheus"
RULES = RULES_DIR / "netpath-rules.yml"
RULE_TESTS = RULES_DIR / "netpath-rules.test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "netpath.json"
MAN = REPO / "man" / "man8" / "netpath-export.8"

# make install puts Debian's prometheus (and promtool) in place before the suite runs
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool (Debian's prometheus package) is not installed: make install")

SUFFIXES = ("_bucket", "_count", "_sum")


def served_names() -> set[str]:
    """Every metric name the man page's METRICS section lists."""
    text = MAN.read_text()
    section = re.sub(r"\\f[BIRP]", "", text[text.index(".SH METRICS"):text.index(".SH EXIT STATUS")])
    return set(re.findall(r"netpath_[a-z_]+", section.replace("\\", "")))


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\bnetpath_[a-z_]+", text))


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@needs_promtool
def test_promtool_checks_the_rules():
    got = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr


@needs_promtool
def test_promtool_unit_tests_of_every_alert_pass():
    got = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULES_DIR, capture_output=True,
                         text=True, check=False)
    assert got.returncode == 0, got.stdout + got.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == alerts, alerts - fired
    assert quiet == alerts, alerts - quiet


def test_every_alert_says_what_to_run_next():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["annotations"]["summary"] and "Next:" in rule["annotations"]["description"], rule
                assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule


def test_rules_and_dashboard_use_only_served_metric_names():
    served = served_names()
    assert "netpath_drops_total" in served and "netpath_stage_latency_seconds" in served
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("definition", "") for v in dash["templating"]["list"]]
    for name in used_names(RULES.read_text() + "\n".join(exprs)):
        assert base(name) in served, f"{name} is not in netpath-export(8)'s METRICS"
