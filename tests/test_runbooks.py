"""Every alert runwatch raises or ships points at a runbook section that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runwatch.projections.slo import Slo
from runwatch.sinks.mixin import MixinOptions, alert_groups
from runwatch.stream.settings.alerts import load_alerts

ROOT = Path(__file__).parents[1]
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def anchors() -> set[str]:
    return set(re.findall(r'<a id="([a-z0-9-]+)"></a>', RUNBOOKS.read_text()))


def test_every_built_in_rule_has_a_runbook_section(monkeypatch: pytest.MonkeyPatch) -> None:
    """An on-call engineer woken by an alert must land on what to do, not on a 404."""
    monkeypatch.delenv("RUNBOOK_BASE_URL", raising=False)
    rules = load_alerts(None, required=True).rules.rules.values()
    for rule in rules:
        path, _, anchor = rule.runbook_url.partition("#")
        assert path == "docs/runbooks.md", rule.name
        assert anchor in anchors(), f"{rule.name}: no section #{anchor}"
    monkeypatch.setenv("RUNBOOK_BASE_URL", "https://git.example/ops/runbooks.md")
    custom = load_alerts(None, required=True).rules.rules["slo_burn"]
    assert custom.runbook_url == "https://git.example/ops/runbooks.md#slo-burn"


def test_every_mixin_alert_has_a_runbook_section() -> None:
    """The Prometheus alerts of the mixin link to the same runbooks."""
    groups = alert_groups([Slo("ok", "success", 0.99)], MixinOptions())
    for rule in (rule for group in groups for rule in group["rules"]):
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors(), f"{rule['alert']}: no section #{anchor}"
