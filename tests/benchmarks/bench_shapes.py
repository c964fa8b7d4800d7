"""Benchmark `runwatch replay` against `jq` on the corpus shapes real deployments write.

For each shape of `corpus.py` (one big file of sequential runs; 40 rolled files of ~3,000
interleaved runs; one giant run plus 50 small ones; the simulator's many small files), side
by side in one run on the same files:

* `jq -c .run_id` over the files (stdout to /dev/null): the floor for "parse every line once";
* `runwatch replay` as a subprocess into a fresh database, once per `--workers` count
  (default 1 and 2), from the corpus directory so no config file is picked up;
* events/s (lines over wall time), the ratio replay/jq, the speedup from 1 to 2 workers
  (median wall time with 1 worker over the median with 2);
* CPU seconds of the whole tree (user + system of the command and every process it waited
  for, replay's pool workers included), per event and as a ratio to jq's: on a shared
  machine the wall clock swings with other people's load, CPU time much less;
* peak memory of the whole replay process tree: the largest sum of VmRSS over the replay
  process and its workers seen at one moment, polling /proc every 50 ms (`peak tree RSS`,
  copy-on-write pages shared after fork count once per process, so it is an upper bound),
  and the kernel's max RSS of the largest single process (a wrapper's
  getrusage(RUSAGE_CHILDREN).ru_maxrss: the maximum over the processes, not a sum).

Rounds interleave jq and the replays, after the page cache is warmed; medians of `--repeat`
rounds. The memory check repeats the replays on bigger corpora (`--memory-events`, 3M by
default, `--memory-repeat` rounds, 1 by default) and reports how the peak grows. The
machine is shared, so figures are noisy: the load average at start and end is printed.

Usage:  .venv/bin/python tests/benchmarks/bench_shapes.py [--events N] [--shapes a,b]
        [--workers 1,2] [--repeat N] [--memory-events N] [--memory-shapes a,b]
        [--memory-repeat N] [--out DIR] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_shapes.py --events 100000 --repeat 1
        --memory-events 0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench_replay import (
    POLL_S,
    REPO,
    Memory,
    TreeSampler,
    child_env,
    has_workers_option,
    log,
    machine_facts,
    remove_database,
    render,
    runwatch_command,
    source_fingerprint,
)
from benchkit import BenchError, count_lines, main_for
from corpus import SHAPES, CorpusInfo, corpus_files, ensure

JQ: Final = "jq -c .run_id"
# Runs a command and writes the rusage of everything it waited for: the largest process's
# max RSS (KB) and the CPU seconds of the whole tree (workers are waited for by replay).
RUSAGE_WRAPPER: Final = (
    "import json, resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    json.dump([usage.ru_maxrss, usage.ru_utime, usage.ru_stime], out)\n"
    "sys.exit(code)\n"
)


CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class ParentCpuSampler(TreeSampler):
    """The tree sampler, also keeping the CPU seconds of the command itself (the wrapper's
    child: the replay parent, without its workers), as last seen before it exits."""

    parent_cpu_s = 0.0

    def sample(self) -> None:
        super().sample()
        try:
            with open(f"/proc/{self.root}/task/{self.root}/children") as handle:
                child = handle.read().split()[0]
            with open(f"/proc/{child}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return
        # utime and stime are fields 14 and 15 of stat; 12 and 13 after the ")".
        self.parent_cpu_s = max(
            self.parent_cpu_s, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        )


@dataclass(slots=True)
class Timing:
    """Every run of one command on one corpus."""

    command: str
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    parent_cpu_s: list[float] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu_s)

    def peak(self, attribute: str) -> float:
        return max((float(getattr(m, attribute)) for m in self.memory), default=0.0)


@dataclass(slots=True)
class ShapeResult:
    label: str  # "single 1M"
    corpus: CorpusInfo
    generated_s: float | None
    timings: dict[str, Timing] = field(default_factory=dict)

    def timing(self, command: str) -> Timing:
        return self.timings.setdefault(command, Timing(command))

    def workers(self) -> list[int]:
        """The --workers counts this corpus was replayed with."""
        return [int(c.rsplit(" ", 1)[1]) for c in self.timings if c.startswith("replay")]


def replay_label(workers: int) -> str:
    return f"replay --workers {workers}"


def size_label(events: int) -> str:
    if events % 1_000_000 == 0:
        return f"{events // 1_000_000}M"
    return f"{events // 1_000}k" if events % 1_000 == 0 else str(events)


# --- timed commands -------------------------------------------------------------------------


def measured(command: Sequence[str], cwd: Path, timing: Timing) -> str:
    """Run `command` once under the tree sampler; its wall and CPU time and memory go into
    `timing`; returns its stdout."""
    with tempfile.TemporaryDirectory(dir=cwd) as scratch:
        report = Path(scratch) / "rusage"
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", RUSAGE_WRAPPER, str(report), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=child_env(),
        )
        sampler = ParentCpuSampler(process.pid)
        with sampler:
            stdout, stderr = process.communicate()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise BenchError(
                f"`{shlex.join(command)}` exited with {process.returncode}:\n{stderr.strip()}"
            )
        maxrss_kb, user_s, system_s = json.loads(report.read_text())
    sampler.memory.largest_process_mb = maxrss_kb / 1024
    timing.wall_s.append(wall)
    timing.cpu_s.append(user_s + system_s)
    timing.parent_cpu_s.append(sampler.parent_cpu_s)
    timing.memory.append(sampler.memory)
    return stdout


def time_jq(corpus: CorpusInfo, out: Path, timing: Timing) -> None:
    script = (
        f"find {shlex.quote(corpus.path)} -name '*.jsonl' -print0 | sort -z "
        f"| xargs -0 {JQ} > /dev/null"
    )
    measured(["sh", "-c", script], out, timing)


def time_replay(
    cli: Sequence[str], corpus: CorpusInfo, out: Path, workers: int, timing: Timing
) -> None:
    db = out / "bench-shapes.db"
    remove_database(db)
    command = [*cli, "replay", corpus.path, "--db", str(db), "--json", "--no-progress"]
    summary = json.loads(measured([*command, "--workers", str(workers)], out, timing))
    seen = summary["events_accepted"] + summary["events_duplicate"] + summary["events_rejected"]
    if seen != corpus.events:
        log(f"warning: replay saw {seen:,} events, the corpus has {corpus.events:,}")
    timing.summaries.append(summary)
    remove_database(db)


def bench_shape(
    cli: Sequence[str],
    shape: str,
    events: int,
    seed: int,
    out: Path,
    workers: Sequence[int],
    repeat: int,
    jq: bool,
) -> ShapeResult:
    label = f"{shape} {size_label(events)}"
    started = time.perf_counter()
    corpus, reused = ensure(shape, events, seed, out)
    generated = None if reused else time.perf_counter() - started
    log(
        f"{label}: {'reusing' if reused else 'generated'} {corpus.events:,} events, "
        f"{corpus.files} files, {corpus.bytes / 1e6:,.0f} MB"
        + ("" if generated is None else f" in {generated:.1f} s")
    )
    count_lines(corpus_files(Path(corpus.path)))  # warms the page cache
    result = ShapeResult(label, corpus, generated)
    for round_ in range(1, repeat + 1):
        if jq:
            time_jq(corpus, out, result.timing(JQ))
            log(f"{label} {round_}/{repeat}: jq {result.timing(JQ).wall_s[-1]:.2f} s")
        for count in workers:
            timing = result.timing(replay_label(count))
            time_replay(cli, corpus, out, count, timing)
            log(
                f"{label} {round_}/{repeat}: {timing.command}: {timing.wall_s[-1]:.2f} s "
                f"wall, {timing.cpu_s[-1]:.2f} s CPU, "
                f"peak tree RSS {timing.memory[-1].tree_rss_mb:.0f} MB"
            )
    return result


# --- report ---------------------------------------------------------------------------------


def speedup(result: ShapeResult, low: int, high: int) -> float | None:
    slow, fast = result.timings.get(replay_label(low)), result.timings.get(replay_label(high))
    return slow.median / fast.median if slow and fast else None


def figures_of(result: ShapeResult) -> dict[str, Any]:
    corpus, jq, workers = result.corpus, result.timings.get(JQ), result.workers()
    figures: dict[str, Any] = {
        "shape": corpus.shape,
        "events": corpus.events,
        "runs": corpus.runs,
        "files": corpus.files,
        "mb": round(corpus.bytes / 1e6, 1),
        "largest_run_tasks": corpus.largest_run_tasks,
    }
    if jq:
        figures["jq_median_s"] = round(jq.median, 3)
        figures["jq_median_cpu_s"] = round(jq.median_cpu, 3)
    for count in workers:
        timing = result.timings[replay_label(count)]
        entry: dict[str, Any] = {
            "median_s": round(timing.median, 3),
            "wall_s": [round(w, 3) for w in timing.wall_s],
            "median_cpu_s": round(timing.median_cpu, 3),
            "cpu_s": [round(c, 3) for c in timing.cpu_s],
            "events_per_s": round(corpus.events / timing.median),
            "cpu_us_per_event": round(timing.median_cpu / corpus.events * 1e6, 2),
            "parent_cpu_s": [round(c, 3) for c in timing.parent_cpu_s],
            "median_parent_cpu_s": round(statistics.median(timing.parent_cpu_s), 3),
            "peak_tree_rss_mb": round(timing.peak("tree_rss_mb"), 1),
            "peak_tree_pss_mb": round(timing.peak("tree_pss_mb"), 1),
            "largest_process_mb": round(timing.peak("largest_process_mb"), 1),
            "parent_hwm_mb": round(timing.peak("parent_hwm_mb"), 1),
            "processes": max(m.processes for m in timing.memory),
        }
        if jq:
            entry["ratio_replay_jq"] = round(timing.median / jq.median, 3)
            entry["cpu_ratio_replay_jq"] = round(timing.median_cpu / jq.median_cpu, 3)
        figures[f"workers_{count}"] = entry
    if {1, 2} <= set(workers):
        gain = speedup(result, 1, 2)
        figures["speedup_1_to_2_workers"] = None if gain is None else round(gain, 3)
    return figures


def table(results: Sequence[ShapeResult]) -> str:
    rows: list[list[str]] = []
    for result in results:
        corpus, jq = result.corpus, result.timings.get(JQ)
        for timing in result.timings.values():
            replayed = timing.command != JQ
            ratio = f"{timing.median / jq.median:.2f}" if jq and replayed else "-"
            cpu_ratio = f"{timing.median_cpu / jq.median_cpu:.2f}" if jq and replayed else "-"
            rows.append(
                [
                    result.label,
                    timing.command,
                    str(len(timing.wall_s)),
                    f"{timing.median:.2f}",
                    f"{min(timing.wall_s):.2f}-{max(timing.wall_s):.2f}",
                    f"{corpus.events / timing.median:,.0f}",
                    ratio,
                    f"{timing.median_cpu:.2f}",
                    f"{timing.median_cpu / corpus.events * 1e6:.1f}",
                    cpu_ratio,
                    f"{statistics.median(timing.parent_cpu_s):.2f}" if replayed else "-",
                    f"{timing.peak('tree_rss_mb'):,.0f}" if replayed else "-",
                    f"{timing.peak('largest_process_mb'):,.0f}" if replayed else "-",
                ]
            )
        if {1, 2} <= set(result.workers()) and (gain := speedup(result, 1, 2)):
            rows.append([result.label, "speedup 1 -> 2 workers"] + ["", f"x{gain:.2f}"] + [""] * 9)
    headers = [
        "corpus",
        "command",
        "n",
        "median s",
        "range s",
        "events/s",
        "replay/jq",
        "CPU s",
        "CPU µs/ev",
        "CPU replay/jq",
        "parent CPU s",
        "peak tree RSS MB",
        "largest proc MB",
    ]
    return render(headers, rows)


def corpus_table(results: Sequence[ShapeResult]) -> str:
    rows = [
        [
            r.label,
            f"{r.corpus.events:,}",
            f"{r.corpus.runs:,}",
            f"{r.corpus.largest_run_tasks:,}",
            f"{r.corpus.files:,}",
            f"{r.corpus.bytes / 1e6:,.0f}",
            "reused" if r.generated_s is None else f"{r.generated_s:.0f} s",
        ]
        for r in results
    ]
    headers = ["corpus", "events", "runs", "largest run (tasks)", "files", "MB", "generated"]
    return render(headers, rows, 1)


def growth_lines(results: Sequence[ShapeResult], big: Sequence[ShapeResult]) -> list[str]:
    lines = []
    small_by_shape = {r.corpus.shape: r for r in results}
    for result in big:
        small = small_by_shape.get(result.corpus.shape)
        if small is None:
            continue
        for count in sorted(set(small.workers()) & set(result.workers())):
            before = small.timings[replay_label(count)].peak("tree_rss_mb")
            after = result.timings[replay_label(count)].peak("tree_rss_mb")
            factor = result.corpus.events / small.corpus.events
            lines.append(
                f"{result.corpus.shape}, --workers {count}: peak tree RSS {before:,.0f} MB at "
                f"{small.label.split()[-1]} -> {after:,.0f} MB at {result.label.split()[-1]} "
                f"(x{after / before:.2f} for x{factor:.1f} events)"
            )
    return lines


# --- main -----------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def shape_list(text: str) -> list[str]:
    shapes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    return shapes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time `runwatch replay` against jq on several corpus shapes, with the "
        "1 -> 2 worker speedup and the peak memory of the process tree."
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="events per corpus")
    parser.add_argument("--shapes", type=shape_list, default=list(SHAPES), help="comma list")
    parser.add_argument(
        "--workers", type=int_list, default=[1, 2], help="replay --workers values, comma list"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument(
        "--memory-events",
        type=int,
        default=3_000_000,
        help="events per corpus of the memory check; 0 skips it",
    )
    parser.add_argument(
        "--memory-shapes", type=shape_list, default=["single"], help="shapes of the memory check"
    )
    parser.add_argument("--memory-repeat", type=int, default=1, help="rounds of the memory check")
    parser.add_argument(
        "--memory-workers",
        type=int_list,
        help="replay --workers values of the memory check (default: as --workers)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench-out", metavar="DIR", help="corpora, scratch"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures as JSON")
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1 or args.memory_repeat < 1 or args.memory_events < 0:
        parser.error("--events, --repeat and --memory-repeat must be >= 1, --memory-events >= 0")
    if not args.workers or min(args.workers) < 0:
        parser.error("--workers takes counts >= 0")
    return args


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cli = runwatch_command()
    jq = shutil.which("jq") is not None
    if not jq:
        log("jq is not installed: no jq timings and no replay/jq ratio")
    if not has_workers_option(cli):
        raise BenchError("`runwatch replay` has no --workers option")
    machine = machine_facts(shutil.which("jq"), cli, True)
    workers: list[int] = args.workers
    results = [
        bench_shape(cli, shape, args.events, args.seed, out, workers, args.repeat, jq)
        for shape in args.shapes
    ]
    memory_workers: list[int] = args.memory_workers or workers
    big = [
        bench_shape(
            cli, shape, args.memory_events, args.seed, out, memory_workers, args.memory_repeat, jq
        )
        for shape in (args.memory_shapes if args.memory_events else [])
    ]
    machine["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    machine["source_fingerprint_at_end"] = source_fingerprint()
    print(
        f"runwatch replay by corpus shape, {machine['date']}, source "
        f"{machine['runwatch_source']}; {machine['cpu']}, {machine['usable_cpus']} usable "
        f"CPUs; {machine['jq']}; load average at start "
        f"{' '.join(map(str, machine['load_average_1_5_15']))}, at end "
        f"{' '.join(map(str, machine['load_average_at_end']))}"
    )
    if machine["source_fingerprint_at_end"] != machine["source_fingerprint"]:
        print("WARNING: the sources changed during the run: the figures mix two versions")
    print(f"\ncorpora (corpus.py, seed {args.seed}):\n{corpus_table([*results, *big])}")
    print(
        f"\nwall clock, medians (jq: find | sort | xargs jq -c .run_id > /dev/null); memory "
        f"polled every {POLL_S * 1000:.0f} ms over the replay and its workers:\n"
        + table([*results, *big])
    )
    growth = growth_lines(results, big)
    if growth:
        print("\nmemory growth with history:\n" + "\n".join(f"  {line}" for line in growth))
    if args.json:
        document = {
            "machine": machine,
            "figures": {r.label: figures_of(r) for r in [*results, *big]},
            "memory_growth": growth,
            "runs": {
                r.label: {
                    command: {
                        "wall_s": t.wall_s,
                        "memory": [asdict(m) for m in t.memory],
                        "summaries": t.summaries,
                    }
                    for command, t in r.timings.items()
                }
                for r in [*results, *big]
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_shapes", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
