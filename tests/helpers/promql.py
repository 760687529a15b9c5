"""The metric names a PromQL expression reads, and the expressions of the Grafana dashboard
and the Prometheus rules (for the check that they read only what the app exports)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "serving" / "monitoring" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "serving" / "monitoring" / "grafana" / "recsys.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_NAME = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "group_left", "group_right"}
_KEYWORDS |= {"on", "ignoring", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects (label names, functions, aggregations, keywords,
    strings, ranges and Grafana variables left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def dashboard_exprs(node: Any) -> Iterator[str]:
    """The ``expr`` of every target of every panel (rows and nested panels included)."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from dashboard_exprs(value)


def rules() -> tuple[list[str], set[str]]:
    """The expressions of the rules file and the names its recording rules define."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    every = [rule for group in groups for rule in group["rules"]]
    return [r["expr"] for r in every], {r["record"] for r in every if "record" in r}


def exported_names_needed(exprs: list[str], recorded: set[str]) -> set[str]:
    """The metric names ``exprs`` read that must come from the app (recording rules are
    Prometheus's own)."""
    return {n for e in exprs for n in metric_names(e)} - recorded
