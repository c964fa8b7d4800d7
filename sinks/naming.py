"""File names derived from run ids, which come from the logs and so cannot be trusted."""

from __future__ import annotations

import hashlib
import re
from typing import Final

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")
_MAX_STEM: Final = 120
RESERVED_STEMS: Final = frozenset({"index"})
"""Stems of the fixed files that sit beside run files (`reports/index.html`); a run id that
equals one, in any case (case-insensitive file systems), is renamed like an unsafe one."""


def safe_filename(run_id: str) -> str:
    """A file-name stem for `run_id` that stays inside its folder: only [A-Za-z0-9._-], no
    leading dot, bounded length, never a reserved stem. A run id that had to be changed gets
    a short hash of the original appended, so two different run ids never share a name."""
    stem = _UNSAFE.sub("_", run_id).lstrip(".")[:_MAX_STEM]
    if stem == run_id and stem and stem.lower() not in RESERVED_STEMS:
        return stem
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{stem or 'run'}-{digest}"
