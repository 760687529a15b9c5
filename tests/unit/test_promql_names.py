"""The name extraction behind the dashboard check, on planted expressions; and the dashboard
and rules read only recording rules that the rules file defines."""

from __future__ import annotations

import json

from tests.helpers.promql import DASHBOARD, dashboard_exprs, metric_names, rules


def test_metric_names_of_planted_expressions() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(a_seconds_bucket{endpoint=~"/x/{id}",'
        ' le!="0.5"}[$__rate_interval])))'
    ) == {"a_seconds_bucket"}
    assert metric_names(
        "sum(rate(x_total[5m] offset 1h)) / ignoring(reason) group_left sum without (a) (y) "
        "> bool 1e-3 and on(instance) z unless w or recsys:ctr:ratio_rate1h * 0"
    ) == {"x_total", "y", "z", "w", "recsys:ctr:ratio_rate1h"}
    assert metric_names('max by (bundle, metric) (m{metric=~"recall@20|ndcg@20"})') == {"m"}
    assert metric_names("absent(up) == 0") == {"up"}
    assert metric_names("vector(1) + 2.5") == set()


def test_dashboard_reads_only_defined_recording_rules() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    assert len(exprs) >= 25
    rule_exprs, recorded = rules()
    used = {n for e in [*exprs, *rule_exprs] for n in metric_names(e) if ":" in n}
    assert used
    assert used <= recorded, used - recorded
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
