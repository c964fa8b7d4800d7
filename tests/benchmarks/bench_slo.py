"""Benchmark what SLOs cost: the live service's tick (`SloBook.tick`, every `tick_interval`),
its rebuild after a commit that finished runs, one `runwatch slo` evaluation, and a replay's
event-time history (`transitions`), over N finished runs spread evenly over 30 days with 5 %
failures, for two SLOs (success and duration). The pure functions are timed in this process
(medians of --repeat rounds); nothing is asserted. Targets: a tick well under 1 ms, so a
1 s tick costs nothing; the replay history well under the replay's own time.

Usage:  .venv/bin/python tests/benchmarks/bench_slo.py [--runs 1000,10000,100000]
        [--repeat 5] [--json FILE]
Smoke:  .venv/bin/python tests/benchmarks/bench_slo.py --runs 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from benchkit import main_for, render, report_figures

from runwatch.projections.slo import Slo, SloBook, evaluate, transitions

DAY_US = 86_400_000_000
NOW = 20_000 * DAY_US
SLOS = (
    Slo("success", "success", 0.95),
    Slo("fast", "duration", 0.9, threshold_s=900.0),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs", default="1000,10000,100000", help="finished runs, comma-separated"
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds per figure (median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def finished(count: int) -> list[tuple[int, str, float, str]]:
    rng = random.Random(7)
    step = 30 * DAY_US // count
    return [
        (
            NOW - i * step,
            "failed" if rng.random() < 0.05 else "succeeded",
            rng.uniform(60, 1800),
            f"R{i}",
        )
        for i in range(count)
    ]


def median_s(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    figures: dict[str, float] = {}
    rows = []
    for count in (int(n) for n in args.runs.split(",")):
        runs = finished(count)
        book = SloBook(SLOS, runs, {})
        book.tick(NOW)
        tick = median_s(lambda: book.tick(NOW), args.repeat * 20)  # noqa: B023  # timed now

        def rebuild() -> None:
            book.note(["R0"], [runs[0]])  # noqa: B023  # a commit finished one run
            book.tick(NOW)  # noqa: B023

        rebuilt = median_s(rebuild, args.repeat)
        judged = median_s(lambda: evaluate(SLOS, runs, NOW), args.repeat)  # noqa: B023
        history = median_s(lambda: transitions(SLOS, runs, NOW), max(1, args.repeat // 2))  # noqa: B023
        figures |= {
            f"tick_ms_{count}": round(tick * 1e3, 3),
            f"tick_after_commit_ms_{count}": round(rebuilt * 1e3, 3),
            f"evaluate_ms_{count}": round(judged * 1e3, 3),
            f"replay_history_s_{count}": round(history, 3),
        }
        rows.append(
            [
                f"{count:,}",
                f"{tick * 1e3:.3f}",
                f"{rebuilt * 1e3:.2f}",
                f"{judged * 1e3:.2f}",
                f"{history:.2f}",
            ]
        )
    headers = ["runs", "tick ms", "tick after commit ms", "runwatch slo ms", "replay history s"]
    print(render(headers, rows, text_columns=1))
    report_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main_for("bench_slo", parse_args, run, None))
