"""Past one machine: shippers → JetStream → partition processors → PostgreSQL, with kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import orjson
from nats.js.api import StreamConfig

from helpers import RunwatchProcess, run_cli, wait_until
from natsserver import NatsServer
from receivers import WebhookReceiver
from runwatch.sinks.archive import verify_archive
from runwatch.sinks.store import open_store
from runwatch.stream.devtools.writer import simulate

NEVER_QUIET = "stall_after: 36500d\nforget_after: 36500d\ntick_interval: 0.2s\n"


def shipper_of(host: Path, nats_url: str) -> RunwatchProcess:
    """`runwatch ship` for one host's events folder, with the host's own checkpoints."""
    return RunwatchProcess(
        host, "ship", "ship", host / "events", "--nats", nats_url, "--db", host / "ship.db"
    )


def accepted(url: str) -> int:
    try:
        store = open_store(url)
    except Exception:  # not created yet
        return 0
    try:
        return store.counters().get("events_accepted", 0)
    finally:
        store.close()


def pending(url: str) -> int:
    """Outbox entries not yet delivered (the processors deliver after they commit)."""
    store = open_store(url)
    try:
        row = store.db.execute("SELECT count(*) FROM outbox WHERE state='pending'").fetchone()
        return int(row[0])
    finally:
        store.close()


def test_two_shippers_two_processors_killed_and_restarted_converge(
    tmp_path: Path, postgres_url: str
) -> None:
    """The scale-out promise: whatever crashes, the shared projection equals a SQLite replay
    of the same files, and no alert reaches a receiver twice."""
    start = datetime.now(UTC) - timedelta(hours=2)
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    simulate(hosts[0] / "events", runs=120, seed=21, fail_rate=0.3, start=start)
    simulate(hosts[1] / "events", runs=120, seed=22, fail_rate=0.3, start=start)
    (tmp_path / "rw.yaml").write_text(NEVER_QUIET)
    with NatsServer(tmp_path / "nats", partitions=4) as nats, WebhookReceiver() as hook:
        (tmp_path / "alerts.yaml").write_text(f"""
alert_lookback: 30d
delivery: {{max_attempts: 20, backoff_initial: 0.2s, backoff_max: 1s}}
channels:
  hook: {{type: webhook, url: "{hook.url}"}}
rules:
  - {{name: run_failure, severity: critical, channels: [hook], throttle: 15m,
      match: [{{type: RUN_COMPLETED, status: [failed, partial]}}, {{type: run_failed}}]}}
