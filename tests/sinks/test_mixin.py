"""`runwatch mixin` against the real promtool (Debian's prometheus package): the rules load,
and series of a failure burst in make the page alert come out; the Grafana dashboard picks
its datasource from a variable."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import run_cli

PROMTOOL = shutil.which("promtool")
CONFIG = """\
slos:
  - {name: pipeline_success, sli: success, objective: 0.95}
  - {name: pipeline_fast, sli: duration, objective: 0.9, threshold: 15m, min_events: 5}
"""


def promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "no promtool: apt-get install -y prometheus"
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mixin `runwatch mixin` writes for CONFIG (one real run for the module)."""
    tmp_path = tmp_path_factory.mktemp("mixin")
    config = tmp_path / "runwatch.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "mixin"
    done = run_cli("mixin", "--config", config, "--out", out)
    assert done.returncode == 0, done.stderr
    return out


def annotations(out: Path, alert: str, **labels: str) -> dict[str, str]:
    groups = yaml.safe_load((out / "prometheus_alerts.yaml").read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        if rule["alert"] == alert and labels.items() <= rule["labels"].items():
            found: dict[str, str] = rule["annotations"]
            return found
    raise AssertionError(f"no {alert} {labels}")


def test_the_rules_load_and_a_failure_burst_pages(out: Path) -> None:
    """The alerts Prometheus evaluates must be the contract's: 40 failures a minute beside
    10 successes, for half an hour after a quiet hour, burn the budget of a 95 % SLO fast
    enough to page (and to ticket); before the burst nothing fires, and a runwatch that
    stops being scraped is reported down."""
    checked = promtool("check", "rules", "prometheus_rules.yaml", "prometheus_alerts.yaml", cwd=out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout

    page = annotations(out, "RunwatchSloBurn", slo="pipeline_success", level="page")
    ticket = annotations(out, "RunwatchSloBurn", slo="pipeline_success", level="ticket")
    burn: dict[str, Any] = {"alertname": "RunwatchSloBurn"}
    labels = {"slo": "pipeline_success", "sli": "success"}
    tests = {
        "rule_files": ["prometheus_rules.yaml", "prometheus_alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'runs_finished_total{job="runwatch",result="success"}',
                        "values": "0+10x120",
                    },
                    {
                        "series": 'runs_finished_total{job="runwatch",result="failure"}',
                        "values": "0x60 0+40x60",
                    },
                    {"series": 'up{job="runwatch"}', "values": "1x90 0x30"},
                ],
                "alert_rule_test": [
                    {**burn, "eval_time": "50m", "exp_alerts": []},
                    {
                        **burn,
                        "eval_time": "90m",
                        "exp_alerts": [
                            {
                                "exp_labels": {**labels, "severity": "critical", "level": "page"},
                                "exp_annotations": page,
                            },
                            {
                                "exp_labels": {**labels, "severity": "warning", "level": "ticket"},
                                "exp_annotations": ticket,
                            },
                        ],
                    },
                    {"alertname": "RunwatchDown", "eval_time": "85m", "exp_alerts": []},
                    {
                        "alertname": "RunwatchDown",
                        "eval_time": "100m",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "job": "runwatch"},
                                "exp_annotations": annotations(out, "RunwatchDown"),
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (out / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = promtool("test", "rules", "tests.yaml", cwd=out)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_dashboard_takes_its_datasource_from_a_variable(out: Path) -> None:
    """A dashboard imported into another Grafana must not point at a datasource that only
    existed where it was made: every panel and query uses ${datasource}."""
    board = json.loads((out / "dashboards" / "runwatch.json").read_text())
    (variable,) = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    titles = {panel["title"] for panel in board["panels"]}
    assert {
        "Active runs",
        "Success rate",
        "Run duration percentiles",
        "Error budget remaining",
        "Burn rate by window",
        "Firing alerts",
    } <= titles
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    rules = (out / "prometheus_rules.yaml").read_text()
    assert 'le="900.0"' in rules, "the 15m threshold is a bucket bound as the service writes it"
