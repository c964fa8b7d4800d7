"""A PostgreSQL store URL, parsed without importing the driver: every command may be handed
one, and only those that connect load psycopg.

URL: `postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME[?schema=NAME&LIBPQ_PARAMS]` (or
`postgres://`). `schema` (default `runwatch`) is runwatch's own parameter, stripped before
connecting: it names the PostgreSQL schema that holds the tables, so one database can hold
several projections (replay builds into a scratch schema, tests use throw-away ones).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from runwatch.sinks.store.api import StoreError

DEFAULT_SCHEMA: Final = "runwatch"
NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def is_postgres(target: str | Path) -> bool:
    """A `postgresql://` or `postgres://` URL (also as a Path, which lost a slash)."""
    return str(target).startswith(("postgresql:/", "postgres:/"))


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed store URL: what libpq gets, the schema, and a printable form without secrets."""

    conninfo: str
    schema: str
    printable: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [v for k, v in query if k == "schema"] or [DEFAULT_SCHEMA]
        schema = schemas[-1]
        rest = [(k, v) for k, v in query if k != "schema"]
        host = parts.netloc.rpartition("@")[2]
        user = parts.username
        shown = [(k, v) for k, v in rest if k != "password"]
        printable = urlunsplit(
            (parts.scheme, f"{user}@{host}" if user else host, parts.path, urlencode(shown), "")
        )
        if not NAME.fullmatch(schema):
            raise StoreError(
                f"{printable}: schema {schema!r} is not a plain name "
                "(letters, digits and _, at most 63)"
            )
        conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
        return cls(conninfo, schema, with_schema(printable, schema))

    @property
    def lock_key(self) -> int:
        """The advisory lock that serializes this schema's writers (a signed 64-bit int)."""
        digest = hashlib.blake2b(f"runwatch:{self.schema}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


def with_schema(url: str, schema: str) -> str:
    """`url` naming `schema` instead of whatever it named."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))
