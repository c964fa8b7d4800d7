"""The layering of the design card, enforced on the source with `ast`.

- projections/ is pure: it imports no I/O, clock, randomness or serialiser (IMPURE below),
  directly or through anything it imports, and never reads the clock.
- stream/core/ (decode, fold, decisions) imports no I/O module either (IO below), and of
  runwatch only projections, stream/core and the store's neutral sinks/store/api.py.
- Database drivers (DRIVERS) are imported only under sinks/store/.
- A service module in stream/services/ imports no other service module, except the shared
  runtime.py, lock.py, health.py, parallel.py and partitions.py.
- Only stream/cli/ imports stream.cli; sinks/ never imports stream/.
- Starting the CLI for `replay` or `tail` loads no driver, network client or web framework
  it does not use (ON_DEMAND and the like): each costs every process, worker or not,
  megabytes and start-up time.
- stream/ keeps at most MAX_TOP_LEVEL modules at its top level (the rest live in role
  subpackages), and no source module is longer than MAX_LINES lines.

Module lists are top-level names, judged by what the module is for: IO holds files,
processes, threads, sockets, network clients, drivers and the clock-driven loop helpers.
`os` and `pathlib` are in IO because their use in a fold means touching files. The clock
rule for projections is also checked on the text (`now` is always passed in).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = ("projections", "sinks", "stream")
DRIVERS = frozenset({"sqlite3", "psycopg", "psycopg_pool"})
IO = DRIVERS | frozenset(
    {
        "os",
        "io",
        "pathlib",
        "shutil",
        "tempfile",
        "glob",
        "fcntl",
        "signal",
        "select",
        "selectors",
        "socket",
        "ssl",
        "http",
        "urllib",
        "requests",
        "smtplib",
        "email",
        "aiosmtpd",
        "nats",
        "asyncio",
        "subprocess",
        "threading",
        "multiprocessing",
        "concurrent",
        "watchdog",
        "prometheus_client",
        "logging",
        "time",
    }
)
IMPURE = IO | frozenset({"random", "orjson", "yaml", "json", "uuid", "secrets"})
SHARED_SERVICES = frozenset({"runtime", "lock", "health", "parallel", "partitions"})
ON_DEMAND = ("psycopg", "nats", "requests", "prometheus_client", "watchdog", "asyncio")
MAX_TOP_LEVEL = 6
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = ["runwatch", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def sources() -> dict[str, Path]:
    """Every source module of the three layers, by its installed name."""
    return {
        module_name(path): path
        for layer in LAYERS
        for path in sorted((ROOT / layer).rglob("*.py"))
        if ".build" not in path.parts
    }


@cache
def imports(name: str) -> frozenset[str]:
    """The full dotted names `name` imports (relative imports resolved; `from a import b`
    counts as importing a.b when that is a module)."""
    path = sources()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def top_level(names: frozenset[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@cache
def closure(name: str) -> frozenset[str]:
    """Every module that importing `name` runs: its own imports, the packages above each
    runwatch module, and so on transitively (outside modules are not followed)."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for imported in imports(current):
            parts = imported.split(".")
            for end in range(1, len(parts) + 1):
                prefix = ".".join(parts[:end])
                if prefix in sources():
                    pending.append(prefix)
                elif not prefix.startswith("runwatch"):
                    seen.add(prefix)
    return frozenset(seen)


def under(*prefixes: str) -> Iterator[str]:
    for name in sources():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            yield name


def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.mark.parametrize("name", sorted(under("runwatch.projections")))
def test_projections_import_nothing_impure(name: str) -> None:
    """projections/ folds events only: no files, clock, database, network or serialisers,
    not even through a module it imports."""
    assert not top_level(closure(name)) & IMPURE
    internal = {m for m in closure(name) if m.startswith("runwatch") and m != "runwatch"}
    assert all(m.startswith("runwatch.projections") for m in internal), internal


