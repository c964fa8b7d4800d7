"""The layering of the design card, enforced: projections stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
IMPURE = {
    "os",
    "io",
    "sqlite3",
    "requests",
    "watchdog",
    "socket",
    "subprocess",
    "time",
    "pathlib",
    "shutil",
    "tempfile",
    "orjson",
    "yaml",
    "random",
    "threading",
    "logging",
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_projections_import_no_io() -> None:
    """projections/ folds events only: no files, clock, database, network or serialisers."""
    for path in sorted((ROOT / "projections").glob("*.py")):
        assert not imported_modules(path) & IMPURE, path.name


def test_projections_do_not_read_the_clock() -> None:
    """`now` is always passed in, so replays are deterministic."""
    for path in sorted((ROOT / "projections").glob("*.py")):
        text = path.read_text()
        assert ".now(" not in text and "utcnow" not in text and "time()" not in text, path.name


def test_sinks_do_not_import_stream() -> None:
    """Dependencies point inward: sinks never reach back into the runner."""
    for path in sorted((ROOT / "sinks").glob("*.py")):
        assert (
            "stream" not in imported_modules(path) and "runwatch.stream" not in path.read_text()
        ), path.name
