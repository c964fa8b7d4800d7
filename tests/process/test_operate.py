"""Running runwatch as a service: Prometheus metrics, health endpoints, `runwatch health`."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import requests

from helpers import TailProcess, run_cli


def event(kind: str, run_id: str, n: int, **extra: Any) -> bytes:
    return (
        orjson.dumps(
            {
                "event_id": f"{run_id}-{n}-{kind}",
                "event_type": kind,
                "run_id": run_id,
                "timestamp": datetime.now(UTC).isoformat(),
                **extra,
            }
        )
        + b"\n"
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in the Prometheus text format (0 when absent)."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def base_url(service: TailProcess) -> str:
    service.wait_until(lambda: "metrics and health on" in service.output())
    found = re.search(r"metrics and health on (http://[0-9.]+:\d+)", service.output())
    assert found is not None
    return found.group(1)


def test_metrics_move_as_events_arrive(tmp_path: Path) -> None:
    """A scrape must reflect what the service committed, not what it merely read."""
    logs = tmp_path / "in"
    logs.mkdir()
    with TailProcess(
        tmp_path, tmp_path / "rw.db", logs, args=("--metrics-addr", "127.0.0.1:0")
    ) as service:
        url = base_url(service) + "/metrics"
        first = requests.get(url, timeout=5)
        assert first.status_code == 200
        assert first.headers["Content-Type"].startswith("text/plain")
        assert "process_cpu_seconds_total" in first.text
        assert metric(first.text, "events_ingested_total", 'source="default"') == 0
        append(
            logs / "a.jsonl",
            event("run_started", "R1", 1)
            + event("task_started", "R1", 2, task_id="T1")
            + event("task_failed", "R1", 3, task_id="T1")
            + event("run_completed", "R1", 4)
            + b"{not json\n",
        )
        service.wait_for_accepted(4)
        service.wait_until(
            lambda: metric(requests.get(url, timeout=5).text, "artifacts_archived_total") == 1
        )
        text = requests.get(url, timeout=5).text
        assert metric(text, "events_ingested_total", 'source="default"') == 4
        assert metric(text, "events_rejected_total", 'reason="invalid_json"') == 1
        assert metric(text, "runs_completed_total", 'status="failed"') == 1
        assert metric(text, "runs_failed_total") == 1
        assert metric(text, "alerts_sent_total", 'channel="console"') >= 1
        assert metric(text, "archive_size_bytes_count") == 1
        append(logs / "a.jsonl", event("run_started", "R2", 1))
        service.wait_until(lambda: metric(requests.get(url, timeout=5).text, "active_runs") == 1)
        assert metric(requests.get(url, timeout=5).text, "outbox_pending") == 0
        assert service.stop() == 0


def test_healthz_flips_with_the_database_and_the_archive_disk(tmp_path: Path) -> None:
    """Load balancers and systemd act on /healthz: it must fail when a check fails, and
    recover by itself when the cause goes away."""
    logs = tmp_path / "in"
    logs.mkdir()
    db = tmp_path / "rw.db"
    with TailProcess(tmp_path, db, logs, args=("--metrics-addr", "127.0.0.1:0")) as service:
        url = base_url(service)
        healthy = requests.get(url + "/healthz", timeout=5)
        assert healthy.status_code == 200, healthy.text
        assert set(healthy.json()["checks"]) == {
            "monitor_heartbeat",
            "db_connection_check",
            "archival_storage_check",
            "ingest_lag",
            "delivery_workers",
        }
        db.rename(tmp_path / "moved.db")
        try:
            broken = requests.get(url + "/healthz", timeout=5)
            assert broken.status_code == 503
            assert not broken.json()["checks"]["db_connection_check"]["ok"]
            assert requests.get(url + "/livez", timeout=5).status_code == 200
        finally:
            (tmp_path / "moved.db").rename(db)
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        (tmp_path / ".archive").write_text("a file where the archive folder should be")
        full = requests.get(url + "/readyz", timeout=5)
        assert full.status_code == 503
        assert not full.json()["checks"]["archival_storage_check"]["ok"]
        (tmp_path / ".archive").unlink()
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        assert requests.get(url + "/nope", timeout=5).status_code == 404
        shell = run_cli("health", "--db", db, "--json", cwd=tmp_path)
        assert shell.returncode == 0, shell.stdout
        assert orjson.loads(shell.stdout)["status"] == "ok"
        assert service.stop() == 0
    stopped = run_cli("health", "--db", db, cwd=tmp_path)
    assert stopped.returncode == 1
    assert "FAIL  monitor_heartbeat" in stopped.stdout


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a socket listens on at `port`, from the kernel's tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


def test_metrics_server_binds_loopback_by_default(tmp_path: Path) -> None:
    """Secure by default: a bare :PORT must not listen on every interface."""
    logs = tmp_path / "in"
    logs.mkdir()
    with TailProcess(tmp_path, tmp_path / "rw.db", logs, args=("--metrics-addr", ":0")) as service:
        url = base_url(service)
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url + "/metrics", timeout=5).status_code == 200
        port = int(url.rpartition(":")[2])
        assert listening_addresses(port) == {"127.0.0.1"}, "what the socket is bound to"
        assert service.stop() == 0
    bad = run_cli(
        "tail", logs, "--db", tmp_path / "x.db", "--metrics-addr", "nowhere", cwd=tmp_path
    )
    assert bad.returncode == 2 and "metrics_addr" in bad.stderr
