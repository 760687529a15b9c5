"""The Prometheus rules: valid and unit-tested by ``promtool`` (Debian's ``prometheus``
package, installed by ``make install``; skipped with the reason where it is absent), and
every alert complete, tested firing and not firing, and in the runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "serving" / "monitoring" / "prometheus" / "rules.yml"
RULES_TEST = RULES.with_name("rules_test.yml")
RUNBOOK = REPO / "docs" / "operations.md"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not found: `make install` installs Debian's prometheus package")
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )


def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_complete() -> None:
    rules = alert_rules()
    assert len(rules) >= 8
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: give it a `for:`"
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
    retrain = next(r for r in rules if r["alert"] == "RetrainNeeded")
    assert "retrain needed" in retrain["annotations"]["summary"]
    assert "$labels.signal" in retrain["annotations"]["summary"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    names = {rule["alert"] for rule in alert_rules()}
    assert names == {
        "HighErrorRate",
        "SlowRecommendations",
        "FallbackRateHigh",
        "ModelQualityDrop",
        "CacheHitRateLow",
        "StoreUnavailable",
        "RetrainNeeded",
    }
    for name in names:
        assert cases.get(name) == {True, False}, f"{name}: test it firing and not firing"


def test_every_alert_has_a_runbook_line() -> None:
    runbook = RUNBOOK.read_text().split("## Monitoring and alerts", 1)
    assert len(runbook) == 2, "docs/operations.md needs a 'Monitoring and alerts' section"
    for name in {rule["alert"] for rule in alert_rules()}:
        assert f"`{name}`" in runbook[1], f"{name}: say what it means and what to do"
