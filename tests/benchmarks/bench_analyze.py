"""Benchmark `runwatch analyze` next to `runwatch replay` on the same simulated corpus.

Over logs, analyze is a replay (the same decoding, folding and worker processes, into a
scratch database) with an observer beside the fold, then SQL over the tables: its time
should stay close to replay's. Both run as subprocesses from the output directory (so no
config file is picked up), interleaved, on the corpus `bench_replay.py` generates and reuses
(`runwatch simulate --seed 1`), with the page cache warmed; wall clock, median of --repeat
runs, plus the largest process's max RSS and the peak RSS of the whole process tree.
`analyze --db` over the replayed database is timed as well.

The counts are checked on every round: the analysis's events accepted, duplicate and rejected,
runs by status, stalled runs and pattern runs must equal replay's summary, and its events per
hour must add up to the accepted events. Times are figures, never assertions; a count that
differs is printed and makes the script exit 1.

Usage:  .venv/bin/python tests/benchmarks/bench_analyze.py [--events N] [--repeat N]
        [--workers N] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bench_replay import (
    REPO,
    Corpus,
    Stats,
    cpu_model,
    ensure_corpus,
    log,
    remove_database,
    render,
    run_checked,
    run_measured,
    runwatch_command,
    source_fingerprint,
    source_revision,
)
from benchkit import BenchError, main_for

COMMANDS: Final = ("replay", "analyze (logs)", "analyze --db")


@dataclass(slots=True)
class Run:
    wall_s: float
    largest_process_mb: float
    tree_rss_mb: float


@dataclass(slots=True)
class Timings:
    command: str
    runs: list[Run] = field(default_factory=list)

    @property
    def stats(self) -> Stats:
        return Stats.of([r.wall_s for r in self.runs])


def timed(command: Sequence[str], cwd: Path) -> tuple[Run, str]:
    """Run `command` once: wall time, memory, and its stdout."""
    wall, memory, stdout = run_measured(command, cwd)
    return Run(wall, memory.largest_process_mb, memory.tree_rss_mb), stdout


def mismatches(replayed: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """What the analysis counts differently from replay; empty when they agree."""
    totals = analysis["totals"]
    pairs = {
        "events_accepted": (replayed["events_accepted"], totals["events_accepted"]),
        "events_duplicate": (replayed["events_duplicate"], totals["events_duplicate"]),
        "events_rejected": (replayed["events_rejected"], totals["events_rejected"]),
        "runs_by_status": (
            replayed["runs_by_status"],
            {s: totals[f"runs_{s}"] for s in replayed["runs_by_status"]},
        ),
        "runs": (sum(replayed["runs_by_status"].values()), totals["runs"]),
        "stalled_runs": (replayed["stalled_runs"], totals["runs_stalled"]),
        "pattern_runs": (replayed["pattern_runs"], totals["pattern_runs"]),
        "events per hour, summed": (
            replayed["events_accepted"],
            sum(h["events"] for h in analysis["events_per_hour"]),
        ),
    }
    return [f"{name}: replay {a}, analyze {b}" for name, (a, b) in pairs.items() if a != b]


def one_round(
    cli: Sequence[str], corpus: Corpus, out: Path, workers: list[str], timings: dict[str, Timings]
) -> list[str]:
    """replay, analyze over the logs, analyze over replay's database; the count check."""
    db, result = out / "bench-analyze.db", out / "bench-analysis.json"
    remove_database(db)
    run, stdout = timed(
        [*cli, "replay", corpus.path, "--db", str(db), "--json", "--no-progress", *workers], out
    )
    timings["replay"].runs.append(run)
    replayed = json.loads(stdout)
    run, _ = timed(
        [
            *cli,
            "analyze",
            corpus.path,
            "--format",
            "json",
            "--out",
            str(result),
            "--no-progress",
            *workers,
        ],
        out,
    )
    timings["analyze (logs)"].runs.append(run)
    analysis = json.loads(result.read_text())
    run, _ = timed([*cli, "analyze", "--db", str(db), "--format", "json"], out)
    timings["analyze --db"].runs.append(run)
    for command in COMMANDS:
        log(f"{command}: {timings[command].runs[-1].wall_s:.2f} s")
    return mismatches(replayed, analysis)


def report(
    corpus: Corpus, timings: dict[str, Timings], problems: list[str], workers: list[str]
) -> dict[str, Any]:
    replay = timings["replay"].stats.median
    rows = [
        [
            name,
            str(t.stats.n),
            f"{t.stats.median:.2f}",
            f"{t.stats.min:.2f}",
            f"{t.stats.max:.2f}",
            f"{corpus.lines / t.stats.median:,.0f}",
            f"{t.stats.median / replay:.2f}",
            f"{max(r.largest_process_mb for r in t.runs):.0f}",
            f"{max(r.tree_rss_mb for r in t.runs):.0f}",
        ]
        for name, t in timings.items()
    ]
    print(
        f"runwatch analyze benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, source "
        f"{source_revision()} (sources {source_fingerprint()}); {cpu_model()}"
    )
    print(
        f"corpus {corpus.label}: {corpus.runs:,} runs, {corpus.events:,} events, "
        f"{corpus.lines:,} lines, {corpus.files:,} files, {corpus.mb:,.1f} MB "
        f"(runwatch simulate --seed 1); workers: {' '.join(workers) or 'default'}\n"
    )
    print(
        render(
            [
                "command",
                "n",
                "median s",
                "min s",
                "max s",
                "lines/s",
                "x replay",
                "largest proc MB",
                "peak tree RSS MB",
            ],
            rows,
            1,
        )
    )
    ratio = timings["analyze (logs)"].stats.median / replay
    print(
        f"\nanalyze over the logs takes {ratio:.2f}x replay's time; counts "
        + ("match replay's on every round" if not problems else "DIFFER:")
    )
    for problem in problems:
        print(f"  {problem}")
    return {
        "corpus": asdict(corpus) | {"mb": round(corpus.mb, 1)},
        "ratio_analyze_replay": round(ratio, 3),
        "counts_match": not problems,
        "problems": problems,
        "timings": {
            name: {"stats": asdict(t.stats), "runs": [asdict(r) for r in t.runs]}
            for name, t in timings.items()
        },
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `runwatch analyze` next to `runwatch replay` on a simulated corpus "
        "and check that their counts agree."
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="events in the corpus (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds; the median is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="--workers for replay and analyze (default: theirs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench-out",
        metavar="DIR",
        help="corpus and scratch files (default: bench-out/ in the repo)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the figures as JSON to FILE"
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")
    return args


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cli = runwatch_command()
    if "analyze" not in run_checked([*cli, "--help"]).stdout:
        raise BenchError("this runwatch has no `analyze` command yet (see stream/cli/analyze.py)")
    corpus = ensure_corpus(cli, out, args.events)
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    timings = {name: Timings(name) for name in COMMANDS}
    problems: list[str] = []
    for round_ in range(1, args.repeat + 1):
        log(f"round {round_}/{args.repeat}")
        problems += [f"round {round_}: {p}" for p in one_round(cli, corpus, out, workers, timings)]
    figures = report(corpus, timings, problems, workers)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_analyze", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
