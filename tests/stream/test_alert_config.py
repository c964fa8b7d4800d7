"""Alert configuration: the shipped defaults, env expansion, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_cli
from runwatch.stream.settings.alerts import BUILT_IN, load_alerts
from runwatch.stream.settings.service import ConfigError

ROOT = Path(__file__).parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
UNSET = {
    "ALERT_WEBHOOK_URL": "",
    "SLACK_WEBHOOK_URL": "",
    "SMTP_HOST": "",
    "ALERT_EMAIL_TO": "",
    "ALERTMANAGER_URL": "",
}


def test_shipped_file_is_the_built_in_default() -> None:
    """Deleting config/alerts.yaml must not change behaviour: both are the same bytes."""
    assert (ROOT / "config" / "alerts.yaml").read_bytes() == BUILT_IN.read_bytes()


def test_defaults_work_with_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing configured the console still alerts and the other channels are off."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    setup = load_alerts(None, required=True)
    assert setup.enabled == {"console"}
    assert set(setup.rules.rules) == {
        "run_failure",
        "archival_failure",
        "run_stalled",
        "step_failure",
        "pattern_failure",
        "slo_burn",
    }
    assert setup.lookback_s == 3600


def test_environment_switches_channels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream pipeline's variables are enough to turn on webhook, Slack and mail."""
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("ALERT_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.example/T/B/x")
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.setenv("ALERT_EMAIL_TO", "a@example.org, b@example.org")
    setup = load_alerts(None, required=True)
    assert setup.enabled == {"console", "webhook", "slack", "email"}
    email = setup.channels["email"]
    assert email is not None and email.recipients == ["a@example.org", "b@example.org"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerts.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            "rules:\n  - {name: r, severity: high, match: [{type: X}], channels: [pager]}\n",
            "rules[0] (r).channels: unknown channel 'pager'",
        ),
        ("channels:\n  hook: {type: webhook, url: 'not a url'}\n", "channels.hook.url"),
        (
            "channels:\n  hook: {type: webhook, url: '${RW_TEST_UNSET_URL}'}\n",
            "environment variable RW_TEST_UNSET_URL is not set",
        ),
        ("channels:\n  hook: {type: pigeon}\n", "channels.hook.type"),
        (
            "rules:\n  - {name: r, severity: urgent, match: [{type: X}], channels: [console]}\n",
            "severity: 'urgent'",
        ),
        (
            "rules:\n  - {name: r, severity: high, match: [{status: x}], channels: [console]}\n",
            "match[0].type",
        ),
        (
            "rules:\n  - {name: r, severity: high, match: [{type: X}], channels: [console],"
            " throttle: soon}\n",
            "rules.0.throttle",
        ),
        ("delivery: {max_attempts: 0}\n", "delivery.max_attempts"),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    """A typo must stop the service at start, with a message that says where and what."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_alerts(path)
    assert named in str(caught.value)
    result = run_cli("alerts", "check", path)
    assert result.returncode == 2
    assert named in result.stderr
    tail = run_cli("tail", tmp_path, "--db", tmp_path / "x.db", "--alerts", path)
    assert tail.returncode == 2 and named in tail.stderr


def test_secrets_never_reach_the_output(tmp_path: Path) -> None:
    """`alerts check` shows what is configured without printing a single secret."""
    path = write(
        tmp_path,
        f"""
channels:
  hook: {{type: webhook, url: "https://user:pw@example.org/hook?token=SEKRIT", secret: {SECRET},
          token: "${{RW_TEST_TOKEN}}"}}
  slack: {{type: slack, url: "https://hooks.slack.example/services/T0/B0/SLACKSEKRIT"}}
  mail: {{type: email, host: 127.0.0.1, sender: a@example.org, recipients: [b@example.org],
          username: u, password: "${{RW_TEST_PASSWORD}}"}}
""",
    )
    env = {"RW_TEST_TOKEN": "TOKENSEKRIT", "RW_TEST_PASSWORD": "PASSSEKRIT"}
    result = run_cli("alerts", "check", path, env=env)
    assert result.returncode == 0, result.stderr
    for secret in ("SEKRIT", "pw@", SECRET, "TOKENSEKRIT", "SLACKSEKRIT", "PASSSEKRIT"):
        assert secret not in result.stdout + result.stderr
    broken = write(tmp_path, path.read_text().replace("https://hooks", "ftp://hooks"))
    failed = run_cli("alerts", "check", broken, env=env)
    assert failed.returncode == 2
    assert "SLACKSEKRIT" not in failed.stderr and "channels.slack.url" in failed.stderr


def test_reserved_channel_names_are_refused(tmp_path: Path) -> None:
    """`report` and `archive` are the completion jobs' outbox targets."""
    with pytest.raises(ConfigError, match=r"channels\.archive"):
        load_alerts(write(tmp_path, "channels:\n  archive: {type: console}\n"))
