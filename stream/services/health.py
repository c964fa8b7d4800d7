"""Health checks, the same ones inside the service (`/healthz`) and from a shell
(`runwatch health`): monitor_heartbeat, db_connection_check, archival_storage_check,
ingest_lag and delivery_workers. The service publishes its liveness in a status file beside
the database, rewritten every tick, so a shell (cron, systemd, `status --watch`) can see it
without touching the service's database lock.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runwatch.sinks.archive import ArchiveConfig
from runwatch.sinks.store import StoreError, reads
from runwatch.stream.settings.service import Settings


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict; `detail` says what was seen, in words a person can act on."""

    name: str
    ok: bool
    detail: str
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "value": self.value}


def status_path(database: Path) -> Path:
    return database.with_name(database.name + ".status")


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the status file in one rename (readers never see half of it); not fsynced:
    it describes the present and is rewritten every tick."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(orjson.dumps(status))
    os.replace(temp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def heartbeat(age_s: float | None, limit_s: float) -> Check:
    if age_s is None:
        return Check(
            "monitor_heartbeat",
            False,
            "the service is not running (no status file, or its process is gone)",
        )
    seen = f"last loop iteration {age_s:.1f} s ago"
    return _at_most("monitor_heartbeat", age_s, limit_s, seen, ": the service is stuck")


def database(path: Path) -> Check:
    """Open the database read-only by its path, as a new reader would."""
    if not path.exists():
        return Check("db_connection_check", False, f"{path}: no such database")
    try:
        version = reads.schema_version(path)
    except StoreError as exc:
        return Check("db_connection_check", False, f"{path}: cannot read ({exc})")
    if version is None:
        return Check("db_connection_check", False, f"{path}: not a runwatch database")
    return Check("db_connection_check", True, f"{path}: readable, schema {version}")


def archival_storage(config: ArchiveConfig, min_free_bytes: int) -> Check:
    """The archive directory (or the folder it will be created in) takes a new file, and
    its disk has room beyond the configured reserve."""
    folder = config.directory
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return Check("archival_storage_check", False, f"{folder}: not a directory")
    try:
        handle, name = tempfile.mkstemp(prefix=".health-", dir=folder)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        return Check("archival_storage_check", False, f"{folder}: not writable ({exc.strerror})")
    free = shutil.disk_usage(folder).free
    needed = min_free_bytes + config.reserve_bytes
    ok = free >= needed
    return Check(
        "archival_storage_check",
        ok,
        f"{folder}: {free / 2**30:,.1f} GiB free"
        + ("" if ok else f", below the {needed / 2**30:,.1f} GiB required"),
        float(free),
    )


def ingest_lag(lag_s: float | None, limit_s: float) -> Check:
    if lag_s is None:
        return Check("ingest_lag", False, "unknown: the service is not running")
    return _at_most("ingest_lag", lag_s, limit_s, f"{lag_s:.1f} s behind the newest appended byte")


def _at_most(name: str, seconds: float, limit_s: float, seen: str, beyond: str = "") -> Check:
    """Passes while `seconds` (described by `seen`) is within `limit_s`."""
    ok = seconds <= limit_s
    return Check(name, ok, seen + ("" if ok else f" (limit {limit_s:g} s){beyond}"), seconds)


def delivery_workers(failing: dict[str, str] | None) -> Check:
    """Every channel's delivery worker is working (a worker retries a failed database on its
    own; until it succeeds, alerts and jobs of its channel wait)."""
    if failing is None:
        return Check("delivery_workers", False, "unknown: the service is not running")
    if not failing:
        return Check("delivery_workers", True, "every channel's worker is delivering", 0.0)
    named = "; ".join(f"{target}: {why}" for target, why in sorted(failing.items()))
    return Check("delivery_workers", False, f"not delivering: {named}", float(len(failing)))


def run_checks(
    settings: Settings,
    *,
    loop_age_s: float | None,
    lag_s: float | None,
    failing_workers: dict[str, str] | None,
    only_liveness: bool = False,
) -> list[Check]:
    """`failing_workers`: the dispatcher's `failing()`, None when the service is not running."""
    limits = settings.health
    checks = [heartbeat(loop_age_s, limits.max_loop_age)]
    if not only_liveness:
        checks += [
            database(settings.database),
            archival_storage(settings.archive, limits.min_free_bytes),
            ingest_lag(lag_s, limits.max_ingest_lag),
            delivery_workers(failing_workers),
        ]
    return checks


def from_status_file(settings: Settings) -> list[Check]:
    """The checks from outside the service: its liveness comes from the status file."""
    status = read_status(status_path(settings.database))
    age = lag = failing = None
    if status is not None and process_alive(int(status.get("pid", 0))):
        age = max(0.0, time.time() - float(status.get("updated_unix", 0)))
        lag = float(status.get("ingest_lag_seconds", 0.0))
        failing = {str(k): str(v) for k, v in dict(status.get("delivery_failing") or {}).items()}
    return run_checks(settings, loop_age_s=age, lag_s=lag, failing_workers=failing)


def report(checks: list[Check]) -> dict[str, Any]:
    return {
        "status": "ok" if all(c.ok for c in checks) else "fail",
        "checks": {c.name: c.as_dict() for c in checks},
    }


def process_alive(pid: int) -> bool:
    """A pid that exists on this host; someone else's process counts as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
