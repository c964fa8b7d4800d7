"""Alerting configuration: `config/alerts.yaml` (or the identical built-in defaults) → rules,
channels and the delivery policy, validated before the service starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from runwatch.projections.alerts import (
    ALERT_SEVERITIES,
    Condition,
    Matcher,
    Rule,
    RuleSet,
)
from runwatch.sinks.channels import CHANNELS, ChannelConfig
from runwatch.stream.core.decisions import Policy
from runwatch.stream.settings.service import ConfigError, explain, parse_duration, read_yaml

DEFAULT_ALERTS: Final = Path("config/alerts.yaml")
BUILT_IN: Final = Path(__file__).parent / "defaults" / "alerts.yaml"

Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class RuleSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    severity: str
    match: list[dict[str, Any]] = Field(min_length=1)
    resolve: list[dict[str, Any]] = Field(default_factory=list)
    channels: list[str] = Field(min_length=1)
    group_by: list[str] = Field(default_factory=lambda: ["run_id"], min_length=1)
    throttle: Duration = 0.0
    send_resolved: bool = False
    summary: str = "{type} {run_id}"
    severity_by: dict[str, dict[str, str]] | None = None
    runbook_url: str = ""


class DeliverySpec(BaseModel):
    """How hard the dispatcher tries before an alert is marked failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 300.0


class AlertsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    alert_lookback: Duration = 3600.0
    max_notifications_per_minute: int = Field(default=30, ge=1)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class AlertSetup:
    """Everything alerting needs, validated: rules, channels (None: switched off), policy."""

    rules: RuleSet
    channels: dict[str, ChannelConfig | None]
    delivery: DeliverySpec
    lookback_s: float
    source: str
    max_per_minute: int = 30

    @property
    def enabled(self) -> frozenset[str]:
        return frozenset(name for name, config in self.channels.items() if config is not None)

    def policy(self, *, deliver: bool, since_us: int | None = None) -> Policy:
        return Policy(
            deliver=deliver,
            since_us=since_us,
            channels=self.enabled,
            max_per_minute=self.max_per_minute,
        )


def load_alerts(path: Path | None, *, required: bool = False) -> AlertSetup:
    """`path`, else `config/alerts.yaml` when present, else the built-in defaults."""
    if path is None and not required and DEFAULT_ALERTS.exists():
        path = DEFAULT_ALERTS
    source = path or BUILT_IN
    name = str(path) if path is not None else "built-in alert defaults"
    data = read_yaml(source)
    try:
        spec = AlertsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(name, exc)) from None
    for reserved in ("report", "archive", "trace"):
        if reserved in spec.channels:
            raise ConfigError(
                f"{name}: channels.{reserved}: the name is taken by the "
                "completion job of that name; call the channel something else"
            )
    channels = {key: _channel(name, key, value) for key, value in spec.channels.items()}
    channels.setdefault("console", CHANNELS["console"].config())
    rules = [_rule(name, index, rule, channels) for index, rule in enumerate(spec.rules)]
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ConfigError(
                f"{name}: rules: two rules are named {rule.name!r}; rule names must be unique"
            )
        seen.add(rule.name)
    return AlertSetup(
        RuleSet(rules),
        channels,
        spec.delivery,
        spec.alert_lookback,
        name,
        spec.max_notifications_per_minute,
    )


def default_alert_setup() -> AlertSetup:
    """The built-in rules and channels (a replay records decisions with these by default)."""
    return load_alerts(None, required=True)


def _channel(source: str, name: str, raw: dict[str, Any]) -> ChannelConfig | None:
    where = f"channels.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping with a `type`")
    kind = raw.get("type")
    if kind not in CHANNELS:
        raise ConfigError(
            f"{source}: {where}.type: {kind!r} is not a channel type; "
            f"use one of {', '.join(CHANNELS)}"
        )
    model = CHANNELS[kind].config
    body = {k: v for k, v in raw.items() if k != "type"}
    if model.address_key is not None and not body.get(model.address_key):
        return None
    body = {k: v for k, v in body.items() if v not in ("", None)}  # ${VAR:-} left empty
    for key in ("timeout", "resend_interval"):  # the models take seconds; the file may say 10s
        if key in body:
            try:
                body[key] = parse_duration(body[key])
            except ValueError as exc:
                raise ConfigError(f"{source}: {where}.{key}: {exc}") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(explain(source, exc, prefix=f"{where}.")) from None


def _rule(
    source: str, index: int, spec: RuleSpec, channels: dict[str, ChannelConfig | None]
) -> Rule:
    where = f"{source}: rules[{index}] ({spec.name})"
    if spec.severity not in ALERT_SEVERITIES:
        raise ConfigError(
            f"{where}.severity: {spec.severity!r} is not one of {', '.join(ALERT_SEVERITIES)}"
        )
    severity_by = None
    if spec.severity_by is not None:
        if len(spec.severity_by) != 1:
            raise ConfigError(
                f"{where}.severity_by: name one event field, e.g. {{level: {{page: critical}}}}"
            )
        ((field, choices),) = spec.severity_by.items()
        for value, severity in choices.items():
            if severity not in ALERT_SEVERITIES:
                raise ConfigError(
                    f"{where}.severity_by.{field}.{value}: {severity!r} is not one of "
                    f"{', '.join(ALERT_SEVERITIES)}"
                )
        severity_by = (field, tuple(choices.items()))
    for channel in spec.channels:
        if channel not in channels:
            raise ConfigError(
                f"{where}.channels: unknown channel {channel!r}; define it "
                f"under channels: (defined: {', '.join(sorted(channels))})"
            )
    return Rule(
        name=spec.name,
        severity=spec.severity,
        channels=tuple(spec.channels),
        fire=tuple(_matcher(f"{where}.match[{i}]", m) for i, m in enumerate(spec.match)),
        resolve=tuple(_matcher(f"{where}.resolve[{i}]", m) for i, m in enumerate(spec.resolve)),
        group_by=tuple(spec.group_by),
        throttle_us=int(spec.throttle * 1_000_000),
        send_resolved=spec.send_resolved,
        summary=spec.summary,
        severity_by=severity_by,
        runbook_url=spec.runbook_url,
    )


def _matcher(where: str, spec: dict[str, Any]) -> Matcher:
    event_type = spec.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ConfigError(
            f"{where}.type: every match needs an event type (a glob such as "
            "RUN_COMPLETED or pattern.*.failed)"
        )
    conditions = []
    for field, value in spec.items():
        if field == "type":
            continue
        if isinstance(value, dict):
            raise ConfigError(
                f"{where}.{field}: expected a value, a list of values or a "
                "comparison such as '>= error'"
            )
        conditions.append(Condition.parse(field, value))
    return Matcher(event_type, tuple(conditions))
