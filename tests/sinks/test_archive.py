"""The run archive sink on real files: complete, immutable, verified, and never tricked into
reading outside the run, with a real kill -9 in the middle of a write."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from runwatch.sinks.archive import (
    ArchiveConfig,
    ArchiveError,
    ArchiveResult,
    apply_retention,
    build_archive,
    run_archives,
    verify_archive,
)

NOW = datetime(2025, 11, 26, 14, 46, 52, tzinfo=UTC)
EVENTS = b'{"kind":"RUN_STARTED","run_id":"r1"}\n{"kind":"RUN_COMPLETED","run_id":"r1"}\n'
REPORTS = {"summary.md": b"# r1\nall green\n", "tasks/t1.json": b'{"task":"t1"}'}
SECRET = b"top secret of another run"

CHILD = r"""
import sys
from datetime import UTC, datetime
from pathlib import Path
from runwatch.sinks.archive import ArchiveConfig, build_archive
config = ArchiveConfig(directory=Path(sys.argv[1]), artifacts=sys.argv[2])
build_archive("big", config=config, events=b"{}\n", reports={}, now=datetime.now(UTC))
"""


@pytest.fixture
def config(tmp_path: Path) -> ArchiveConfig:
    return ArchiveConfig(
        directory=tmp_path / "archive", artifacts=str(tmp_path / "worktrees" / "{run_id}")
    )


def run_folder(tmp_path: Path, run_id: str = "r1") -> Path:
    folder = tmp_path / "worktrees" / run_id
    folder.mkdir(parents=True)
    return folder


def build(config: ArchiveConfig, run_id: str = "r1", **options: Any) -> ArchiveResult:
    return build_archive(
        run_id,
        config=config,
        events=options.pop("events", EVENTS),
        reports=options.pop("reports", REPORTS),
        now=NOW,
        **options,
    )


UNPRIVILEGED = r"""
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from runwatch.sinks.archive import ArchiveConfig, build_archive
config = ArchiveConfig.model_validate_json(sys.argv[1])
result = build_archive("r1", config=config, events=sys.argv[2].encode(),
                       reports={k: v.encode() for k, v in json.loads(sys.argv[3]).items()},
                       now=datetime.fromisoformat(sys.argv[4]))
