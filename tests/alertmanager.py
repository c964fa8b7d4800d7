"""A private Alertmanager (Debian's prometheus-alertmanager) for tests, on a free loopback
port, routing every alert at once to a webhook receiver (tests/receivers.py):

    with WebhookReceiver() as receiver:
        manager = Alertmanager(tmp_path, receiver)
        ...  # post to manager.url; manager.alerts(slo="x") lists the active alerts
        manager.stop()
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import requests

from helpers import wait_until
from receivers import WebhookReceiver

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Alertmanager:
    """A private Alertmanager routing every alert to `receiver` at once (group_wait 0)."""

    def __init__(self, workdir: Path, receiver: WebhookReceiver) -> None:
        assert BINARY, (
            "prometheus-alertmanager is not installed: `apt-get install -y prometheus-alertmanager`"
        )
        self.port = free_port()
        config = workdir / "alertmanager.yml"
        config.write_text(
            "route:\n  receiver: hook\n  group_by: [alertname, slo, run_id]\n"
            "  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n"
            "receivers:\n  - name: hook\n    webhook_configs:\n"
            f"      - url: {receiver.url}\n        send_resolved: true\n"
        )
        self.log = (workdir / "alertmanager.log").open("wb")
        self.process = subprocess.Popen(
            [
                BINARY,
                f"--config.file={config}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, "alertmanager ready", timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds as active whose labels include `labels`."""
        found: list[dict[str, Any]] = requests.get(f"{self.url}/api/v2/alerts", timeout=5).json()
        return [a for a in found if labels.items() <= a["labels"].items()]

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()
