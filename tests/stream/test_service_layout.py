"""Services stand side by side: none imports another, only the shared infrastructure
(the runtime, the database lock, health, the parallel fold), so each can change or move
on its own."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).parents[2] / "stream" / "services"
SHARED = {"runtime", "lock", "health", "parallel"}


def service_imports(path: Path) -> set[str]:
    """The stream/services modules `path` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:3] == ["runwatch", "stream", "services"] and len(parts) > 3:
                found.add(parts[3])
    return found


def test_services_import_only_shared_infrastructure() -> None:
    """A service module that imports another service couples their lifetimes and tests."""
    for path in sorted(SERVICES.glob("*.py")):
        others = service_imports(path) - SHARED - {path.stem}
        assert not others, f"{path.name} imports {sorted(others)}"


def test_every_service_module_is_checked() -> None:
    """The rule above looks at the real files (a wrong folder would pass vacuously)."""
    assert {"tail", "ship", "partition", "replay", "runtime"} <= {
        p.stem for p in SERVICES.glob("*.py")
    }
