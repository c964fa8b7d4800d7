"""JSON blobs that are held until a commit."""

from __future__ import annotations

from typing import Any

import orjson


def dumps_exact(value: Any) -> bytes:
    """orjson's bytes for a small value keep a 4 KiB buffer behind them (orjson 3.13); a
    batch holds one per run it touched until the commit, so a batch of 30,000 new runs
    would cost 4 KiB each. A copy of the exact size costs a few hundred nanoseconds."""
    return bytes(memoryview(orjson.dumps(value)))
