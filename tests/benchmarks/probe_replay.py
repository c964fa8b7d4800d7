"""Where a replay's memory goes: one in-process replay, reporting at every commit.

Runs `replay()` (as `runwatch replay --workers N` does, with the built-in settings and alert
rules) and, at each commit and at the end, prints the process's RSS next to the sizes of
what the replay keeps: groups in the cache and waiting for a commit (with their event ids
and index entries), the alert triggers held back (on disk) until the final commit, and the
rows of the commit being written. Wraps two methods from outside and reads private fields
to look; changes nothing. Not a timing benchmark: the probes cost CPU.

Usage:  .venv/bin/python tests/benchmarks/probe_replay.py PATH... [--workers N] [--db FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from runwatch.stream.core.decisions import Decisions
from runwatch.stream.core.processor import Processor
from runwatch.stream.services import replay as replay_module
from runwatch.stream.settings.service import Settings


def status_mb(key: str = "VmRSS") -> float:
    """A memory line of /proc/self/status (VmRSS now, VmHWM the peak), in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Probe:
    """Collects one row of sizes per commit."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decisions: Decisions | None = None
        self.rows: list[dict[str, Any]] = []

    def snapshot(self, processor: Processor, moment: str) -> None:
        cache, limbo = processor._cache, processor._limbo  # looking only
        groups = [*cache.values(), *limbo.values()]
        changes = processor._changes
        decisions = self.decisions
        row = {
            "when": moment,
            "s": round(time.perf_counter() - self.started, 1),
            "rss_mb": round(status_mb()),
            "events": processor.seen,
            "cached": len(cache),
            "cache_limit": processor._max_groups,
            "limbo": len(limbo),
            "ids_in_groups": sum(len(g.state.seen) for g in groups),
            "index_entries": sum(len(g.new_index) for g in groups),
            "index_blob_mb": round(sum(len(b) for g in groups for b in g.index_blobs) / 1e6),
            "tasks_in_groups": sum(len(getattr(g.state, "tasks", ())) for g in groups),
            "triggers_pending": len(processor.triggers),
            "held_on_disk": len(decisions.holding or ()) if decisions else 0,
            "rows_runs": len(changes.runs),
            "rows_tasks": len(changes.tasks),
            "rows_states": len(changes.states),
            "rows_index": len(changes.index),
            "outbox": len(changes.outbox),
        }
        self.rows.append(row)
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


def wrap(probe: Probe) -> None:
    commit: Callable[..., Any] = Processor.commit
    init: Callable[..., Any] = Decisions.__init__

    def probed_commit(self: Processor, *args: Any, **kwargs: Any) -> Any:
        probe.snapshot(self, "before commit")
        result = commit(self, *args, **kwargs)
        probe.snapshot(self, "after commit")
        return result

    def probed_init(self: Decisions, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        probe.decisions = self

    Processor.commit = probed_commit
    Decisions.__init__ = probed_init


def files_of(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.rglob("*.jsonl")) if path.is_dir() else [path])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Memory of one replay, commit by commit.")
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--db", type=Path, help="default: a temporary file")
    args = parser.parse_args(argv)
    probe = Probe()
    wrap(probe)
    with tempfile.TemporaryDirectory() as scratch:
        db = args.db or Path(scratch) / "probe.db"
        summary = replay_module.replay(
            files_of(args.paths), db, Settings(), progress=False, workers=args.workers
        )
        print(
            f"replayed {summary.tally.accepted:,} events in {summary.seconds:.1f} s; "
            f"peak RSS (VmHWM) {status_mb('VmHWM'):.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