print(json.dumps({"path": str(result.path), "skipped": [list(s) for s in result.skipped]}))
"""


def build_without_read_override(config: ArchiveConfig) -> ArchiveResult:
    """Build in a child process that cannot bypass file permissions. As root (CI here) the
    child drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH with setpriv, so mode 000 really
    denies it, as it would any ordinary user."""
    drop = "-dac_override,-dac_read_search"
    prefix = (
        ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}"] if os.geteuid() == 0 else []
    )
    reports = json.dumps({k: v.decode() for k, v in REPORTS.items()})
    done = subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            UNPRIVILEGED,
            config.model_dump_json(),
            EVENTS.decode(),
            reports,
            NOW.isoformat(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    path = Path(found["path"])
    return ArchiveResult(
        path,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        path.stat().st_size,
        len(contents(path)),
        True,
        1,
        tuple(tuple(s) for s in found["skipped"]),
    )  # type: ignore[misc]


def contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def manifest(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(contents(path)["manifest.json"])
    return loaded


def member_offset(path: Path, name: str) -> int:
    """Where member `name`'s compressed data starts (after its local file header)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = path.read_bytes()
    lengths: tuple[int, int] = struct.unpack("<HH", raw[info.header_offset + 26 :][:4])
    return info.header_offset + 30 + sum(lengths) + info.compress_size // 2


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def rewrite(path: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """Copies the zip with valid CRCs, replacing (or with None dropping) some members."""
    originals = contents(path)
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in {**originals, **change}.items():
            if data is not None:
                archive.writestr(name, data)


def test_archive_holds_everything_and_its_manifest_checks_out(
    config: ArchiveConfig, tmp_path: Path
) -> None:
    """A run's record must be complete and provably intact, checked here without our code."""
    folder = run_folder(tmp_path)
    (folder / "out" / "deep").mkdir(parents=True)
    (folder / "log.txt").write_bytes(b"step 1\nstep 2\n")
    (folder / "out" / "deep" / "model.bin").write_bytes(os.urandom(300_000))
    result = build(config)
    members = contents(result.path)
    listed = manifest(result.path)
    assert result.created and result.version == 1 and result.path == config.directory / "r1.zip"
    assert set(members) == {entry["name"] for entry in listed["members"]} | {"manifest.json"}
    assert {
        "events.jsonl",
        "reports/summary.md",
        "reports/tasks/t1.json",
        "artifacts/log.txt",
        "artifacts/out/deep/model.bin",
    } <= set(members)
    for entry in listed["members"]:
        assert hashlib.sha256(members[entry["name"]]).hexdigest() == entry["sha256"]
        assert len(members[entry["name"]]) == entry["size"]
    assert members["events.jsonl"] == EVENTS
    assert members["artifacts/out/deep/model.bin"] == (folder / "out/deep/model.bin").read_bytes()
    assert listed["run_id"] == "r1" and listed["format_version"] == 1
    assert datetime.fromisoformat(listed["created_at"]) == NOW
    assert listed["artifacts"] == "present" and listed["skipped"] == {}
    assert result.members == len(members) and result.size_bytes == result.path.stat().st_size
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert verify_archive(result.path) == []


def test_building_twice_changes_nothing(config: ArchiveConfig, tmp_path: Path) -> None:
    """The job queue retries: a second build must return the same archive, not rewrite it."""
    (run_folder(tmp_path) / "log.txt").write_bytes(b"x")
    first = build(config)
    mtime = first.path.stat().st_mtime_ns
    second = build(config, events=EVENTS + b'{"late":1}\n')
    assert not second.created and second.path == first.path
    assert second.sha256 == first.sha256 and first.path.stat().st_mtime_ns == mtime
    assert second.members == first.members and second.skipped == first.skipped
    assert sorted(os.listdir(config.directory)) == ["r1.zip"]


def test_missing_artifact_folder_still_gives_an_archive(config: ArchiveConfig) -> None:
    """Runs that made no artifacts still deserve their events and reports archived."""
    result = build(config)
    listed = manifest(result.path)
    assert result.created and listed["artifacts"] == "missing"
    assert listed["skipped"] == {"artifacts/": "not_found"}
    assert contents(result.path)["events.jsonl"] == EVENTS and verify_archive(result.path) == []


def test_insufficient_space_refuses_before_writing(config: ArchiveConfig, tmp_path: Path) -> None:
    """A nearly full disk must get a clear refusal, not a half-written file filling it up."""
    (run_folder(tmp_path) / "log.txt").write_bytes(b"x" * 1000)
    tight = config.model_copy(update={"reserve_bytes": 1 << 62})
    with pytest.raises(ArchiveError) as caught:
        build(tight)
    assert caught.value.reason == "insufficient_space"
    assert str(config.directory) in caught.value.detail
    assert list(config.directory.iterdir()) == []


def test_unreadable_entries_are_skipped_and_the_rest_kept(
    config: ArchiveConfig, tmp_path: Path
) -> None:
    """One file or folder we may not read must not cost the run its whole archive."""
    folder = run_folder(tmp_path)
    (folder / "fine.txt").write_bytes(b"fine")
    (folder / "closed").mkdir()
    (folder / "closed" / "inner.txt").write_bytes(b"inner")
    locked = folder / "locked.txt"
    locked.write_bytes(b"private")
    locked.chmod(0)
    (folder / "closed").chmod(0)
    result = build_without_read_override(config)
    (folder / "closed").chmod(0o755)  # so that pytest can clean up
    assert dict(result.skipped) == {
        "artifacts/locked.txt": "permission_denied",
        "artifacts/closed/": "permission_denied",
    }
    assert set(contents(result.path)) == {
        "events.jsonl",
        *(f"reports/{name}" for name in REPORTS),
        "artifacts/fine.txt",
        "manifest.json",
    }


def test_file_vanishing_mid_archive_is_skipped(config: ArchiveConfig, tmp_path: Path) -> None:
    """A file deleted after it was listed (unreadable even for root) is skipped, not fatal.

    A thread deletes the last file as soon as the temp zip appears, while a 32 MB file listed
    before it is still being compressed."""
    folder = run_folder(tmp_path)
    (folder / "a_big.bin").write_bytes(os.urandom(32 << 20))
    victim = folder / "z_victim.txt"
    victim.write_bytes(b"gone soon")

    def delete_when_writing() -> None:
        deadline = time.monotonic() + 20
        while not list(config.directory.glob(".*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.0005)
        victim.unlink()

    deleter = threading.Thread(target=delete_when_writing)
    deleter.start()
    result = build(config)
    deleter.join()
    assert result.skipped == (("artifacts/z_victim.txt", "vanished"),)
    assert "artifacts/a_big.bin" in contents(result.path) and verify_archive(result.path) == []


def test_symlinks_leaving_the_run_are_skipped(config: ArchiveConfig, tmp_path: Path) -> None:
    """A link must never smuggle system files or another run's secrets into an archive."""
    folder = run_folder(tmp_path)
    other = run_folder(tmp_path, "other-run")
    (other / "secret").write_bytes(SECRET)
    (folder / "passwd").symlink_to("/etc/passwd")
    (folder / "stolen").symlink_to("../other-run/secret")
    (folder / "other-dir").symlink_to(other, target_is_directory=True)
    (folder / "hop").symlink_to("stolen")
    result = build(config)
    assert dict(result.skipped) == {
        f"artifacts/{name}": "symlink_outside_run"
        for name in ("passwd", "stolen", "other-dir", "hop")
    }
    members = contents(result.path)
    assert not any(
        name.startswith(("artifacts/passwd", "artifacts/stolen", "artifacts/other"))
        for name in members
    )
    passwd = Path("/etc/passwd").read_bytes()[:40]
    assert not any(SECRET in data or passwd in data for data in members.values())


def test_symlinks_inside_the_run_are_stored_as_links(config: ArchiveConfig, tmp_path: Path) -> None:
    """Links within a run are part of its layout; following them would duplicate or loop."""
    folder = run_folder(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / "file.txt").write_bytes(b"payload")
    (folder / "latest").symlink_to("data/file.txt")
    (folder / "data-dir").symlink_to("data", target_is_directory=True)
    (folder / "loop").symlink_to("loop")
    result = build(config)
    with zipfile.ZipFile(result.path) as archive:
        for name, target in [("latest", b"data/file.txt"), ("data-dir", b"data")]:
            info = archive.getinfo(f"artifacts/{name}")
            assert stat.S_ISLNK(info.external_attr >> 16)
            assert archive.read(info) == target
        names = archive.namelist()
    assert not any(name.startswith("artifacts/data-dir/") for name in names)
    kinds = {entry["name"]: entry["kind"] for entry in manifest(result.path)["members"]}
    assert kinds["artifacts/latest"] == "symlink" and kinds["artifacts/data/file.txt"] == "file"
    assert verify_archive(result.path) == []
    flattened = tmp_path / "flattened.zip"
    rewrite(result.path, flattened, {})  # the same bytes, but every member a plain file
    assert "artifacts/latest: not a symlink as the manifest says" in verify_archive(flattened)


def test_special_files_and_unsafe_names_are_skipped(config: ArchiveConfig, tmp_path: Path) -> None:
    """A fifo would block a reader forever; odd names must not break or escape the zip."""
    folder = run_folder(tmp_path)
    os.mkfifo(folder / "pipe")
    (folder / "ok.txt").write_bytes(b"ok")
    (folder / os.fsdecode(b"bad-\xff.txt")).write_bytes(b"latin-1 name")
    result = build(config, reports={"../escape.md": b"x", "/abs.md": b"y", "good.md": b"z"})
    assert dict(result.skipped) == {
        "artifacts/pipe": "special_file",
        "artifacts/bad-\\udcff.txt": "name_not_utf8",
        "reports/../escape.md": "unsafe_name",
        "reports//abs.md": "unsafe_name",
    }
    assert set(contents(result.path)) == {
        "events.jsonl",
        "reports/good.md",
        "artifacts/ok.txt",
        "manifest.json",
    }


def test_hostile_run_id_stays_in_the_archive_directory(config: ArchiveConfig) -> None:
    """Run ids come from logs: `../../evil` must not place a file or a member outside."""
    result = build(config, run_id="../../evil")
    assert result.path.parent == config.directory and result.path.name.endswith(".zip")
    assert manifest(result.path)["run_id"] == "../../evil"
    for name in contents(result.path):
        assert not PurePosixPath(name).is_absolute() and ".." not in PurePosixPath(name).parts
    assert os.listdir(config.directory) == [result.path.name]
    assert not (config.directory / "../../evil.zip").resolve().exists()


def test_artifact_folder_outside_the_template_base_is_refused(
    config: ArchiveConfig, tmp_path: Path
) -> None:
    """A run id that walks out of `.worktrees/` (by `..` or a symlink) must not be archived."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_bytes(SECRET)
    (tmp_path / "worktrees").mkdir()
    (tmp_path / "worktrees" / "linked").symlink_to(tmp_path / "elsewhere")
    for run_id in ("../elsewhere", "linked", "..", ""):
        result = build(config, run_id=run_id)
        assert dict(result.skipped) == {"artifacts/": "outside_base"}, run_id
        assert not any(SECRET in data for data in contents(result.path).values())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_archive_is_kept_and_a_new_version_written(
    config: ArchiveConfig, tmp_path: Path, damage: str
) -> None:
    """Evidence is never destroyed: a damaged archive stays as it is, a good one joins it."""
    (run_folder(tmp_path) / "log.txt").write_bytes(b"log")
    original = build(config).path
    if damage == "flip":
        flip_byte(original, member_offset(original, "events.jsonl"))
    else:
        original.write_bytes(original.read_bytes()[:-40])
    damaged = original.read_bytes()
    result = build(config)
    assert result.created and result.version == 2 and result.path.name == "r1+v2.zip"
    assert [path for path, _ in result.corrupt] == [original]
    assert original.read_bytes() == damaged and verify_archive(result.path) == []
    again = build(config)
    assert not again.created and again.path == result.path and again.sha256 == result.sha256


def test_new_version_adds_an_archive_beside_the_old(config: ArchiveConfig) -> None:
    """Late events change a finished run; its first archive must survive unchanged."""
    first = build(config)
    before = first.path.read_bytes()
    late = EVENTS + b'{"kind":"TASK_RETRIED","run_id":"r1"}\n'
    second = build(config, events=late, new_version=True)
    third = build(config, events=late, new_version=True)
    assert (second.version, third.version) == (2, 3) and second.created and not second.corrupt
    assert first.path.read_bytes() == before
    assert contents(second.path)["events.jsonl"] == late
    assert manifest(third.path)["version"] == 3 and build(config).path == third.path
    assert run_archives(config.directory, "r1") == {1: first.path, 2: second.path, 3: third.path}


def test_runs_with_similar_names_never_disturb_each_other(config: ArchiveConfig) -> None:
    """`r1.v2` is a run id, not r1's second version, and only r1's own stale temps are r1's."""
    config.directory.mkdir()
    stale, neighbour = (
        config.directory / f".{stem}.0123456789abcdef.tmp" for stem in ("r1", "r1.5")
    )
    stale.write_bytes(b"PK half")
    neighbour.write_bytes(b"PK in progress")
    first = build(config)
    other = build(config, run_id="r1.v2")
    again = build(config)
    assert (first.path.name, other.path.name) == ("r1.zip", "r1.v2.zip")
    assert other.created and other.version == 1 and not again.created and again.version == 1
    assert not stale.exists() and neighbour.read_bytes() == b"PK in progress"
    assert run_archives(config.directory, "r1") == {1: first.path}


def test_verify_finds_damage_and_tampering(config: ArchiveConfig, tmp_path: Path) -> None:
    """verify_archive is what the next build trusts, so it must catch every kind of damage."""
    good = build(config).path
    flipped = tmp_path / "flipped.zip"
    flipped.write_bytes(good.read_bytes())
    flip_byte(flipped, member_offset(flipped, "reports/summary.md"))
    assert any("reports/summary.md" in problem for problem in verify_archive(flipped))
    forged = EVENTS.replace(b"r1", b"r2")
    cases: dict[str, dict[str, bytes | None]] = {
        "sha256 mismatch": {"events.jsonl": forged},
        "manifest.json missing": {"manifest.json": None},
        "manifest.json invalid": {"manifest.json": b'{"run_id": 1}'},
        "member missing: reports/summary.md": {"reports/summary.md": None},
        "extra member: smuggled": {"smuggled": b"x"},
        "unsafe member name: ../escaped": {"../escaped": b"x"},
    }
    for expected, change in cases.items():
        rewrite(good, tmp_path / "case.zip", change)
        assert any(expected in problem for problem in verify_archive(tmp_path / "case.zip"))
    (tmp_path / "plain.zip").write_bytes(b"not a zip at all")
    assert "unreadable zip" in verify_archive(tmp_path / "plain.zip")[0]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"keep_last": 2}, ["a.zip", "b.zip"]),
        ({"max_age_days": 15}, ["a.zip", "b.zip"]),
        ({"max_total_bytes": 300}, ["a.zip", "b.zip"]),
        ({"keep_last": 3, "max_age_days": 35, "max_total_bytes": 10_000}, ["a.zip"]),
        ({}, []),
    ],
)
def test_retention_deletes_the_oldest_archives_only(
    config: ArchiveConfig, limits: dict[str, Any], expected: list[str]
) -> None:
    """Retention frees space by age, count and size, and touches nothing but archives."""
    config.directory.mkdir()
    (config.directory / "sub").mkdir()
    ages = {
        "b.zip": 20,
        "a.zip": 40,
        "d.zip": 1,
        "c.zip": 10,
        "notes.txt": 99,
        ".r9.0123456789abcdef.tmp": 99,
        "sub/old.zip": 99,
    }
    for name, age in ages.items():
        path = config.directory / name
        path.write_bytes(b"z" * (150 if name == "c.zip" else 100))
        os.utime(path, (NOW.timestamp() - age * 86400,) * 2)
    (config.directory / "link.zip").symlink_to(config.directory / "sub" / "old.zip")
    deleted = apply_retention(config.model_copy(update=limits), NOW)
    assert deleted == [config.directory / name for name in expected]
    survivors = {*ages, "link.zip"} - set(expected)
    assert all((config.directory / name).exists() for name in survivors)
    assert not any((config.directory / name).exists() for name in expected)


