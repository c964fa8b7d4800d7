"""Text for people at a terminal: untrusted text made inert, and numbers in human units."""

from __future__ import annotations

import re
from typing import Final

_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0, DEL and C1 controls (so every ESC sequence) and the bidi marks, embeddings,
overrides and isolates that can reorder what a terminal shows."""
_NAMED: Final = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def terminal_safe(text: str) -> str:
    """`text` with every control and bidi character shown as an escape (`\\x1b`, `\\u202e`),
    so log text cannot retitle a window, clear a screen or reorder a line."""
    return _UNSAFE.sub(_escape, text)


def human_duration(seconds: float) -> str:
    """`29m 30s`, `2h 5m`, `3d 4h`, `42s`, `0.4s`: two units at most."""
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    first = next(i for i, (n, _) in enumerate(units) if n)
    shown = [f"{n}{unit}" for n, unit in units[first : first + 2] if n]
    return " ".join(shown)


def human_size(size: float) -> str:
    """`512 B`, `1.2 KB`, `3.4 MB`, `1.0 GB` (powers of 1000)."""
    if abs(size) < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1000
        if abs(size) < 1000 or unit == "TB":
            break
    return f"{size:.1f} {unit}"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
