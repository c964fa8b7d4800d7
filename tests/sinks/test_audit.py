"""The audit trail's hash chain: written gapless across restarts, and any tampering named."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runwatch.sinks.audit import GENESIS, AuditLog, verify_trail
from runwatch.sinks.store.api import Changes
from runwatch.sinks.store.sqlite import SqliteStore

SEEN_AT = "2024-05-01T12:00:00.000000Z"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "runwatch.db")
    yield opened
    opened.close()


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "monitor.jsonl"


def record(store: SqliteStore, count: int, kind: str = "RUN_FINISHED") -> None:
    """Commit `count` derived events, as the processor does."""
    store.commit(
        Changes(
            derived=[
                {
                    "type": kind,
                    "event_time": f"2024-05-01T12:00:{i:02d}.000000Z",
                    "run_id": f"run-{i}",
                    "duration_s": 1.5,
                    "note": "ünïcode ✓",
                }
                for i in range(count)
            ]
        ),
        SEEN_AT,
    )


def write_trail(store: SqliteStore, trail: Path, *batches: int) -> list[dict[str, Any]]:
    """Record and drain one batch of events per count; returns every record written."""
    audit = AuditLog(trail, store)
    written = []
    for count in batches:
        record(store, count)
        written += audit.drain()
    return written


def lines(trail: Path) -> list[bytes]:
    return trail.read_bytes().splitlines(keepends=True)


def canonical_line(fields: dict[str, Any]) -> bytes:
    """A line built from the module docstring's definition alone, as a forger would."""
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(canonical).hexdigest()
    return canonical[:-1] + b',"hash":"' + digest.encode() + b'"}\n'


def test_a_fresh_trail_on_an_empty_file_starts_at_genesis(store: SqliteStore, trail: Path) -> None:
    """Line 1 must link to the agreed genesis value, or a cut-off beginning could pass."""
    trail.parent.mkdir()
    trail.touch()
    audit = AuditLog(trail, store)
    assert (audit.seq, audit.prev) == (0, GENESIS)
    record(store, 1)
    [first] = audit.drain()
    assert (first["seq"], first["prev"]) == (1, GENESIS)


def test_the_chain_verifies_over_several_drains(store: SqliteStore, trail: Path) -> None:
    """Each line is exactly the documented canonical form, so anyone can re-check it."""
    written = write_trail(store, trail, 3, 1, 4)
    assert [orjson.loads(line) for line in lines(trail)] == written
    assert [r["seq"] for r in written] == list(range(1, 9))
    assert [r["prev"] for r in written] == [GENESIS] + [r["hash"] for r in written[:-1]]
    for line, fields in zip(lines(trail), written, strict=True):
        assert line == canonical_line({k: v for k, v in fields.items() if k != "hash"})
    report = verify_trail(trail, store)
    assert (report.ok, report.records, report.problem) == (True, 8, None)
    assert report.last_hash == written[-1]["hash"]


def test_every_single_byte_change_is_detected_on_its_own_line(
    store: SqliteStore, trail: Path
) -> None:
    """An auditor must learn where the trail was altered, whichever byte it was."""
    write_trail(store, trail, 2, 1)
    original = trail.read_bytes()
    line_of = [n for n, line in enumerate(lines(trail), 1) for _ in line]
    for position, expected in enumerate(line_of):
        changed = bytearray(original)
        changed[position] ^= 0x01
        trail.write_bytes(bytes(changed))
        report = verify_trail(trail)
        assert not report.ok, f"byte {position} changed undetected"
        assert report.first_bad_line == expected, (position, report.problem)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (b'"run-0"', b'"run-9"', "line 2: hash mismatch (record altered)"),
        (b'"duration_s"', b'"duration_z"', "line 2: hash mismatch (record altered)"),
        (b"1.5", b"15.", "line 2: not valid JSON"),
        (b'"duration_s":1.5', b'"duration_s":15e-1', "line 2: not in canonical form"),
        (b'"prev":"0', b'"prev":"1', "line 1: hash mismatch (record altered)"),
        (b'"hash":"', b'"hasx":"', "line 1: hash missing or malformed"),
    ],
)
def test_an_edit_in_a_value_a_key_or_a_hash_names_its_line(
    store: SqliteStore, trail: Path, old: bytes, new: bytes, problem: str
) -> None:
    """Edits that keep the JSON valid, even ones that keep its meaning, must still fail."""
    write_trail(store, trail, 1, 2)
    data = lines(trail)
    target = 0 if b"hash" in old or b"prev" in old else 1
    assert old in data[target]
    data[target] = data[target].replace(old, new, 1)
    trail.write_bytes(b"".join(data))
    report = verify_trail(trail)
    assert not report.ok
    assert report.first_bad_line == target + 1
    assert report.problem is not None and report.problem.startswith(problem)


