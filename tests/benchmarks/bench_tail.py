"""Benchmark the live service, `runwatch tail`, from the outside: latency, throughput, idle
CPU and restart catch-up. Figures, not assertions: targets are printed beside them.

What it measures, and how:

* Latency (target p99 <= 100 ms). A writer process appends orchestrator events to one file
  at --rate events/s for --seconds, one `write` per line on an O_APPEND descriptor (so every
  line is flushed as it is written); each line carries `payload.sent_ns`, the wall clock read
  just before its write. A poller thread here reads the `events_accepted` counter through a
  read-only WAL connection every --poll-ms and notes when each count was first seen. Line k
  is committed once the count reaches k (one file, distinct events: commits follow file
  order), so its latency is (first time count >= k) - sent_ns of line k. The poll interval
  adds up to --poll-ms to every figure.
* Throughput (target >= 80 % of replay's rate), for each --shape of corpus.py (the
  simulator's by default; optionally with --hostile-percent of hostile lines mixed in). The
  service runs idle on an empty folder; a writer copies the corpus (--events lines) into it
  as fast as it can in 1 MiB appends. Rate = lines / (last commit seen - first append).
  `runwatch replay` of the same files into a fresh database is timed right after (wall
  clock of the command), with its default workers (the target's yardstick) and with
  --workers 0 (one process, like tail).
* Idle CPU (target <= 0.5 s of CPU per 60 s). The service follows a folder that has been
  read to its end; after 5 s its utime+stime (/proc/PID/stat, all threads, clock ticks)
  is read at the start and the end of --idle-seconds.
* Restart catch-up, for each --shape as above. The service is started once on an empty
  folder and stopped (SIGTERM), the corpus is copied in while it is down, and it is started
  again: time from the start to the last event committed. Then, 5 s later, its idle CPU
  is measured again as above, now following the whole corpus (for the simulator's shape
  thousands of files, hundreds of open runs): the idle cost of a service with a realistic
  folder, not an empty one.

The service always runs with built-in defaults (its working directory holds no
config/runwatch.yaml) unless --tail-config is given, with --quiet, and its database in
--out. The script fails only when a command fails (exit 1), never on a target.

Usage:  .venv/bin/python tests/benchmarks/bench_tail.py [--seconds 60] [--rate 1000]
        [--shape A,B] [--events 1000000] [--hostile-percent P] [--idle-seconds 60]
        [--phases latency,throughput,idle,catchup] [--out DIR] [--tail-config FILE]
        [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_tail.py --shape single,giant --events 20000
        --hostile-percent 1 --seconds 3 --rate 200 --idle-seconds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Final

from benchkit import (
    BenchError,
    add_corpus_options,
    add_output_options,
    corpus_label,
    count_lines,
    fresh_dir,
    load_corpus,
    log,
    machine_facts,
    machine_line,
    main_for,
    percentile,
    remove_database,
    render,
    verdict,
    write_json,
)
from corpus import CorpusInfo, corpus_files
from measure import CLOCK_TICKS
from tailer import (
    COPY_WRITER,
    LATENCY_WRITER,
    RUNWATCH,
    CounterPoller,
    Seen,
    Tailer,
    commit_latencies,
    open_runs,
    run_writer,
)

PHASES: Final = ("latency", "throughput", "idle", "catchup")
TARGET_P99_MS: Final = 100.0
TARGET_RATIO: Final = 0.8
TARGET_IDLE_CPU_S: Final = 0.5  # per 60 s
IDLE_SETTLE_S: Final = 5.0
COPY_CHUNK: Final = 1 << 20


# --- phases -------------------------------------------------------------------------------


def bench_latency(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-latency")
    watched = workdir / "events"
    watched.mkdir()
    log_file = watched / "orchestrator.jsonl"
    log_file.write_bytes(b"")
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        log(f"latency: {args.rate:g} events/s for {args.seconds:g} s")
        base = 0  # a fresh database
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            written = run_writer(LATENCY_WRITER, log_file, args.rate, args.seconds, args.seed)
            lines = int(written["lines"])
            done = poller.wait_for(base + lines, tailer, args.timeout, "latency")
        cpu = tailer.cpu_seconds()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    sent = [json.loads(line)["payload"]["sent_ns"] for line in log_file.read_bytes().splitlines()]
    latencies = commit_latencies(poller.changes, sent, base)
    ordered = sorted(latencies)
    result: dict[str, Any] = {
        "rate": args.rate,
        "seconds": args.seconds,
        "lines": lines,
        "writer_seconds": round(written["seconds"], 3),
        "committed": len(latencies),
        "complete": done is not None,
        "poll_ms": args.poll_ms,
        "polls": poller.polls,
        "commits_seen": len(poller.changes),
        "tail_cpu_s": round(cpu, 2),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
    }
    if ordered:
        result |= {
            "p50_ms": percentile(ordered, 50),
            "p90_ms": percentile(ordered, 90),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1],
            "mean_ms": statistics.fmean(ordered),
        }
        result["meets_target"] = done is not None and result["p99_ms"] <= TARGET_P99_MS
    return result


def time_replay(corpus_dir: Path, workdir: Path, lines: int, *options: str) -> dict[str, Any]:
    db = workdir / "replay.db"
    remove_database(db)
    started = time.perf_counter()
    result = subprocess.run(
        [
            *RUNWATCH,
            "replay",
            str(corpus_dir),
            "--db",
            str(db),
            "--json",
            "--no-progress",
            *options,
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"runwatch replay failed:\n{result.stderr.strip()}")
    summary = json.loads(result.stdout)
    return {
        "wall_s": round(wall, 3),
        "lines_per_s": round(lines / wall),
        "reported_events_per_s": summary["events_per_s"],
        "lines": summary["lines"],
    }


def bench_throughput(args: argparse.Namespace, out: Path, corpus: CorpusInfo) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-throughput")
    watched = workdir / "events"
    watched.mkdir()
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        cpu_before = tailer.cpu_seconds()
        log(f"throughput: copying {corpus.events:,} lines ({corpus.bytes / 1e6:,.0f} MB) in")
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            written = run_writer(COPY_WRITER, corpus.path, watched, COPY_CHUNK)
            at_writer_end = poller.last.seen
            done = poller.wait_for(corpus.events, tailer, args.timeout, "throughput")
        cpu = tailer.cpu_seconds() - cpu_before
        rss = tailer.peak_rss_mb()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    end_ns = done.ns if done is not None else time.time_ns()
    seconds = (end_ns - written["first_ns"]) / 1e9
    committed = done.seen if done is not None else poller.last.seen
    result: dict[str, Any] = {
        "lines": corpus.events,
        "bytes": corpus.bytes,
        "complete": done is not None,
        "committed": committed,
        "seconds": round(seconds, 3),
        "lines_per_s": round(committed / seconds) if seconds > 0 else 0,
        "writer_seconds": round((written["last_ns"] - written["first_ns"]) / 1e9, 3),
        "committed_when_writer_done": at_writer_end,
        "tail_cpu_s": round(cpu, 2),
        "tail_peak_rss_mb": round(rss, 1),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
    }
    log("throughput: timing runwatch replay of the same files")
    replay = time_replay(watched, workdir, corpus.events)
    result["replay"] = replay
    result["ratio_to_replay"] = round(result["lines_per_s"] / replay["lines_per_s"], 3)
    single = time_replay(watched, workdir, corpus.events, "--workers", "0")
    result["replay_one_process"] = single
    result["ratio_to_replay_one_process"] = round(result["lines_per_s"] / single["lines_per_s"], 3)
    result["meets_target"] = done is not None and result["ratio_to_replay"] >= TARGET_RATIO
    return result


def bench_idle(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-idle")
    watched = workdir / "events"
    (watched / "patterns").mkdir(parents=True)
    for n in range(3):  # a few files, read to their end before the measurement
        name = watched / ("patterns" if n else "") / f"events-{n}.jsonl"
        name.write_bytes(
            b"".join(
                json.dumps(
                    {
                        "event_type": "task_started",
                        "timestamp": f"2026-01-05T08:00:{i % 60:02d}Z",
                        "run_id": f"IDLE-{n}",
                        "task_id": f"t{i}",
                    }
                ).encode()
                + b"\n"
                for i in range(100)
            )
        )
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        time.sleep(IDLE_SETTLE_S)
        log(f"idle: measuring CPU over {args.idle_seconds:g} s")
        before, threads_before = tailer.cpu_seconds(), tailer.thread_cpu_seconds()
        time.sleep(args.idle_seconds)
        tailer.check_alive()
        cpu, threads_cpu = (
            tailer.cpu_seconds() - before,
            tailer.thread_cpu_seconds() - threads_before,
        )
        threads = tailer.threads()
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    per_60 = cpu * 60 / args.idle_seconds
    return {
        "seconds": args.idle_seconds,
        "cpu_s": round(cpu, 3),
        "cpu_s_live_threads": round(threads_cpu, 3),
        "cpu_s_per_60s": round(per_60, 3),
        "threads": threads,
        "tick_s": 1 / CLOCK_TICKS,
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
        "meets_target": per_60 <= TARGET_IDLE_CPU_S,
    }


def bench_catchup(
    args: argparse.Namespace, out: Path, corpus: CorpusInfo, replay: dict[str, Any] | None
) -> dict[str, Any]:
    workdir = fresh_dir(out / "tail-catchup")
    watched = workdir / "events"
    watched.mkdir()
    tailer = Tailer(workdir, workdir / "state" / "tail.db", watched, args.tail_config).start()
    try:
        tailer.wait_started()
        tailer.stop()
        log(f"catch-up: {corpus.events:,} lines appended while the service is down")
        run_writer(COPY_WRITER, corpus.path, watched, COPY_CHUNK)
        count_lines(corpus_files(watched))  # same warm page cache as replay
        tailer.start()
        first: Seen | None = None
        with CounterPoller(tailer.db, args.poll_ms / 1000) as poller:
            done = poller.wait_for(corpus.events, tailer, args.timeout, "catch-up")
            first = next((c for c in poller.changes if c.seen > 0), None)
        rss = tailer.peak_rss_mb()
        cpu = tailer.cpu_seconds()
        time.sleep(IDLE_SETTLE_S)
        log(f"catch-up: measuring idle CPU over {args.idle_seconds:g} s on the full folder")
        idle_before = tailer.cpu_seconds()
        time.sleep(args.idle_seconds)
        tailer.check_alive()
        idle_cpu = tailer.cpu_seconds() - idle_before
        code, stop_s = tailer.stop()
    finally:
        tailer.kill()
    end_ns = done.ns if done is not None else time.time_ns()
    seconds = (end_ns - tailer.started_ns) / 1e9
    committed = done.seen if done is not None else poller.last.seen
    result: dict[str, Any] = {
        "lines": corpus.events,
        "complete": done is not None,
        "committed": committed,
        "seconds": round(seconds, 3),
        "first_commit_s": round((first.ns - tailer.started_ns) / 1e9, 3) if first else None,
        "lines_per_s": round(committed / seconds) if seconds > 0 else 0,
        "tail_cpu_s": round(cpu, 2),
        "tail_peak_rss_mb": round(rss, 1),
        "exit_code": code,
        "sigterm_to_exit_s": round(stop_s, 3),
        "files": corpus.files,
        "open_runs": open_runs(tailer.db),
        "idle_seconds": args.idle_seconds,
        "idle_cpu_s": round(idle_cpu, 3),
        "idle_cpu_s_per_60s": round(idle_cpu * 60 / args.idle_seconds, 3),
    }
    result["idle_meets_target"] = result["idle_cpu_s_per_60s"] <= TARGET_IDLE_CPU_S
    if replay is not None:
        result["ratio_to_replay"] = round(result["lines_per_s"] / replay["lines_per_s"], 3)
    return result


# --- report -------------------------------------------------------------------------------


def latency_rows(lat: dict[str, Any]) -> list[list[str]]:
    rows = []
    if "p99_ms" in lat:
        spread = " / ".join(f"{lat[k]:.1f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
        rows.append(
            [
                "latency",
                f"p50 / p90 / p99 / max (ms), {lat['rate']:g} ev/s for {lat['seconds']:g} s",
                spread,
                f"p99 <= {TARGET_P99_MS:.0f}",
                verdict(lat["meets_target"]),
            ]
        )
    committed = f"{lat['committed']:,} / {lat['lines']:,}"
    rows.append(
        ["latency", "lines committed / written", committed, "all", verdict(lat["complete"])]
    )
    return rows


def throughput_rows(label: str, thr: dict[str, Any]) -> list[list[str]]:
    rep, one = thr["replay"], thr["replay_one_process"]
    phase = f"throughput, {label}"
    return [
        [
            phase,
            f"live, {thr['lines']:,} lines appended flat out",
            f"{thr['lines_per_s']:,} lines/s in {thr['seconds']:.1f} s",
            "",
            "" if thr["complete"] else "INCOMPLETE",
        ],
        [
            phase,
            "replay of the same files (wall)",
            f"{rep['lines_per_s']:,} lines/s in {rep['wall_s']:.1f} s",
            "",
            "",
        ],
        [
            phase,
            "live / replay",
            f"{thr['ratio_to_replay']:.2f}",
            f">= {TARGET_RATIO:.2f}",
            verdict(thr["meets_target"]),
        ],
        [
            phase,
            "replay --workers 0 (one process), live / that",
            f"{one['lines_per_s']:,} lines/s in {one['wall_s']:.1f} s; "
            f"{thr['ratio_to_replay_one_process']:.2f}",
            "",
            "",
        ],
        [
            phase,
            "committed when the writer finished",
            f"{thr['committed_when_writer_done']:,} (writer {thr['writer_seconds']:.2f} s)",
            "",
            "",
        ],
        [
            phase,
            "tail CPU s / peak RSS MB",
            f"{thr['tail_cpu_s']:.1f} / {thr['tail_peak_rss_mb']:.0f}",
            "",
            "",
        ],
    ]


def catchup_rows(label: str, cat: dict[str, Any]) -> list[list[str]]:
    phase = f"catch-up, {label}"
    first = "-" if cat["first_commit_s"] is None else f"{cat['first_commit_s']:.2f} s"
    rows = [
        [
            phase,
            f"{cat['lines']:,}-line backlog, start to last commit",
            f"{cat['seconds']:.1f} s = {cat['lines_per_s']:,} lines/s",
            "",
            verdict(None) if cat["complete"] else "INCOMPLETE",
        ],
        [phase, "start to first commit", first, "", ""],
    ]
    if "ratio_to_replay" in cat:
        rows.append([phase, "catch-up / replay rate", f"{cat['ratio_to_replay']:.2f}", "", ""])
    cpu_rss = f"{cat['tail_cpu_s']:.1f} / {cat['tail_peak_rss_mb']:.0f}"
    rows.append([phase, "tail CPU s / peak RSS MB", cpu_rss, "", ""])
    rows.append(
        [
            phase,
            f"idle CPU over {cat['idle_seconds']:g} s after the catch-up "
            f"({cat['files']:,} files, {cat['open_runs']:,} open runs) (per 60 s)",
            f"{cat['idle_cpu_s']:.2f} s ({cat['idle_cpu_s_per_60s']:.2f} s)",
            f"<= {TARGET_IDLE_CPU_S} s / 60 s",
            verdict(cat["idle_meets_target"]),
        ]
    )
    return rows


def rows_for(figures: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    phases: list[tuple[str, dict[str, Any]]] = []
    if lat := figures.get("latency"):
        rows += latency_rows(lat)
        phases.append(("latency", lat))
    for label, thr in figures.get("throughput", {}).items():
        rows += throughput_rows(label, thr)
        phases.append((f"throughput, {label}", thr))
    if idle := figures.get("idle"):
        rows.append(
            [
                "idle",
                f"CPU over {idle['seconds']:g} s (per 60 s)",
                f"{idle['cpu_s']:.2f} s ({idle['cpu_s_per_60s']:.2f} s)",
                f"<= {TARGET_IDLE_CPU_S} s / 60 s",
                verdict(idle["meets_target"]),
            ]
        )
        phases.append(("idle", idle))
    for label, cat in figures.get("catchup", {}).items():
        rows += catchup_rows(label, cat)
        phases.append((f"catch-up, {label}", cat))
    for phase, entry in phases:
        rows.append(
            [
                phase,
                "exit code, SIGTERM to exit",
                f"{entry['exit_code']}, {entry['sigterm_to_exit_s']:.2f} s",
                "0, < 2 s",
                verdict(entry["exit_code"] == 0 and entry["sigterm_to_exit_s"] < 2),
            ]
        )
    return rows


def report(
    machine: dict[str, Any], corpora: dict[str, CorpusInfo], figures: dict[str, Any], out: IO[str]
) -> None:
    print(f"runwatch tail benchmark, {machine_line(machine)}", file=out)
    for label, corpus in corpora.items():
        print(
            f"corpus {label}: {corpus.events:,} lines ({corpus.hostile:,} hostile), "
            f"{corpus.runs:,} runs, {corpus.files:,} files, {corpus.bytes / 1e6:,.0f} MB",
            file=out,
        )
    print("", file=out)
    print(
        render(["phase", "measure", "value", "target", "verdict"], rows_for(figures), 5), file=out
    )


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure `runwatch tail` from the outside: commit latency, live "
        "throughput against replay, idle CPU and restart catch-up."
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="latency: how long the writer appends"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: events per second")
    add_corpus_options(parser, "simulator", 1_000_000)
    parser.add_argument(
        "--idle-seconds", type=float, default=60.0, help="idle: how long CPU time is measured"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--poll-ms", type=float, default=2.0, help="how often the counters are read"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up waiting for a phase's commits after this many seconds",
    )
    parser.add_argument(
        "--tail-config",
        type=Path,
        metavar="FILE",
        help="a config file for the service (default: built-in defaults)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phase_list) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.seconds <= 0 or args.rate <= 0 or args.events < 1 or args.idle_seconds <= 0:
        parser.error("--seconds, --rate, --events and --idle-seconds must be positive")
    if args.tail_config is not None:
        args.tail_config = args.tail_config.resolve()
    return args


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_facts()
    figures: dict[str, Any] = {}
    corpora: dict[str, CorpusInfo] = {}
    if {"throughput", "catchup"} & set(args.phase_list):
        share = args.hostile_percent / 100
        for shape in args.shape:
            corpus = load_corpus(shape, args.events, args, out)
            corpora[corpus_label(corpus, args.events, share)] = corpus
    if "latency" in args.phase_list:
        figures["latency"] = bench_latency(args, out)
    if "throughput" in args.phase_list:
        figures["throughput"] = {
            label: bench_throughput(args, out, corpus) for label, corpus in corpora.items()
        }
    if "idle" in args.phase_list:
        figures["idle"] = bench_idle(args, out)
    if "catchup" in args.phase_list:
        figures["catchup"] = {
            label: bench_catchup(
                args, out, corpus, figures.get("throughput", {}).get(label, {}).get("replay")
            )
            for label, corpus in corpora.items()
        }
    report(machine, corpora, figures, sys.stdout)
    document = {
        "machine": machine,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "targets": {
            "latency_p99_ms_max": TARGET_P99_MS,
            "throughput_ratio_to_replay_min": TARGET_RATIO,
            "idle_cpu_s_per_60s_max": TARGET_IDLE_CPU_S,
        },
        "corpora": {label: asdict(corpus) for label, corpus in corpora.items()},
        "figures": figures,
    }
    write_json(document, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("bench_tail", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
