"""Benchmark `runwatch replay` against `jq` on the corpus shapes real deployments write, and
its peak memory as the history grows.

For each `--shape` of corpus.py (one big file of sequential runs; 40 rolled files of ~3,000
interleaved runs; one giant run plus 50 small ones; the simulator's many small files), at
--events events, optionally with --hostile-percent of hostile lines mixed in:

* `jq -c .run_id` over the files (stdout to /dev/null): the floor for "read and parse each
  JSON line once" with a mature C tool. Replay does that and also folds every event and
  writes a SQLite projection; the ratio replay/jq (target <= 1.0) says whether it keeps up;
* `runwatch replay` as a subprocess into a fresh database, once per `--workers` value
  ("default" runs it without --workers), from the output folder so no config file is
  picked up: wall time, CPU time of the whole tree and of the replay process alone, and
  the peak memory of the tree (measure.py; target: peak tree RSS <= 250 MB);
* the speedup from 1 to 2 workers, when both are asked for.

Rounds interleave jq and the replays, after the page cache is warmed; medians of --repeat
rounds. With --big-events, every shape is replayed once more at that size with the first
--workers value, and the growth of its peak tree RSS is reported (target: nearly flat,
x1.25 at most). Figures, not assertions: the script fails only when a command fails.

Usage:  .venv/bin/python tests/benchmarks/bench_replay.py [--shape A,B] [--events N]
        [--hostile-percent P] [--workers default,0,1,2] [--repeat N] [--big-events N]
        [--out DIR] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_replay.py --shape single,simulator
        --events 20000 --repeat 1 --big-events 40000 --hostile-percent 1
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from benchkit import (
    add_corpus_options,
    add_output_options,
    corpus_label,
    finish_machine,
    load_corpus,
    log,
    machine_facts,
    machine_line,
    main_for,
    remove_database,
    render,
    runwatch_command,
    verdict,
    write_json,
)
from corpus import CorpusInfo
from measure import POLL_S, Measured, measure

JQ: Final = "jq"
# jq stops at the first line it cannot parse: with hostile lines it reads raw lines instead.
JQ_PROGRAMS: Final = {False: "jq -c .run_id", True: "jq -cR 'fromjson? | .run_id'"}
TARGET_RATIO: Final = 1.0
TARGET_RSS_MB: Final = 250.0
TARGET_GROWTH: Final = 1.25  # "nearly flat": the big corpus's peak at most 25 % above


@dataclass(slots=True)
class Timing:
    """Every run of one command on one corpus."""

    command: str
    runs: list[Measured] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)

    @property
    def median_cpu(self) -> float:
        return statistics.median(r.cpu_s for r in self.runs)

    def peak(self, attribute: str) -> float:
        return max(float(getattr(r.memory, attribute)) for r in self.runs)


@dataclass(slots=True)
class ShapeResult:
    label: str  # "single 1M"
    corpus: CorpusInfo
    timings: dict[str, Timing] = field(default_factory=dict)

    def timing(self, command: str) -> Timing:
        return self.timings.setdefault(command, Timing(command))

    def replays(self) -> list[Timing]:
        return [t for t in self.timings.values() if t.command != JQ]


def replay_label(workers: str) -> str:
    return "replay (default workers)" if workers == "default" else f"replay --workers {workers}"


def time_jq(corpus: CorpusInfo, out: Path, timing: Timing) -> None:
    script = (
        f"find {shlex.quote(corpus.path)} -name '*.jsonl' -print0 | sort -z "
        f"| xargs -0 {JQ_PROGRAMS[corpus.hostile > 0]} > /dev/null"
    )
    timing.runs.append(measure(["sh", "-c", script], out))


def time_replay(corpus: CorpusInfo, out: Path, workers: str, timing: Timing) -> None:
    db = out / "bench-replay.db"
    remove_database(db)  # every run starts from nothing, as the first one does
    command = [*runwatch_command(), "replay", corpus.path, "--db", str(db), "--json"]
    command += ["--no-progress"] + ([] if workers == "default" else ["--workers", workers])
    run = measure(command, out)
    summary = json.loads(run.stdout)
    seen = summary["events_accepted"] + summary["events_duplicate"] + summary["events_rejected"]
    if seen != corpus.events:
        log(f"warning: replay saw {seen:,} lines, the corpus has {corpus.events:,}")
    summary["db_mb"] = round(db.stat().st_size / 1e6, 1)
    timing.runs.append(run)
    timing.summaries.append(summary)
    remove_database(db)


def bench_shape(
    args: argparse.Namespace, shape: str, events: int, workers: Sequence[str], repeat: int
) -> ShapeResult:
    out: Path = args.out
    corpus = load_corpus(shape, events, args, out)
    result = ShapeResult(corpus_label(corpus, events, args.hostile_percent / 100), corpus)
    for round_ in range(1, repeat + 1):
        if args.jq:
            time_jq(corpus, out, result.timing(JQ))
            log(f"{result.label} {round_}/{repeat}: jq {result.timing(JQ).runs[-1].wall_s:.2f} s")
        for count in workers:
            timing = result.timing(replay_label(count))
            time_replay(corpus, out, count, timing)
            run = timing.runs[-1]
            log(
                f"{result.label} {round_}/{repeat}: {timing.command}: {run.wall_s:.2f} s wall, "
                f"{run.cpu_s:.2f} s CPU, peak tree RSS {run.memory.tree_rss_mb:.0f} MB"
            )
    return result


# --- report ---------------------------------------------------------------------------------


def speedup(result: ShapeResult) -> float | None:
    slow, fast = result.timings.get(replay_label("1")), result.timings.get(replay_label("2"))
    return slow.median / fast.median if slow and fast else None


def figures_of(result: ShapeResult) -> dict[str, Any]:
    corpus, jq = result.corpus, result.timings.get(JQ)
    figures: dict[str, Any] = asdict(corpus) | {"mb": round(corpus.bytes / 1e6, 1)}
    if jq:
        figures |= {"jq_median_s": round(jq.median, 3), "jq_median_cpu_s": round(jq.median_cpu, 3)}
    for timing in result.replays():
        rss = timing.peak("tree_rss_mb")
        entry: dict[str, Any] = {
            "median_s": round(timing.median, 3),
            "median_cpu_s": round(timing.median_cpu, 3),
            "median_parent_cpu_s": round(statistics.median(r.parent_cpu_s for r in timing.runs), 3),
            "lines_per_s": round(corpus.events / timing.median),
            "cpu_us_per_line": round(timing.median_cpu / corpus.events * 1e6, 2),
            "memory_peaks_mb": {
                name: round(timing.peak(name), 1)
                for name in ("tree_rss_mb", "tree_pss_mb", "largest_process_mb", "parent_hwm_mb")
            },
            "processes": max(r.memory.processes for r in timing.runs),
            "db_mb": timing.summaries[-1]["db_mb"],
            "rss_meets_target": rss <= TARGET_RSS_MB,
        }
        if jq:
            ratio = timing.median / jq.median
            entry |= {
                "ratio_replay_jq": round(ratio, 3),
                "ratio_meets_target": ratio <= TARGET_RATIO,
            }
        figures[timing.command] = entry
    gain = speedup(result)
    if gain is not None:
        figures["speedup_1_to_2_workers"] = round(gain, 3)
    return figures


def timing_table(results: Sequence[ShapeResult]) -> str:
    rows: list[list[str]] = []
    for result in results:
        corpus, jq = result.corpus, result.timings.get(JQ)
        for timing in result.timings.values():
            walls = [r.wall_s for r in timing.runs]
            replayed = timing.command != JQ
            ratio = f"{timing.median / jq.median:.2f}" if jq and replayed else "-"
            rows.append(
                [
                    result.label,
                    timing.command,
                    str(len(walls)),
                    f"{timing.median:.2f}",
                    f"{min(walls):.2f}-{max(walls):.2f}",
                    f"{corpus.events / timing.median:,.0f}",
                    ratio,
                    f"{timing.median_cpu:.2f}",
                    f"{timing.median_cpu / corpus.events * 1e6:.1f}",
                ]
            )
        if gain := speedup(result):
            rows.append([result.label, "speedup 1 -> 2 workers", "", f"x{gain:.2f}", *[""] * 5])
    headers = ["corpus", "command", "n", "median s", "range s", "lines/s", "replay/jq"]
    return render([*headers, "CPU s", "CPU µs/line"], rows)


def memory_table(results: Sequence[ShapeResult]) -> str:
    names = ("largest_process_mb", "parent_hwm_mb", "sum_of_hwm_mb", "tree_rss_mb", "tree_pss_mb")
    rows = [
        [
            result.label,
            t.command,
            *(f"{t.peak(name):,.0f}" for name in names),
            str(max(r.memory.processes for r in t.runs)),
            f"{t.summaries[-1]['db_mb']:,.1f}",
        ]
        for result in results
        for t in result.replays()
    ]
    headers = ["corpus", "command", "largest proc", "parent HWM", "sum HWM", "peak tree RSS"]
    return render([*headers, "peak tree PSS", "procs", "db MB"], rows)


def corpus_table(results: Sequence[ShapeResult]) -> str:
    rows = [
        [
            r.label,
            f"{r.corpus.events:,}",
            f"{r.corpus.hostile:,}",
            f"{r.corpus.runs:,}",
            f"{r.corpus.largest_run_tasks:,}",
            f"{r.corpus.files:,}",
            f"{r.corpus.bytes / 1e6:,.0f}",
        ]
        for r in results
    ]
    headers = ["corpus", "lines", "hostile", "runs", "largest run (tasks)", "files", "MB"]
    return render(headers, rows, 1)


def key_lines(results: Sequence[ShapeResult], big: Sequence[ShapeResult]) -> list[str]:
    lines = []
    for result in results:
        jq = result.timings.get(JQ)
        for timing in result.replays():
            rss = timing.peak("tree_rss_mb")
            text = f"{result.label}, {timing.command}: peak tree RSS {rss:,.0f} MB "
            text += f"(<= {TARGET_RSS_MB:.0f}: {verdict(rss <= TARGET_RSS_MB)})"
            if jq:
                ratio = timing.median / jq.median
                text += f"; replay/jq {ratio:.2f} (<= 1.0: {verdict(ratio <= TARGET_RATIO)})"
            lines.append(text)
    small_of = {r.corpus.shape: r for r in results}
    for result in big:
        small = small_of[result.corpus.shape]
        command = result.replays()[0].command
        before = small.timings[command].peak("tree_rss_mb")
        after = result.timings[command].peak("tree_rss_mb")
        growth = after / before
        lines.append(
            f"{result.corpus.shape}, {command}: peak tree RSS {before:,.0f} MB at "
            f"{small.label} -> {after:,.0f} MB at {result.label}, x{growth:.2f} "
            f"(<= x{TARGET_GROWTH}: {verdict(growth <= TARGET_GROWTH)})"
        )
    return lines


# --- main -----------------------------------------------------------------------------------


def workers_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(v != "default" and not v.isdigit() for v in values):
        raise argparse.ArgumentTypeError("a comma list of worker counts >= 0 and 'default'")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `runwatch replay` against jq on corpus shapes, with CPU time, the "
        "1 -> 2 worker speedup and the peak memory of the process tree."
    )
    add_corpus_options(parser, "simulator", 1_000_000)
    parser.add_argument(
        "--workers",
        type=workers_list,
        default=["default", "0"],
        help="replay --workers values, comma list; 'default' passes none (default: default,0)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument(
        "--big-events",
        type=int,
        default=5_000_000,
        help="every shape once more at this size, first --workers value; 0 skips",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1 or args.big_events < 0:
        parser.error("--events and --repeat must be >= 1, --big-events >= 0")
    return args


def run(args: argparse.Namespace) -> int:
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.jq = shutil.which("jq") is not None
    if not args.jq:
        log("jq is not installed: no jq timings and no replay/jq ratio")
    machine = machine_facts()
    results = [bench_shape(args, s, args.events, args.workers, args.repeat) for s in args.shape]
    sizes = [args.big_events] if args.big_events else []
    big = [bench_shape(args, s, n, args.workers[:1], 1) for n in sizes for s in args.shape]
    print(f"runwatch replay benchmark, {machine_line(machine)}")
    finish_machine(machine)
    every = [*results, *big]
    print(f"\ncorpora (corpus.py, seed {args.seed}):\n{corpus_table(every)}")
    print(
        f"\nwall clock, medians (jq: find | sort | xargs {JQ_PROGRAMS[False]} > /dev/null; "
        f"with hostile lines {JQ_PROGRAMS[True]}):\n{timing_table(every)}"
    )
    print(
        f"\npeak memory, MB (max over rounds; the replay and its workers, polled every "
        f"{POLL_S * 1000:.0f} ms):\n{memory_table(every)}"
    )
    print("\nkey figures:\n" + "\n".join(f"  {line}" for line in key_lines(results, big)))
    document = {
        "machine": machine,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": {
            "ratio_replay_jq_max": TARGET_RATIO,
            "peak_tree_rss_mb_max": TARGET_RSS_MB,
            "rss_growth_max": TARGET_GROWTH,
        },
        "figures": {r.label: figures_of(r) for r in every},
        "runs": {
            r.label: {
                command: {
                    "runs": [asdict(m) | {"stdout": None} for m in t.runs],
                    "summaries": t.summaries,
                }
                for command, t in r.timings.items()
            }
            for r in every
        },
    }
    write_json(document, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_replay", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