def test_an_uppercased_hash_digit_is_an_alteration(store: SqliteStore, trail: Path) -> None:
    """The hash is compared byte for byte: no second spelling of a line may verify."""
    write_trail(store, trail, 3)
    data = lines(trail)
    digest = orjson.loads(data[2])["hash"]
    letter = next(i for i, c in enumerate(digest) if c in "abcdef")
    forged = digest[:letter] + digest[letter].upper() + digest[letter + 1 :]
    data[2] = data[2].replace(digest.encode(), forged.encode())
    trail.write_bytes(b"".join(data))
    assert verify_trail(trail).problem == "line 3: hash mismatch (record altered)"


def test_a_deleted_line_is_detected(store: SqliteStore, trail: Path) -> None:
    """Removing an embarrassing record must not go unnoticed."""
    write_trail(store, trail, 6)
    data = lines(trail)
    del data[2]
    trail.write_bytes(b"".join(data))
    report = verify_trail(trail)
    assert (report.ok, report.first_bad_line, report.records) == (False, 3, 2)
    assert report.problem == (
        "line 3: prev does not match line 2's hash (line removed or reordered)"
    )


def test_swapped_lines_are_detected(store: SqliteStore, trail: Path) -> None:
    """The trail's order is part of the evidence (what happened before what)."""
    write_trail(store, trail, 6)
    data = lines(trail)
    data[3], data[4] = data[4], data[3]
    trail.write_bytes(b"".join(data))
    report = verify_trail(trail)
    assert report.first_bad_line == 4
    assert report.problem is not None and "prev does not match line 3's hash" in report.problem


@pytest.mark.parametrize(
    ("hashed", "problem"),
    [
        (False, "line 4: no hash after the chain began"),
        (True, "line 4: hash mismatch (record altered)"),
    ],
)
def test_an_appended_forged_line_is_detected(
    store: SqliteStore, trail: Path, hashed: bool, problem: str
) -> None:
    """A record slipped in afterwards, with no hash or a made-up one, must be caught."""
    written = write_trail(store, trail, 3)
    forged: dict[str, Any] = {**written[-1], "seq": 4, "type": "RUN_SUCCEEDED"}
    forged.pop("hash")
    if hashed:
        forged |= {"prev": written[-1]["hash"], "hash": "f" * 64}
    else:
        forged.pop("prev")
    with trail.open("ab") as handle:
        handle.write(orjson.dumps(forged) + b"\n")
    report = verify_trail(trail)
    assert report.first_bad_line == 4
    assert report.problem is not None and report.problem.startswith(problem)
    assert report.last_hash == written[-1]["hash"]


def test_a_validly_hashed_seq_gap_or_repeat_is_detected(store: SqliteStore, trail: Path) -> None:
    """`seq` is gapless by contract; a writer bug or a renumbering must show."""
    written = write_trail(store, trail, 2)
    for seq, reason in ((4, "gap"), (2, "duplicate or out of order")):
        forged = {k: v for k, v in written[-1].items() if k != "hash"}
        forged |= {"seq": seq, "prev": written[-1]["hash"]}
        trail.write_bytes(b"".join(lines(trail)[:2]) + canonical_line(forged))
        assert verify_trail(trail).problem == f"line 3: seq {seq} after 2 ({reason})"


def test_a_torn_last_line_is_repaired_and_the_chain_continues(
    store: SqliteStore, trail: Path
) -> None:
    """A crash mid-write leaves half a line; the next start must cut it and carry on."""
    written = write_trail(store, trail, 3)
    with trail.open("ab") as handle:
        handle.write(lines(trail)[-1][:40])
    assert verify_trail(trail).problem == "line 4: torn last line (no newline)"
    more = write_trail(store, trail, 2)
    assert [r["seq"] for r in more] == [4, 5]
    assert more[0]["prev"] == written[-1]["hash"]
    assert verify_trail(trail, store).ok


def test_a_restart_continues_seq_and_prev_without_gap_or_repeat(
    store: SqliteStore, trail: Path
) -> None:
    """Each start must append exactly the new events, linked to the last line."""
    written = write_trail(store, trail, 2, 3)
    assert AuditLog(trail, store).drain() == [], "nothing is announced twice"
    more = write_trail(store, trail, 1) + write_trail(store, trail, 2)
    assert [r["seq"] for r in written + more] == list(range(1, 9))
    assert [r["db_seq"] for r in written + more] == list(range(1, 9))
    assert more[0]["prev"] == written[-1]["hash"]
    assert verify_trail(trail, store).records == 8