def test_kill_9_mid_write_leaves_no_archive_and_the_next_build_recovers(
    config: ArchiveConfig, tmp_path: Path
) -> None:
    """A crash mid-write must never leave a partial file under the final name."""
    folder = run_folder(tmp_path, "big")
    for index in range(16):
        (folder / f"part-{index:02}.bin").write_bytes(os.urandom(4 << 20))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config.directory), config.artifacts])
    deadline = time.monotonic() + 20
    while not (temps := [p for p in config.directory.glob(".big.*.tmp") if p.stat().st_size]):
        assert child.poll() is None and time.monotonic() < deadline, "never saw the temp file"
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    assert not (config.directory / "big.zip").exists()
    assert temps[0].exists() and verify_archive(temps[0]) != []
    result = build(config, run_id="big")
    assert result.created and verify_archive(result.path) == []
    assert sorted(os.listdir(config.directory)) == ["big.zip"]
    assert len(contents(result.path)) == 16 + 4  # parts, events, two reports, manifest


def test_config_is_strict(tmp_path: Path) -> None:
    """A typo or a template shared by all runs must fail at startup, not at archive time."""
    with pytest.raises(ValidationError, match="run_id"):
        ArchiveConfig(artifacts=str(tmp_path / "shared"))
    with pytest.raises(ValidationError, match="keep_lats"):
        ArchiveConfig.model_validate({"keep_lats": 3})
    assert ArchiveConfig().artifacts == ".worktrees/{run_id}"


