"""Configuration: YAML → `${ENV}` expansion → one validated, frozen `Settings`.

Nothing else in runwatch reads YAML or environment variables for configuration.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from runwatch.projections.slo import Slo
from runwatch.sinks.archive import ArchiveConfig
from runwatch.sinks.reports import ReportsConfig
from runwatch.sinks.traces import TracesConfig

DEFAULT_CONFIG: Final = Path("config/runwatch.yaml")
_ENV_REF: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the fix."""


def parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("expected a duration such as 90, 45s, 30m or 1h")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
SecondsOrZero = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def parse_address(text: str) -> tuple[str, int]:
    """`host:port`, `:port` or `port`; without a host the server binds to 127.0.0.1."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (e.g. 127.0.0.1:9464)")
    return host, int(port)


def _address(value: Any) -> Any:
    if isinstance(value, str):
        parse_address(value)
    return value


Address = Annotated[str, BeforeValidator(_address)]


class Source(BaseModel):
    """A named set of input files (paths, directories or globs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    paths: list[str] = Field(min_length=1)


class HealthLimits(BaseModel):
    """When a health check fails."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_loop_age: Seconds = 15.0
    max_ingest_lag: Seconds = 60.0
    min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)


class HttpSettings(BaseModel):
    """The dashboard on `metrics_addr` (and `runwatch serve`): with a token, every page and
    API call requires it (the health checks excepted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    token: SecretStr | None = Field(default=None, min_length=16)


class SloSpec(BaseModel):
    """One objective under `slos:`: `success` (the share of runs that succeed) or `duration`
    (the share of runs that end within `threshold`), over a rolling `window`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    sli: Literal["success", "duration"]
    objective: float = Field(gt=0, lt=1)
    window: Seconds = 30 * 86400.0
    threshold: Seconds | None = None
    min_events: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _threshold_fits_sli(self) -> Self:
        if self.sli == "duration" and self.threshold is None:
            raise ValueError("a duration SLO needs `threshold` (how long a good run may take)")
        if self.sli == "success" and self.threshold is not None:
            raise ValueError("`threshold` is for duration SLOs only (or use sli: duration)")
        return self

    def slo(self) -> Slo:
        return Slo(
            self.name, self.sli, self.objective, self.window, self.threshold, self.min_events
        )


def _unique_slo_names(slos: list[SloSpec]) -> list[SloSpec]:
    names = [spec.name for spec in slos]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"SLO names must be unique; repeated: {', '.join(doubled)}")
    return slos


class Settings(BaseModel):
    """Everything runwatch can be told; see config/runwatch.yaml for the commented defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    database: Path = Path(".state/runwatch.db")
    database_url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    logs_dir: Path = Path("logs")
    stall_after: Seconds = 1800.0
    forget_after: Seconds = 7 * 86400.0
    settle: SecondsOrZero = 5.0
    max_line_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_future_skew: Seconds = 86400.0
    cache_groups: int = Field(default=1024, ge=1)
    cache_groups_max: int = Field(default=8192, ge=1)
    sources: list[Source] = Field(default_factory=list)
    rescan_interval: Seconds = 5.0
    tick_interval: Seconds = 1.0
    heartbeat_interval: Seconds = 30.0
    rotate_wait: Seconds = 5.0
    batch_max_bytes: int = Field(default=4 * 1024 * 1024, ge=4096)
    linger: float = Field(default=0.01, ge=0, le=1)
    metrics_addr: Address | None = None
    health: HealthLimits = HealthLimits()
    http: HttpSettings = HttpSettings()
    reports: ReportsConfig = ReportsConfig()
    archive: ArchiveConfig = ArchiveConfig()
    traces: TracesConfig = TracesConfig()
    slos: Annotated[list[SloSpec], AfterValidator(_unique_slo_names)] = Field(default_factory=list)

    @property
    def objectives(self) -> list[Slo]:
        """The configured SLOs, in the order of the file."""
        return [spec.slo() for spec in self.slos]


def load_settings(path: Path | None, *, required: bool = False) -> tuple[Settings, Path | None]:
    """Read and validate a config file. Without one, `config/runwatch.yaml` is used when it
    exists, else the built-in defaults. Returns the settings and the file they came from."""
    if path is None and not required and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        return Settings(), None
    data = read_yaml(path)
    try:
        return Settings.model_validate(data), path
    except ValidationError as exc:
        raise ConfigError(explain(path, exc)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping, with `${ENV}` references expanded."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(data).__name__}"
        )
    expanded: dict[str, Any] = _expand_env(data, path, "")
    return expanded


def _expand_env(value: Any, path: Path, where: str) -> Any:
    if isinstance(value, dict):
        return {
            k: _expand_env(v, path, f"{where}.{k}" if where else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, path, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            if name in os.environ and (os.environ[name] or fallback is None):
                return os.environ[name]
            if fallback is not None:
                return fallback
            raise ConfigError(
                f"{path}: {where}: environment variable {name} is not set; "
                f"export it, or write ${{{name}:-}} to make it optional"
            )

        return _ENV_REF.sub(substitute, value)
    return value


def explain(path: Path | str, exc: ValidationError, prefix: str = "") -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for error in exc.errors():
        key = prefix + ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the shipped file in config/)"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
