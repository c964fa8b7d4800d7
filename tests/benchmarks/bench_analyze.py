"""Benchmark `runwatch analyze` next to `runwatch replay` on the same simulated corpus.

Over logs, analyze is a replay (the same decoding, folding and worker processes, into a
scratch database) with an observer beside the fold, then SQL over the tables: its time
should stay close to replay's. Both run as subprocesses from the output directory (so no
config file is picked up), interleaved, on each --shape of corpus.py (optionally with
--hostile-percent of hostile lines), with the page cache warmed; wall clock and CPU time,
median of --repeat runs, plus the largest process's max RSS and the peak RSS of the whole
process tree (measure.py).
`analyze --db` over the replayed database is timed as well.

The counts are checked on every round: the analysis's events accepted, duplicate and rejected,
runs by status, stalled runs and pattern runs must equal replay's summary, and its events per
hour must add up to the accepted events. Times are figures, never assertions; a count that
differs is printed and makes the script exit 1.

Usage:  .venv/bin/python tests/benchmarks/bench_analyze.py [--shape A,B] [--events N]
        [--hostile-percent P] [--repeat N] [--workers N] [--out DIR] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_analyze.py --shape interleaved,simulator
        --events 20000 --repeat 1 --hostile-percent 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from benchkit import (
    BenchError,
    add_corpus_options,
    add_output_options,
    corpus_label,
    load_corpus,
    log,
    machine_facts,
    machine_line,
    main_for,
    remove_database,
    render,
    run_checked,
    runwatch_command,
    write_json,
)
from corpus import CorpusInfo
from measure import Measured, measure

COMMANDS: Final = ("replay", "analyze (logs)", "analyze --db")


@dataclass(slots=True)
class Timings:
    command: str
    runs: list[Measured] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    def peak(self, attribute: str) -> float:
        return max(float(getattr(r.memory, attribute)) for r in self.runs)


def mismatches(replayed: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """What the analysis counts differently from replay; empty when they agree."""
    totals = analysis["totals"]
    pairs = {
        "events_accepted": (replayed["events_accepted"], totals["events_accepted"]),
        "events_duplicate": (replayed["events_duplicate"], totals["events_duplicate"]),
        "events_rejected": (replayed["events_rejected"], totals["events_rejected"]),
        "runs_by_status": (
            replayed["runs_by_status"],
            {s: totals.get(f"runs_{s}", 0) for s in replayed["runs_by_status"]},
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
    cli: Sequence[str],
    corpus: CorpusInfo,
    out: Path,
    workers: list[str],
    timings: dict[str, Timings],
) -> list[str]:
    """replay, analyze over the logs, analyze over replay's database; the count check."""
    db, result = out / "bench-analyze.db", out / "bench-analysis.json"
    remove_database(db)
    replayed = measure(
        [*cli, "replay", corpus.path, "--db", str(db), "--json", "--no-progress", *workers], out
    )
    timings["replay"].runs.append(replayed)
    analyze = [*cli, "analyze", corpus.path, "--format", "json", "--out", str(result)]
    timings["analyze (logs)"].runs.append(measure([*analyze, "--no-progress", *workers], out))
    analysis = json.loads(result.read_text())
    timings["analyze --db"].runs.append(
        measure([*cli, "analyze", "--db", str(db), "--format", "json"], out)
    )
    for command in COMMANDS:
        log(f"{command}: {timings[command].runs[-1].wall_s:.2f} s")
    return mismatches(json.loads(replayed.stdout), analysis)


def report(label: str, corpus: CorpusInfo, timings: dict[str, Timings]) -> list[list[str]]:
    replay = timings["replay"].median
    return [
        [
            label,
            name,
            str(len(t.runs)),
            f"{t.median:.2f}",
            f"{statistics.median(r.cpu_s for r in t.runs):.2f}",
            f"{corpus.events / t.median:,.0f}",
            f"{t.median / replay:.2f}",
            f"{t.peak('largest_process_mb'):.0f}",
            f"{t.peak('tree_rss_mb'):.0f}",
        ]
        for name, t in timings.items()
    ]


def bench_shape(
    args: argparse.Namespace, cli: Sequence[str], shape: str
) -> tuple[str, CorpusInfo, dict[str, Timings], list[str]]:
    corpus = load_corpus(shape, args.events, args, args.out)
    label = corpus_label(corpus, args.events, args.hostile_percent / 100)
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    timings = {name: Timings(name) for name in COMMANDS}
    problems: list[str] = []
    for round_ in range(1, args.repeat + 1):
        log(f"{label}: round {round_}/{args.repeat}")
        found = one_round(cli, corpus, args.out, workers, timings)
        problems += [f"{label}, round {round_}: {p}" for p in found]
    return label, corpus, timings, problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `runwatch analyze` next to `runwatch replay` on corpus shapes "
        "and check that their counts agree."
    )
    add_corpus_options(parser, "simulator", 1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="--workers for replay and analyze (default: theirs)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be at least 1")
    return args


def run(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cli = runwatch_command()
    if "analyze" not in run_checked([*cli, "--help"]).stdout:
        raise BenchError("this runwatch has no `analyze` command")
    machine = machine_facts()
    shapes = [bench_shape(args, cli, shape) for shape in args.shape]
    print(f"runwatch analyze benchmark, {machine_line(machine)}")
    print(f"workers: {args.workers if args.workers is not None else 'default'}\n")
    rows = [row for label, corpus, timings, _ in shapes for row in report(label, corpus, timings)]
    headers = ["corpus", "command", "n", "median s", "CPU s", "lines/s", "x replay"]
    print(render([*headers, "largest proc MB", "peak tree RSS MB"], rows))
    problems = [p for *_, found in shapes for p in found]
    figures: dict[str, Any] = {"machine": machine, "problems": problems}
    for label, corpus, timings, _ in shapes:
        ratio = timings["analyze (logs)"].median / timings["replay"].median
        print(f"\n{label}: analyze over the logs takes {ratio:.2f}x replay's time")
        figures[label] = {
            "corpus": asdict(corpus),
            "ratio_analyze_replay": round(ratio, 3),
            "timings": {
                name: [asdict(r) | {"stdout": None} for r in t.runs] for name, t in timings.items()
            },
        }
    print("counts " + ("match replay's on every round" if not problems else "DIFFER:"))
    for problem in problems:
        print(f"  {problem}")
    figures["counts_match"] = not problems
    write_json(figures, args.json)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_analyze", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