""")
        common = (
            "--config",
            str(tmp_path / "rw.yaml"),
            "--alerts",
            str(tmp_path / "alerts.yaml"),
            "--db",
            postgres_url,
            "--nats",
            nats.url,
            "--quiet",
        )
        processors = [
            RunwatchProcess(tmp_path, "p0", "tail", "--partition", "0,1/4", *common),
            RunwatchProcess(tmp_path, "p1", "tail", "--partition", "2,3/4", *common),
        ]
        shippers = [shipper_of(host, nats.url) for host in hosts]
        for proc in [*processors, *shippers]:
            proc.start()
        everyone = [*processors, *shippers]
        wait_until(lambda: accepted(postgres_url) > 2000, "first events", 60, show=everyone)
        kills = []
        for proc in [*shippers, *processors]:
            kills.append(time.time())
            proc.kill()
            proc.start()
            time.sleep(0.3)
        expected = run_cli(
            "replay",
            *[h / "events" for h in hosts],
            "--db",
            tmp_path / "replay.db",
            "--stall-after",
            "36500d",
            "--json",
        )
        assert expected.returncode == 0, expected.stderr
        total = orjson.loads(expected.stdout)["events_accepted"]
        wait_until(lambda: accepted(postgres_url) >= total, f"{total} events", 120, show=everyone)
        wait_until(lambda: pending(postgres_url) == 0, "an empty outbox", 60, show=everyone)
        for proc in everyone:
            assert proc.stop(timeout=20) == 0, proc.output()[-2000:]
        ids = [r.headers["webhook-id"] for r in hook.requests]
        first_sent = {}
        for request in hook.requests:
            first_sent.setdefault(request.headers["webhook-id"], request.received_wall)
    shared = open_store(postgres_url)
    replayed = open_store(str(tmp_path / "replay.db"))
    try:
        ours, theirs = shared.snapshot(), replayed.snapshot()
        for table in theirs:
            assert ours[table] == theirs[table], table
        failures = shared.db.execute(
            "SELECT count(*) FROM alerts WHERE rule='run_failure'"
        ).fetchone()[0]
        finished = dict(
            shared.db.execute(
                "SELECT run_id, events_total FROM runs WHERE status NOT IN ('pending', 'running')"
            )
        )
    finally:
        shared.close()
        replayed.close()
    repeated = {i for i in ids if ids.count(i) > 1}
    in_flight = {i for i in repeated if any(0 <= kill - first_sent[i] <= 2.0 for kill in kills)}
    assert repeated == in_flight, "an acknowledged alert was delivered again"
    assert len(set(ids)) == failures > 0, "every decided alert is delivered"
    archives = {path.stem: path for path in (tmp_path / ".archive").glob("*.zip")}
    assert set(archives) == set(finished), "every finished run is archived once"
    for run_id, path in archives.items():
        assert verify_archive(path) == []
        with zipfile.ZipFile(path) as opened:
            events = opened.read("events.jsonl").splitlines()
        assert len(events) == finished[run_id], "the run's events, read back from JetStream"
    assert len(list((tmp_path / "reports").glob("*.html"))) == len(finished) + 1
    index = (tmp_path / "reports" / "index.html").read_text()
    assert all(run_id in index for run_id in finished), "the index, rebuilt when idle, is whole"


def test_a_standby_takes_over_when_the_owner_dies(tmp_path: Path, postgres_url: str) -> None:
    """Two processors for one partition never both write it: the second waits on the
    advisory lock and carries on from the committed sequence when the first is killed."""
    host = tmp_path / "host"
    simulate(host / "events", runs=20, seed=31)
    (tmp_path / "rw.yaml").write_text(NEVER_QUIET)
    with NatsServer(tmp_path / "nats", partitions=1) as nats, contextlib.ExitStack() as cleanup:
        common = (
            "--config",
            str(tmp_path / "rw.yaml"),
            "--db",
            postgres_url,
            "--nats",
            nats.url,
            "--partition",
            "0/1",
        )
        # Entered, they are killed whatever happens: a processor left behind would hold the
        # partition's lock for the tests after this one.
        owner = cleanup.enter_context(RunwatchProcess(tmp_path, "owner", "tail", *common))
        wait_until(
            lambda: "owner of partition(s) 0/1" in owner.output(), "ownership", 30, show=[owner]
        )
        standby = cleanup.enter_context(RunwatchProcess(tmp_path, "standby", "tail", *common))
        wait_until(lambda: "standby" in standby.output(), "standby", 30, show=[standby])
        shipper = cleanup.enter_context(shipper_of(host, nats.url))
        wait_until(lambda: accepted(postgres_url) > 500, "first events", 60, show=[owner, shipper])
        owner.kill()
        wait_until(
            lambda: "owner of partition(s) 0/1" in standby.output(), "takeover", 30, show=[standby]
        )
        expected = run_cli(
            "replay",
            host / "events",
            "--db",
            tmp_path / "replay.db",
            "--stall-after",
            "36500d",
            "--json",
        )
        total = orjson.loads(expected.stdout)["events_accepted"]
        wait_until(lambda: accepted(postgres_url) >= total, f"{total} events", 60, show=[standby])
        assert standby.stop() == 0 and shipper.stop() == 0
    shared, replayed = open_store(postgres_url), open_store(str(tmp_path / "replay.db"))
    try:
        assert shared.snapshot() == replayed.snapshot()
    finally:
        shared.close()
        replayed.close()


def test_replay_into_postgresql_equals_replay_into_sqlite(
    tmp_path: Path, postgres_url: str
) -> None:
    """Moving from SQLite is one replay; a second replay swaps the schema atomically."""
    simulate(tmp_path / "events", runs=25, seed=41)
    for _ in range(2):
        done = run_cli("replay", tmp_path / "events", "--db", postgres_url, "--json")
        assert done.returncode == 0, done.stderr
        assert "password" not in done.stdout
    assert run_cli("replay", tmp_path / "events", "--db", tmp_path / "rw.db").returncode == 0
    shared, local = open_store(postgres_url), open_store(str(tmp_path / "rw.db"))
    try:
        assert shared.snapshot() == local.snapshot()
    finally:
        shared.close()
        local.close()
    listed = run_cli("status", "--db", postgres_url, "--json")
    assert listed.returncode == 0 and len(orjson.loads(listed.stdout)) == 25


def dead_letters(url: str) -> list[tuple[str, int, str, bytes]]:
    store = open_store(url)
    try:
        rows = store.db.execute("SELECT source, offset, reason, raw FROM dead_letters").fetchall()
        return [(row[0], int(row[1]), row[2], bytes(row[3])) for row in rows]
    finally:
        store.close()


def publish(url: str, *messages: tuple[bytes, dict[str, str]]) -> None:
    """Publish as a shipper would (creating the stream), with whatever headers are given."""

    async def send() -> None:
        client = await nats.connect(url)
        try:
            js = client.jetstream()
            await js.add_stream(StreamConfig(name="runwatch", subjects=["runwatch.part.>"]))
            for data, headers in messages:
                await js.publish("runwatch.events.R1", data, headers=headers)
        finally:
            await client.close()

    asyncio.run(send())


def test_a_message_with_bad_headers_is_dead_lettered_and_the_rest_folded(
    tmp_path: Path, postgres_url: str
) -> None:
    """Headers come from whoever can publish to the stream: a bad offset must not crash the
    processor (and crash it again at every restart), it becomes a dead letter."""
    started = orjson.dumps(
        {
            "event_type": "run_started",
            "event_id": "1",
            "run_id": "R1",
            "timestamp": "2026-01-05T08:00:00Z",
        }
    )
    finished = orjson.dumps(
        {
            "event_type": "run_completed",
            "event_id": "2",
            "run_id": "R1",
            "status": "ok",
            "timestamp": "2026-01-05T08:01:00Z",
        }
    )
    source = {"Runwatch-Source": "host/events.jsonl", "Runwatch-Line": "1"}
    (tmp_path / "rw.yaml").write_text(NEVER_QUIET)
    with NatsServer(tmp_path / "nats", partitions=1) as server:
        publish(
            server.url,
            (started, {**source, "Runwatch-Offset": "0"}),
            (b"not even json", {**source, "Runwatch-Offset": "12 bytes in"}),
            (finished, {**source, "Runwatch-Offset": "99999999999999999999999"}),
            (finished, {**source, "Runwatch-Offset": "200", "Runwatch-Line": "-3"}),
            (finished, {**source, "Runwatch-Offset": "300"}),
        )
        processor = RunwatchProcess(
            tmp_path,
            "p0",
            "tail",
            "--partition",
            "0/1",
            "--config",
            str(tmp_path / "rw.yaml"),
            "--db",
            postgres_url,
            "--nats",
            server.url,
        )
        with processor:
            wait_until(lambda: accepted(postgres_url) == 2, "the good events", 60, show=[processor])
            assert processor.running(), processor.output()
            assert processor.stop() == 0
    letters = sorted(dead_letters(postgres_url))
    assert [(source, reason, raw) for source, _, reason, raw in letters] == [
        ("nats:runwatch", "bad_headers", b"not even json"),
        ("nats:runwatch", "bad_headers", finished),
        ("nats:runwatch", "bad_headers", finished),
    ]
    assert [offset for _, offset, _, _ in letters] == [2, 3, 4], "the stream sequences"
