"""Running a command once under watch: its wall time, the CPU time of its whole process tree
and of the command itself, and the peak memory of the tree.

Memory figures, in MB, per command:
  - largest process: the kernel's max RSS of any one process of the tree (a wrapper's
    getrusage(RUSAGE_CHILDREN).ru_maxrss: the maximum over the processes, not a sum);
  - parent HWM: the command's own VmHWM;
  - sum of HWMs: each process's VmHWM added up (an upper bound);
  - peak tree RSS: the largest sum of VmRSS over the command and its workers seen at one
    moment, polling /proc every 50 ms; copy-on-write pages shared after fork count once per
    process, so it is an upper bound. The 250 MB target is judged on it;
  - peak tree PSS: the same with proportional set size, which splits shared pages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchkit import BenchError

POLL_S: Final = 0.05
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
WORKERS_ENV: Final = "RUNWATCH_REPLAY_WORKERS"
# Runs a command and writes the rusage of everything it waited for: the largest process's
# max RSS (KB) and the CPU seconds of the whole tree (replay waits for its pool workers).
RUSAGE_WRAPPER: Final = (
    "import json, resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    json.dump([usage.ru_maxrss, usage.ru_utime, usage.ru_stime], out)\n"
    "sys.exit(code)\n"
)


@dataclass(slots=True)
class Memory:
    """Peak memory of one command in MB (see the module docstring for each figure)."""

    largest_process_mb: float = 0.0
    parent_hwm_mb: float = 0.0
    sum_of_hwm_mb: float = 0.0
    tree_rss_mb: float = 0.0
    tree_pss_mb: float = 0.0
    processes: int = 0
    samples: int = 0


@dataclass(slots=True)
class Measured:
    wall_s: float
    cpu_s: float  # the whole tree
    parent_cpu_s: float  # the command alone, as last seen before it exited
    memory: Memory
    stdout: str


def process_parents() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(b")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below `root`, breadth first (the root itself excluded)."""
    children: dict[int, list[int]] = {}
    for pid, parent in process_parents().items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    queue = [root]
    while queue:
        kids = children.get(queue.pop(0), [])
        found.extend(kids)
        queue.extend(kids)
    return found


def proc_kb(path: str, *keys: str) -> dict[str, int]:
    """`key:  N kB` lines of a /proc file, in KB; missing keys (or process) read as 0."""
    found = dict.fromkeys(keys, 0)
    try:
        with open(path) as handle:
            for line in handle:
                key = line.split(":", 1)[0]
                if key in found:
                    found[key] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class TreeSampler:
    """Polls the memory of the processes below a wrapper every 50 ms, and the CPU time of
    the wrapper's child (the command itself)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.memory = Memory()
        self.parent_cpu_s = 0.0
        self.hwm_kb: dict[int, int] = {}
        self.parent_hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.memory.parent_hwm_mb = self.parent_hwm_kb / 1024
        self.memory.sum_of_hwm_mb = sum(self.hwm_kb.values()) / 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(POLL_S)

    def sample(self) -> None:
        pids = descendants(self.root)
        if not pids:
            return
        rss = pss = 0
        for pid in pids:
            status = proc_kb(f"/proc/{pid}/status", "VmRSS", "VmHWM")
            rss += status["VmRSS"]
            pss += proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")["Pss"]
            hwm = status["VmHWM"]
            self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
            if pid == pids[0]:
                self.parent_hwm_kb = max(self.parent_hwm_kb, hwm)
        with contextlib.suppress(OSError):  # the command may just have exited
            self.parent_cpu_s = max(self.parent_cpu_s, cpu_seconds(pids[0]))
        memory = self.memory
        memory.samples += 1
        memory.processes = max(memory.processes, len(pids))
        memory.tree_rss_mb = max(memory.tree_rss_mb, rss / 1024)
        memory.tree_pss_mb = max(memory.tree_pss_mb, pss / 1024)


def child_env() -> dict[str, str]:
    """The environment without a replay worker count: the command line says how many."""
    env = dict(os.environ)
    env.pop(WORKERS_ENV, None)
    return env


def measure(command: Sequence[str], cwd: Path) -> Measured:
    """Run `command` once from `cwd` under the tree sampler."""
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
        with TreeSampler(process.pid) as sampler:
            stdout, stderr = process.communicate()
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise BenchError(
                f"`{shlex.join(command)}` exited with {process.returncode}:\n{stderr.strip()}"
            )
        maxrss_kb, user_s, system_s = json.loads(report.read_text())
    sampler.memory.largest_process_mb = maxrss_kb / 1024
    return Measured(wall, user_s + system_s, sampler.parent_cpu_s, sampler.memory, stdout)
