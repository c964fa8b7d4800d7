"""`runwatch tail` started on a backlog folds it in worker processes, like replay does, and
commits exactly what a replay of the same files builds."""

from __future__ import annotations

from pathlib import Path

from helpers import TailProcess, converged, replay_into
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
