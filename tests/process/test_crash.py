"""`runwatch tail` under abuse: kill -9 mid-stream, a second instance, SIGTERM, wall-clock
stalls and heartbeats, all with real processes and real files (no mocks)."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from helpers import RUNWATCH, TailProcess, converged, counters, replay_into
from runwatch.stream.devtools.writer import simulate

SEED = 20261122
KILLS = 12  # at least; the service is killed again and again until the writer is done
WRITER_RATE = 2000  # lines per second

WRITER = r'''
"""Append the lines of SOURCES to OUT_DIR/<source folder>.jsonl at RATE lines/s, in random
bursts across the files, unbuffered, and sometimes half a line, a pause, then the rest."""
import random, sys, time
from collections import deque
from pathlib import Path

out_dir, rate, seed, *sources = sys.argv[1:]
rate, rng = float(rate), random.Random(int(seed))
queues = [deque(Path(s).read_bytes().splitlines(keepends=True)) for s in sources]
handles = [open(Path(out_dir) / (Path(s).parent.name + ".jsonl"), "ab", buffering=0)
           for s in sources]
written, started = 0, time.monotonic()
while any(queues):
    live = [i for i, q in enumerate(queues) if q]
    i = rng.choices(live, weights=[len(queues[j]) for j in live])[0]
    burst = [queues[i].popleft() for _ in range(min(rng.randint(1, 25), len(queues[i])))]
    data = b"".join(burst)
    if rng.random() < 0.15:  # a torn write: the tailer must hold the partial line back
        cut = rng.randrange(1, len(data))
        handles[i].write(data[:cut])
        time.sleep(rng.uniform(0.001, 0.03))
        handles[i].write(data[cut:])
    else:
        handles[i].write(data)
    written += len(burst)
    ahead = written / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)
for handle in handles:
    handle.close()
print(written)
'''


# --- reading what the service left behind -------------------------------------------------


def audit_records(workdir: Path) -> list[dict[str, Any]]:
    """The complete lines of `logs/monitor.jsonl` in the service's working directory."""
    path = workdir / "logs" / "monitor.jsonl"
    if not path.exists():
        return []
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def audit_types(workdir: Path) -> list[str]:
    return [record["type"] for record in audit_records(workdir)]


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows read from the live database through a read-only WAL connection."""
    if not db.exists():
        return []
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the schema is not created yet
    finally:
        connection.close()


def recorded(db: Path, kind: str) -> int:
    """How many derived events of `kind` the database holds (committed, maybe not drained)."""
    rows = query(db, "SELECT count(*) FROM derived_events WHERE type=?", kind)
    return int(rows[0][0]) if rows else 0


def recorded_total(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM derived_events")
    return int(rows[0][0]) if rows else 0


def stalled_flag(db: Path, run_id: str) -> int | None:
    rows = query(db, "SELECT stalled FROM runs WHERE run_id=?", run_id)
    return int(rows[0][0]) if rows else None


def assert_gapless(records: list[dict[str, Any]]) -> None:
    seqs = [record["seq"] for record in records]
    assert seqs == list(range(1, len(seqs) + 1)), f"audit seq not 1..N: {seqs}"


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def append(path: Path, *events: dict[str, Any]) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(orjson.dumps(event) + b"\n" for event in events))


def write_config(path: Path, **keys: str) -> Path:
    path.write_text("".join(f"{key}: {value}\n" for key, value in keys.items()))
    return path


def wait_started(tail: TailProcess, workdir: Path, starts: int = 1) -> None:
    """Until the service has announced its `starts`-th start and is watching (the observer
    starts right after the first commit, so give it a moment)."""
    tail.wait_until(lambda: audit_types(workdir).count("MONITOR_STARTED") >= starts)
    time.sleep(0.2)


def sample_events(count: int, run_id: str = "R1") -> list[dict[str, Any]]:
    return [
        {
            "event_type": "task_started" if n % 2 else "task_completed",
            "timestamp": f"2026-11-22T05:{n // 60:02d}:{n % 60:02d}Z",
            "run_id": run_id,
            "task_id": f"t{n // 2}",
        }
        for n in range(count)
    ]


# --- kill -9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("cache_groups", [4096, 8], ids=["default", "evicting"])
def test_kill_9_during_a_live_stream_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, cache_groups: int
) -> None:
    """kill -9 at any instant, again and again, must leave the same projection as a replay,
    each event counted once, and an audit trail with one gapless seq and no repeats (also
    when runs are evicted from the cache and read back mid-stream)."""
    corpus = tmp_path / "corpus"
    summary = simulate(corpus, runs=100, seed=SEED)
    # The job-scoped pattern files repeat the global one; leave them out so that every
    # line written is a distinct event.
    sources = [
        corpus / "orchestrator" / "events-000.jsonl",
        corpus / "legacy" / "run_events.jsonl",
        corpus / "patterns" / "pattern_events.jsonl",
    ]
    distinct = sum(len(path.read_bytes().splitlines()) for path in sources)
    assert distinct == summary.events
    live = tmp_path / "live"
    live.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "state" / "live.db"
    rng = random.Random(SEED)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(live), str(WRITER_RATE), str(SEED), *map(str, sources)],
        stdout=subprocess.PIPE,
    )
    config = write_config(tmp_path / "runwatch.yaml", cache_groups=str(cache_groups))
    tail = TailProcess(tmp_path, db, live, args=("--config", str(config), "--quiet"))
    kills = while_writing = 0
    try:
        while kills < KILLS or writer.poll() is None:
            tail.start()
            tail.wait_until(lambda: recorded(db, "MONITOR_STARTED") >= tail.starts, timeout=20)
            time.sleep(rng.uniform(0.02, 0.9))
            while_writing += writer.poll() is None
            tail.kill()
            kills += 1
        out, _ = writer.communicate(timeout=60)
        assert writer.returncode == 0
        assert int(out) == distinct
        tail.start()
        wait_started(tail, tmp_path, tail.starts)  # the last kill may have left nothing to do
        tail.wait_for_accepted(distinct, timeout=40)
        assert tail.stop() == 0
    finally:
        if writer.poll() is None:
            writer.kill()
        tail.__exit__()
    totals = counters(db)
    print(
        f"{kills} kills ({while_writing} while the writer was writing), {distinct} events, "
        f"counters {totals}"
    )
    assert totals.get("events_accepted") == distinct
    assert totals.get("events_duplicate", 0) == 0
    assert not {k: v for k, v in totals.items() if k.startswith("rejected.")}
    replayed = tmp_path / "replay.db"
    replay_into(replayed, live)
    assert converged(db) == converged(replayed)
    records = audit_records(tmp_path)
    assert_gapless(records)
    assert [r["db_seq"] for r in records] == list(range(1, recorded_total(db) + 1)), (
        "every derived event must reach the audit trail exactly once, in order"
    )
    types = [r["type"] for r in records]
    assert types.count("MONITOR_STARTED") == tail.starts == kills + 1
    assert types.count("MONITOR_STOPPED") == 1
    assert types[-1] == "MONITOR_STOPPED"


# --- backlog on start ---------------------------------------------------------------------


def test_backlog_present_at_start_is_read_without_a_rescan(tmp_path: Path) -> None:
    """Events written while the service was down must be caught up on start, not when a
    rescan or a new write happens to come along."""
    events = tmp_path / "events"
    events.mkdir()
    log = events / "run.jsonl"
    append(log, *sample_events(50))
    config = write_config(tmp_path / "runwatch.yaml", rescan_interval="1h")
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--config", str(config), "--quiet")) as tail:
        tail.wait_for_accepted(50, timeout=10)
        assert tail.stop() == 0


def test_a_burst_larger_than_one_batch_is_read_to_its_end(tmp_path: Path, log: Path) -> None:
    """`batch_max_bytes` bounds one commit, not what gets read: the rest of a burst must
    follow in the next passes without waiting for another write or a rescan."""
    events = log.parent
    config = write_config(tmp_path / "runwatch.yaml", rescan_interval="1h", batch_max_bytes="4096")
    db = tmp_path / "live.db"
    burst = sample_events(2000)  # ~220 KB in one write: dozens of 4 KiB batches
    with TailProcess(tmp_path, db, events, args=("--config", str(config), "--quiet")) as tail:
        wait_started(tail, tmp_path)
        append(log, *burst)
        tail.wait_for_accepted(len(burst), timeout=10)
        assert tail.stop() == 0


# --- one database, one writer -------------------------------------------------------------


def test_a_second_service_or_a_replay_on_the_same_database_is_refused(
    tmp_path: Path, log: Path
) -> None:
    """Two writers on one database would corrupt checkpoints; the second must refuse at once
    and say who holds it, and the first must go on unharmed."""
    events = log.parent
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--quiet",)) as tail:
        wait_started(tail, tmp_path)
        append(log, *sample_events(10))
        tail.wait_for_accepted(10)
        assert tail.process is not None
        pid = str(tail.process.pid)
        for command in (
            ["tail", str(events), "--db", str(db)],
            ["replay", str(events), "--db", str(db)],
        ):
            started = time.monotonic()
            second = subprocess.run(
                [*RUNWATCH, *command],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=30,
                check=False,
            )
            print(
                f"`runwatch {command[0]}` refused in {time.monotonic() - started:.2f} s: "
                f"{second.stderr.strip()}"
            )
            assert second.returncode != 0, second.stdout
            assert "in use" in second.stderr and pid in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        assert tail.process.poll() is None, "the running service must not be disturbed"
        append(log, *sample_events(20)[10:])
        tail.wait_for_accepted(20)
        assert tail.stop() == 0
    assert counters(db)["events_accepted"] == 20


# --- SIGTERM ------------------------------------------------------------------------------


def test_sigterm_stops_promptly_with_exit_0_and_a_restart_continues_the_trail(
    tmp_path: Path,
    log: Path,
) -> None:
    """Service managers send SIGTERM and escalate to SIGKILL after a grace period: the
    service must finish, record MONITOR_STOPPED, exit 0, and the next start must carry on
    the same audit trail."""
    events = log.parent
    db = tmp_path / "live.db"
    tail = TailProcess(tmp_path, db, events, args=("--quiet",))
    with tail:
        wait_started(tail, tmp_path)
        append(log, *sample_events(10))
        tail.wait_for_accepted(10)
        time.sleep(0.3)  # let it settle into its idle wait
        assert tail.process is not None
        started = time.monotonic()
        code = tail.stop()
        took = time.monotonic() - started
    print(f"SIGTERM to exit: {took:.3f} s (target < 2 s)")
    assert code == 0
    assert took < 5.0
    first = audit_records(tmp_path)
    assert first[-1]["type"] == "MONITOR_STOPPED"
    with tail:
        wait_started(tail, tmp_path, 2)
        append(log, *sample_events(14)[10:])
        tail.wait_for_accepted(14)
        assert tail.stop() == 0
    records = audit_records(tmp_path)
    assert records[: len(first)] == first, "the trail is append-only"
    assert records[len(first)]["type"] == "MONITOR_STARTED"
    assert records[len(first)]["seq"] == first[-1]["seq"] + 1
    assert_gapless(records)
    assert [r["type"] for r in records].count("MONITOR_STOPPED") == 2
    assert records[-1]["type"] == "MONITOR_STOPPED"


# --- the wall clock -----------------------------------------------------------------------


def test_a_silent_run_is_flagged_stalled_on_the_wall_clock_and_recovers(
    tmp_path: Path, log: Path
) -> None:
    """Live, a run that goes quiet must be flagged by the passing of time alone (no new
    event needs to arrive), and cleared by its next event."""
    events = log.parent
    config = write_config(tmp_path / "runwatch.yaml", stall_after="2s", tick_interval="0.2s")
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--config", str(config))) as tail:
        wait_started(tail, tmp_path)
        append(
            log,
            {"event_type": "run_started", "timestamp": iso_now(), "run_id": "S1"},
            {"event_type": "task_started", "timestamp": iso_now(), "run_id": "S1", "task_id": "t1"},
        )
        tail.wait_for_accepted(2)
        assert stalled_flag(db, "S1") == 0
        tail.wait_until(
            lambda: stalled_flag(db, "S1") == 1 and "RUN_STALLED" in audit_types(tmp_path),
            timeout=10,
        )
        stalled = [r for r in audit_records(tmp_path) if r["type"] == "RUN_STALLED"]
        assert [r["run_id"] for r in stalled] == ["S1"]
        assert stalled[0]["silent_s"] >= 2.0, stalled[0]
        append(
            log,
            {
                "event_type": "task_progress",
                "timestamp": iso_now(),
                "run_id": "S1",
                "task_id": "t1",
            },
        )
        tail.wait_until(lambda: "RUN_RECOVERED" in audit_types(tmp_path), timeout=10)
        assert stalled_flag(db, "S1") == 0
        assert tail.stop() == 0
    records = audit_records(tmp_path)
    assert [r["run_id"] for r in records if r["type"] == "RUN_RECOVERED"][:1] == ["S1"]
    assert_gapless(records)
    assert "RUN_STALLED" in tail.output(), "derived events are also printed on the console"


def test_heartbeats_are_recorded_at_the_configured_interval(tmp_path: Path, log: Path) -> None:
    """A HEARTBEAT in the trail is how an operator tells a quiet service from a dead one."""
    events = log.parent
    config = write_config(tmp_path / "runwatch.yaml", heartbeat_interval="0.5s")
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--config", str(config), "--quiet")) as tail:
        wait_started(tail, tmp_path)
        append(log, *sample_events(6))
        tail.wait_for_accepted(6)
        before = audit_types(tmp_path).count("HEARTBEAT")
        tail.wait_until(lambda: audit_types(tmp_path).count("HEARTBEAT") >= before + 2, timeout=10)
        assert tail.stop() == 0
    records = audit_records(tmp_path)
    assert_gapless(records)
    beats = [r for r in records if r["type"] == "HEARTBEAT"]
    assert beats[-1]["events_accepted"] == 6
    assert beats[-1]["files"] == 1
