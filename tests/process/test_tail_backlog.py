"""`runwatch tail` started on a backlog folds it in worker processes, like replay does, and
commits exactly what a replay of the same files builds."""

from __future__ import annotations

from pathlib import Path

from helpers import TailProcess, converged, derived_events, replay_into
from runwatch.stream.devtools.writer import simulate


def _pool_workers(pid: int) -> list[str]:
    """Command lines of the child processes that are multiprocessing workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    lines = []
    for child in children:
        try:
            lines.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except FileNotFoundError:
            continue  # gone meanwhile
    return [line for line in lines if "multiprocessing" in line]


def test_a_backlog_is_folded_by_workers_and_matches_replay(tmp_path: Path) -> None:
    """Many batches' worth of simulated runs, a copy that repeats part of a file and lines
    that are refused: cut into pieces for the workers, the runs that straddle pieces and
    reads are merged, the repeats counted once, the refused lines numbered as in the file."""
    events = tmp_path / "events"
    simulate(events, runs=40, seed=7, fail_rate=0.3, stall_rate=0.0)
    big = max(events.rglob("*.jsonl"), key=lambda path: path.stat().st_size)
    lines = big.read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2 : len(lines) // 2] = [b"not json\n", b'{"event_type": "run_started"}\n']
    big.write_bytes(b"".join(lines))
    (events / "copy.jsonl").write_bytes(b"".join(lines[: len(lines) // 3]))
    replayed = tmp_path / "replay.db"
    summary = replay_into(replayed, events)
    assert summary.tally.duplicate > 0 and summary.tally.rejected_total == 2

    config = tmp_path / "runwatch.yaml"
    config.write_text("batch_max_bytes: 16384\nrescan_interval: 1h\n")
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--config", str(config), "--quiet")) as tail:
        tail.wait_for_accepted(summary.tally.accepted, timeout=120)
        assert tail.process is not None
        assert len(_pool_workers(tail.process.pid)) >= 2, "the backlog went to the workers"
        assert tail.stop(timeout=60) == 0
    assert converged(db) == converged(replayed)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def _peak_after_new_runs(tmp_path: Path, runs: int) -> float:
    """The service's peak RSS once it has folded `runs` one-line runs, all in one read."""
    events = tmp_path / f"events-{runs}"
    events.mkdir()
    (events / "quiet.jsonl").write_bytes(
        b"".join(
            b'{"event_id":"q%d","event_type":"run_started",'
            b'"timestamp":"2026-01-01T00:00:00Z","run_id":"quiet-%06d"}\n' % (i, i)
            for i in range(runs)
        )
    )
    config = tmp_path / "runwatch.yaml"
    config.write_text("cache_groups: 64\ncache_groups_max: 64\nrescan_interval: 1h\n")
    with TailProcess(
        tmp_path, tmp_path / f"{runs}.db", events, args=("--config", str(config), "--quiet")
    ) as tail:
        tail.wait_for_accepted(runs, timeout=120)
        assert tail.process is not None
        peak = _peak_rss_mb(tail.process.pid)
        assert tail.stop(timeout=60) == 0
    return peak


def test_a_read_of_many_new_runs_is_written_out_in_parts(tmp_path: Path) -> None:
    """Every line a new run, 30,000 of them in one read: the service writes them out as its
    cache fills instead of holding them all until the read is folded, so its memory follows
    `cache_groups`, not what the input says (it was about 75 MB more than for 3,000)."""
    small = _peak_after_new_runs(tmp_path, 3_000)
    large = _peak_after_new_runs(tmp_path, 30_000)
    assert large - small < 30, f"peak RSS {small:.0f} MB for 3,000 runs, {large:.0f} for 30,000"


def test_an_old_backlog_is_not_judged_silent_while_it_is_read(tmp_path: Path) -> None:
    """Runs whose lines are weeks old, read by many small reads over many ticks: a run's
    silence is judged once the backlog is read, not at every tick (which abandoned the
    runs, brought them back with their next line, and abandoned them again, each time
    writing them out and reading them back)."""
    events = tmp_path / "events"
    events.mkdir()
    runs, rounds = 300, 100
    start = 1_767_225_600  # 2026-01-01: weeks older than forget_after
    (events / "old.jsonl").write_bytes(
        b"".join(
            b'{"event_type":"task_progress","timestamp":%d,"run_id":"old-%03d","task_id":"t%d"}\n'
            % (start + n * runs + run, run, n)
            for n in range(rounds)
            for run in range(runs)
        )
    )
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        "batch_max_bytes: 8192\ntick_interval: 0.02\nforget_after: 1d\nrescan_interval: 1h\n"
    )
    db = tmp_path / "live.db"
    with TailProcess(tmp_path, db, events, args=("--config", str(config), "--quiet")) as tail:
        tail.wait_for_accepted(runs * rounds, timeout=120)

        def abandoned() -> list[str]:
            found = derived_events(db)
            return [e["run_id"] for e in found if e["type"] == "RUN_ABANDONED"]

        tail.wait_until(lambda: len(set(abandoned())) == runs, timeout=60)
        assert tail.stop(timeout=60) == 0
    assert sorted(abandoned()) == sorted(f"old-{run:03d}" for run in range(runs))