def test_a_rebuilt_database_continues_the_same_chain(
    store: SqliteStore, trail: Path, tmp_path: Path
) -> None:
    """Replacing the database must neither restart the trail nor re-announce its history."""
    written = write_trail(store, trail, 3)
    rebuilt = SqliteStore(tmp_path / "rebuilt.db")
    try:
        record(rebuilt, 5, "REPLAYED")
        more = write_trail(rebuilt, trail, 2)
        assert [r["seq"] for r in more] == [4, 5]
        assert {r["type"] for r in more} == {"RUN_FINISHED"}
        assert more[0]["prev"] == written[-1]["hash"]
        assert more[0]["db"] == rebuilt.meta()["database_id"] != written[0]["db"]
        assert verify_trail(trail, rebuilt).ok
    finally:
        rebuilt.close()


@pytest.mark.parametrize("kept", [0, 3])
def test_a_tail_cut_while_stopped_is_caught_by_the_database_anchor(
    store: SqliteStore, trail: Path, kept: int
) -> None:
    """Cutting the newest lines leaves a valid-looking chain; only an anchor can tell."""
    written = write_trail(store, trail, 3, 3)
    trail.write_bytes(b"".join(lines(trail)[:kept]))
    assert verify_trail(trail).ok, "the file alone cannot show a clean cut"
    report = verify_trail(trail, store)
    assert (report.ok, report.first_bad_line) == (False, kept + 1)
    assert report.problem is not None and report.problem.endswith(
        "but the database's audit_head is seq 6 (tail truncated)"
    )
    more = write_trail(store, trail, 1)
    assert (more[0]["seq"], more[0]["prev"]) == (7, written[-1]["hash"])
    after = verify_trail(trail)
    assert (after.ok, after.first_bad_line) == (False, kept + 1), "the loss stays visible"


def test_an_anchor_from_another_trail_shows_a_rewrite(
    store: SqliteStore, trail: Path, tmp_path: Path
) -> None:
    """A trail rebuilt from scratch (new hashes for the same seqs) must not pass with the db."""
    write_trail(store, trail, 2)
    other = SqliteStore(tmp_path / "other.db")
    try:
        write_trail(other, tmp_path / "other.jsonl", 2)
        report = verify_trail(tmp_path / "other.jsonl", store)
    finally:
        other.close()
    assert report.problem == (
        "line 2: hash differs from the database's audit_head (trail rewritten)"
    )


def legacy_trail(trail: Path, store: SqliteStore, count: int) -> bytes:
    """A trail as the format before the chain wrote it (no `prev`, no `hash`)."""
    database_id = store.meta()["database_id"]
    record(store, count)
    trail.parent.mkdir()
    data = b"".join(
        orjson.dumps(
            {
                "seq": n,
                "wall_time": SEEN_AT,
                "type": "RUN_FINISHED",
                "event_time": SEEN_AT,
                "db": database_id,
                "db_seq": n,
            }
        )
        + b"\n"
        for n in range(1, count + 1)
    )
    trail.write_bytes(data)
    return data


def test_a_legacy_trail_is_sealed_and_then_protected(store: SqliteStore, trail: Path) -> None:
    """Old records cannot be re-hashed honestly, but from the upgrade on nothing may change."""
    old = legacy_trail(trail, store, 3)
    more = write_trail(store, trail, 2)
    assert [r["seq"] for r in more] == [4, 5]
    assert more[0]["prev"] == hashlib.sha256(old).hexdigest()
    report = verify_trail(trail, store)
    assert (report.ok, report.legacy_lines, report.records) == (True, 3, 5)
    trail.write_bytes(trail.read_bytes().replace(b'"db_seq":2', b'"db_seq":9', 1))
    report = verify_trail(trail)
    assert report.first_bad_line == 4
    assert report.problem is not None and "seal of legacy lines 1-3" in report.problem


def test_a_line_removed_from_a_legacy_prefix_is_named(store: SqliteStore, trail: Path) -> None:
    """Legacy lines have no hash, but their gapless seq still pins a removal to its line."""
    legacy_trail(trail, store, 4)
    write_trail(store, trail, 1)
    data = lines(trail)
    del data[1]
    trail.write_bytes(b"".join(data))
    assert verify_trail(trail).problem == "line 2: seq 3 after 1 (gap)"


def test_event_fields_named_like_the_trails_keys_cannot_break_the_chain(
    store: SqliteStore, trail: Path
) -> None:
    """An event's own `hash`, `prev` or `seq` field must not forge or corrupt the chain."""
    audit = AuditLog(trail, store)
    store.commit(
        Changes(
            derived=[
                {"type": "ARCHIVED", "event_time": SEEN_AT, "seq": 99, "prev": "x", "hash": "y"}
            ]
        ),
        SEEN_AT,
    )
    [written] = audit.drain()
    assert (written["seq"], written["prev"]) == (1, GENESIS)
    assert verify_trail(trail).ok