def test_projections_do_not_read_the_clock() -> None:
    """`now` is always passed in, so replays are deterministic."""
    for name in under("runwatch.projections"):
        text = sources()[name].read_text()
        assert ".now(" not in text and "utcnow" not in text and "time()" not in text, name


NEUTRAL = (
    "runwatch.projections",
    "runwatch.stream.core",
    "runwatch.sinks.store.api",
    "runwatch.sinks.store.keys",
)


@pytest.mark.parametrize("name", sorted(under("runwatch.stream.core")))
def test_stream_core_imports_no_io(name: str) -> None:
    """The fold loop takes its input and its store from outside: it imports no I/O module,
    and of runwatch only the projections, its own modules and the store's neutral api (the
    store package itself brings the drivers)."""
    assert not top_level(imports(name)) & IO, sorted(top_level(imports(name)) & IO)
    internal = {
        i
        for i in imports(name)
        if i.startswith("runwatch.") and not any(i == n or i.startswith(n + ".") for n in NEUTRAL)
    }
    assert internal == set()


def test_database_drivers_only_under_sinks_store() -> None:
    offenders = {
        name: sorted(top_level(imports(name)) & DRIVERS)
        for name in sources()
        if not name.startswith("runwatch.sinks.store") and top_level(imports(name)) & DRIVERS
    }
    assert offenders == {}


def test_services_do_not_import_one_another() -> None:
    """A service is started by the CLI; what services share lives in runtime, lock, health
    and the parallel fold."""
    services = list(under("runwatch.stream.services"))
    assert {"tail", "ship", "partition", "replay", "runtime"} <= {
        name.rpartition(".")[2] for name in services
    }, "the rule must look at the real service modules (a wrong folder passes vacuously)"
    offenders = {}
    for name in services:
        others = (
            {
                imported.split(".")[3]
                for imported in imports(name)
                if imported.startswith("runwatch.stream.services.")
            }
            - SHARED_SERVICES
            - {name.split(".")[-1]}
        )
        if others:
            offenders[name] = sorted(others)
    assert offenders == {}


def test_only_the_cli_imports_the_cli() -> None:
    offenders = [
        name
        for name in sources()
        if not name.startswith("runwatch.stream.cli")
        and any(i.startswith("runwatch.stream.cli") for i in imports(name))
    ]
    assert offenders == []


def test_sinks_do_not_import_stream() -> None:
    """Dependencies point inward: sinks never reach back into the runner."""
    offenders = [
        name
        for name in under("runwatch.sinks")
        if any(i.startswith("runwatch.stream") for i in imports(name))
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("service", "unused"),
    [
        ("replay", ON_DEMAND),
        ("tail", ("psycopg", "nats", "requests", "starlette", "uvicorn")),
    ],
)
def test_a_service_loads_no_driver_or_client_it_does_not_use(
    service: str, unused: tuple[str, ...]
) -> None:
    """A replay of SQLite files (and each of its forked workers) never needs PostgreSQL,
    NATS, HTTP, Prometheus or file watching; `tail` on files needs no PostgreSQL, NATS or
    HTTP client, nor the web framework until `metrics_addr` is set. They are imported where
    they are used."""
    program = (
        f"import sys, runwatch.stream.cli.main, runwatch.stream.services.{service};"
        f"print(sorted(m for m in {unused!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_stream_top_level_is_small() -> None:
    """Modules belong to a role subpackage; the top level holds a handful at most."""
    modules = sorted(p.name for p in (ROOT / "stream").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL, modules


def test_no_source_module_is_over_the_limit() -> None:
    long = {name: lines_of(path) for name, path in sources().items() if lines_of(path) > MAX_LINES}
    assert long == {}


def test_the_checks_see_the_source() -> None:
    """The checks above would pass vacuously if the walk found nothing."""
    assert {"runwatch.projections.runs", "runwatch.stream.core.processor"} <= set(sources())
    assert "runwatch.projections.events" in closure("runwatch.projections.runs")
    assert "sqlite3" in closure("runwatch.sinks.store.sqlite")
