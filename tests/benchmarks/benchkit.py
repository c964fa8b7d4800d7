"""What every benchmark script shares: errors, logging, the runwatch command, the machine's
facts, tables, the corpus options (shape, size, hostile share), percentiles and output."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from corpus import SHAPES, CorpusInfo, corpus_files, ensure

from runwatch.sinks.reports import nearest_rank

REPO: Final = Path(__file__).resolve().parents[2]
SOURCE_LAYERS: Final = ("stream", "projections", "sinks")


class BenchError(Exception):
    """A command the benchmark runs failed; printed as one message, exit code 1."""


def log(message: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {message}", file=sys.stderr, flush=True)


# --- commands -------------------------------------------------------------------------------


def runwatch_command() -> list[str]:
    """The installed `runwatch` next to this interpreter, else `python -m`."""
    script = Path(sys.executable).parent / "runwatch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "runwatch.stream.cli.main"]


def run_checked(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise BenchError(
            f"`{shlex.join(command)}` exited with {result.returncode}:\n{result.stderr.strip()}"
        )
    return result


def remove_database(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def count_lines(files: Sequence[Path]) -> int:
    """Newline count; reading every byte also warms the page cache before timing."""
    lines = 0
    for path in files:
        with path.open("rb") as handle:
            while block := handle.read(8 << 20):
                lines += block.count(b"\n")
    return lines


# --- corpora --------------------------------------------------------------------------------


def shape_list(text: str) -> list[str]:
    shapes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise argparse.ArgumentTypeError(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    return shapes


def add_corpus_options(parser: argparse.ArgumentParser, shapes: str, events: int) -> None:
    parser.add_argument(
        "--shape",
        type=shape_list,
        default=shape_list(shapes),
        metavar="A,B",
        help=f"corpus shapes of corpus.py, from {', '.join(SHAPES)} (default: {shapes})",
    )
    parser.add_argument(
        "--events", type=int, default=events, help="events per corpus (default: %(default)s)"
    )
    parser.add_argument(
        "--hostile-percent",
        type=float,
        default=0.0,
        metavar="P",
        help="mix hostile lines (hostile.py) in before about P %% of the lines (default: none)",
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (default: 1)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench-out",
        metavar="DIR",
        help="corpora and scratch files (default: bench-out/ in the repo)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures as JSON")


def size_label(events: int) -> str:
    if events % 1_000_000 == 0:
        return f"{events // 1_000_000}M"
    return f"{events // 1_000}k" if events % 1_000 == 0 else str(events)


def corpus_label(info: CorpusInfo, asked: int, share: float) -> str:
    """ "single 1M", "simulator 100k +1% hostile"."""
    hostile = f" +{share * 100:g}% hostile" if share else ""
    return f"{info.shape} {size_label(asked)}{hostile}"


def load_corpus(shape: str, events: int, args: argparse.Namespace, out: Path) -> CorpusInfo:
    """The corpus of `shape` with `events` events and the options' hostile share and seed,
    generated or reused, with the page cache warmed."""
    share = args.hostile_percent / 100
    info, reused = ensure(shape, events, args.seed, out, share)
    log(
        f"{corpus_label(info, events, share)}: {'reusing' if reused else 'generated'} "
        f"{info.events:,} lines ({info.hostile:,} hostile), {info.files:,} files, "
        f"{info.bytes / 1e6:,.0f} MB"
    )
    count_lines(corpus_files(Path(info.path)))
    return info


# --- figures --------------------------------------------------------------------------------


def percentile(values: Sequence[float], percent: int) -> float:
    """Nearest-rank, as the reports compute it: always one of the measured values."""
    found = nearest_rank(values, percent)
    assert found is not None, "no samples"
    return found


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> str:
    """A plain table: the first `text_columns` columns left-aligned, the rest right-aligned."""
    widths = [max(map(len, column)) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *map(line, rows)])


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "meets target" if ok else "MISSES target"


def source_revision() -> str:
    git = ["git", "--no-optional-locks", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{commit or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def source_fingerprint() -> str:
    """A digest of the package sources: the commands run them from the working tree
    (editable install), so a change while a benchmark runs would mix two versions."""
    digest = hashlib.sha256()
    for path in sorted(p for layer in SOURCE_LAYERS for p in (REPO / layer).rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def machine_facts() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    jq = shutil.which("jq")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jq": run_checked([jq, "--version"]).stdout.strip() if jq else "not installed",
        "runwatch": shlex.join(runwatch_command()),
        "runwatch_source": source_revision(),
        "source_fingerprint": source_fingerprint(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['date']}, source {machine['runwatch_source']} (sources "
        f"{machine['source_fingerprint']}); {machine['cpu']}, {machine['usable_cpus']} usable "
        f"CPUs, {machine['memory_gib']} GiB; Python {machine['python']}; {machine['jq']}; "
        f"load average at start {' '.join(map(str, machine['load_average_1_5_15']))}"
    )


def finish_machine(machine: dict[str, Any]) -> None:
    """Notes the load at the end and warns when the sources changed during the run."""
    machine["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]
    machine["source_fingerprint_at_end"] = source_fingerprint()
    if machine["source_fingerprint_at_end"] != machine["source_fingerprint"]:
        print("WARNING: the sources changed during the run: the figures mix two versions")


def write_json(document: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nfigures written to {path}")


def report_figures(figures: dict[str, Any], path: Path | None) -> None:
    """Print the figures one per line, and write them as JSON when asked."""
    width = max(map(len, figures), default=0)
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")
    write_json(figures, path)


def main_for(
    name: str,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """A benchmark's entry point: failures are one message and exit 1, never a traceback."""
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