def test_one_corrupt_member_among_20000_is_named(config: ArchiveConfig, tmp_path: Path) -> None:
    """A big run's archive is verified at every build; verification reads each member once
    and looks it up by name, so 20,000 members cost 20,000 checks, not 20,000²."""
    folder = run_folder(tmp_path)
    for index in range(20_000):
        (folder / f"f{index:05}.txt").write_bytes(b"member %d\n" % index)
    result = build(config)
    assert result.members == 20_000 + 4 and verify_archive(result.path) == []
    flip_byte(result.path, member_offset(result.path, "artifacts/f12345.txt"))
    [problem] = verify_archive(result.path)
    assert problem.startswith("artifacts/f12345.txt: ")


def test_backslashes_in_file_names_are_archived(config: ArchiveConfig, tmp_path: Path) -> None:
    """`\\` is an ordinary character in a POSIX name; only a name that Windows tools would
    split into a part leaving the folder is skipped, and never costs the run its archive."""
    folder = run_folder(tmp_path)
    (folder / "a\\b.txt").write_bytes(b"backslash")
    (folder / "dir\\name").mkdir()
    (folder / "dir\\name" / "inner\\.txt").write_bytes(b"inner")
    (folder / "..\\up.txt").write_bytes(b"would leave the folder on Windows")
    result = build(config)
    assert verify_archive(result.path) == []
    members = contents(result.path)
    assert members["artifacts/a\\b.txt"] == b"backslash"
    assert members["artifacts/dir\\name/inner\\.txt"] == b"inner"
    assert dict(result.skipped) == {"artifacts/..\\up.txt": "unsafe_name"}


def test_archives_are_private_whatever_the_modes_of_the_files(
    config: ArchiveConfig, tmp_path: Path
) -> None:
    """An archive holds the run's files, maybe keys: only its owner may read it, even under a
    permissive umask; artifact members keep their own mode, the rest are private too."""
    folder = run_folder(tmp_path)
    (folder / "public.txt").write_bytes(b"public")
    (folder / "public.txt").chmod(0o644)
    (folder / "run.sh").write_bytes(b"#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    previous = os.umask(0)
    try:
        result = build(config)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    with zipfile.ZipFile(result.path) as archive:
        modes = {
            info.filename: stat.S_IMODE(info.external_attr >> 16) for info in archive.infolist()
        }
    assert modes["artifacts/public.txt"] == 0o644 and modes["artifacts/run.sh"] == 0o755
    assert {modes[name] for name in ("events.jsonl", "manifest.json", "reports/summary.md")} == {
        0o600
    }
