"""A private nats-server with JetStream and the runwatch partition mapping, for tests.

    with NatsServer(tmp_path / "nats", partitions=4) as server:
        ...  # connect to server.url
        server.kill()    # kill -9: NATS is gone, as after a crash
        server.start()   # back on the same port with the same JetStream store
        server.stop()    # SIGTERM and wait: a clean shutdown

`NatsServer(directory=None, partitions=4, extra="")` writes `nats.conf` into `directory` (a
temporary folder, removed on exit, when None) listening on a free port of 127.0.0.1, with
`jetstream { store_dir }` below it and the subject mapping
`runwatch.events.* -> runwatch.part.{{partition(N,1)}}.{{wildcard(1)}}` (none when N is 0,
as on a server nobody configured for runwatch); `extra` is appended
to the config verbatim (e.g. `max_payload: 65536`). `start()` runs `/usr/sbin/nats-server -c
nats.conf` as a real subprocess, its log in `nats.log`, and returns once the server accepts
connections. Attributes: `url`, `port`, `directory`, `store_dir`, `partitions`, `process`.
`partition_of(token)` is the partition the server maps a subject token to (FNV-1a mod N, as
nats-server computes it), so a test can predict where a run lands.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

NATS_SERVER: Final = "/usr/sbin/nats-server"
READY_TIMEOUT_S: Final = 10.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mapping(partitions: int) -> str:
    """The server-config mapping that spreads runwatch.events.<token> over N partitions."""
    if partitions == 0:
        return ""
    return (
        'mappings = {\n  "runwatch.events.*": '
        f'"runwatch.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"\n}}\n'
    )


def fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


class NatsServer:
    """One nats-server subprocess that can be stopped, killed and started again in place."""

    def __init__(
        self, directory: Path | None = None, *, partitions: int = 4, extra: str = ""
    ) -> None:
        self.owned = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="nats-")) if directory is None else directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.store_dir = self.directory / "jetstream"
        self.config = self.directory / "nats.conf"
        self.log = self.directory / "nats.log"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}\n"
            f"{mapping(partitions)}{extra}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def partition_of(self, token: str) -> int:
        return fnv1a_32(token.encode()) % self.partitions

    def start(self) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        assert self.process is None or self.process.poll() is not None, "already running"
        if not Path(NATS_SERVER).exists():
            from conftest import skip_unreachable  # the loud skip (a failure under CI)

            skip_unreachable("NATS", NATS_SERVER, "not installed; `make services` installs it")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}:\n"
                    f"{self.log.read_text(errors='replace')}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"nats-server not listening after {READY_TIMEOUT_S} s:\n"
            f"{self.log.read_text(errors='replace')}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout)

    def kill(self) -> None:
        """kill -9: no chance to flush or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.kill()
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)
