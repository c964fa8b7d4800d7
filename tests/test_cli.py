"""`runwatch` as users run it: real subprocesses, real files, real SQLite databases."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pydantic import BaseModel

from helpers import RUNWATCH, run_cli
from runwatch.sinks.store.schema import RUN_COLUMNS
from runwatch.stream.cli.common import Command
from runwatch.stream.cli.main import main
from runwatch.stream.cli.registry import COMMANDS, build_parser
from runwatch.stream.devtools.writer import simulate
from runwatch.stream.settings.service import Settings

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config" / "runwatch.yaml"
CLI = ROOT / "stream" / "cli"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand the real parser knows, nested ones as "alerts test", so a new one is
    covered without editing here."""
    found: dict[str, argparse.ArgumentParser] = {}

    def collect(parser: argparse.ArgumentParser, prefix: str) -> None:
        # argparse keeps subparsers only in this private action; there is no public accessor.
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[prefix + name] = child
                    collect(child, prefix + name + " ")

    collect(build_parser(), "")
    return found


def registered(commands: tuple[Command, ...] = COMMANDS, prefix: str = "") -> dict[str, Command]:
    """Every command in the registry, nested ones as "alerts test"."""
    found: dict[str, Command] = {}
    for command in commands:
        found[prefix + command.name] = command
        found |= registered(command.subcommands, prefix + command.name + " ")
    return found


def command_help() -> dict[str, str | None]:
    """The one-line help each subcommand shows in `runwatch --help`."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help for choice in action._choices_actions}


def bus(etype: str, second: int, run_id: str, **fields: Any) -> bytes:
    """One event-bus line at 2026-02-01T10:00:SS."""
    return orjson.dumps(
        {
            "event_type": etype,
            "timestamp": f"2026-02-01T10:00:{second:02d}Z",
            "run_id": run_id,
            **fields,
        }
    )


def corpus(folder: Path) -> Path:
    """Three runs: one succeeds (implicitly), one fails, one is still running."""
    lines = [
        bus("run_created", 0, "run-ok", payload={"total_tasks": 2}),
        bus("run_started", 1, "run-ok"),
        bus("task_started", 2, "run-ok", task_id="t1", workstream_id="WS-1"),
        bus("task_completed", 3, "run-ok", task_id="t1", workstream_id="WS-1"),
        bus("task_started", 4, "run-ok", task_id="t2", workstream_id="WS-2"),
        bus("task_completed", 5, "run-ok", task_id="t2", workstream_id="WS-2"),
        bus("run_started", 6, "run-bad"),
        bus("task_started", 7, "run-bad", task_id="b1", workstream_id="WS-1"),
        bus("task_failed", 8, "run-bad", task_id="b1", severity="error"),
        bus("run_failed", 9, "run-bad"),
        bus("run_started", 10, "run-open"),
        bus("task_started", 11, "run-open", task_id="o1", workstream_id="WS-1"),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return folder


def ok(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def status_json(db: Path, cwd: Path, *extra: str) -> Any:
    return json.loads(ok("status", "--db", db, "--json", "--limit", "1000", *extra, cwd=cwd).stdout)


def clean_failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Assert a failure exit with a one-message stderr (no traceback); return the message."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("runwatch"), result.stderr
    return result.stderr


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A database replayed from the three-run corpus by the real CLI."""
    db = tmp_path / "state" / "runwatch.db"
    ok("replay", corpus(tmp_path / "events"), "--db", db, cwd=tmp_path)
    return db


# --- help -----------------------------------------------------------------------------


def test_top_level_help_lists_every_command(tmp_path: Path) -> None:
    """`runwatch --help` is where users discover commands; each must be listed with a summary."""
    result = ok("--help", cwd=tmp_path)
    assert result.stdout.startswith("usage: runwatch")
    helps = command_help()
    assert set(helps) == {name for name in subcommands() if " " not in name}
    for name, summary in helps.items():
        assert summary, f"`runwatch {name}` has no help line"
        assert name in result.stdout
        assert summary.split()[0] in result.stdout


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_has_help(name: str, tmp_path: Path) -> None:
    """A command without working --help, or with an undocumented option, cannot be used safely."""
    result = ok(*name.split(), "--help", cwd=tmp_path)
    assert result.stdout.startswith(f"usage: runwatch {name}")
    parser = subcommands()[name]
    assert parser.description, f"`runwatch {name}` has no description"
    for action in parser._actions:
        shown = action.option_strings[-1] if action.option_strings else action.metavar
        shown = shown or action.dest
        assert isinstance(shown, str)
        assert action.help, f"`runwatch {name}` {shown} has no help text"
        assert shown in result.stdout


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_registered_command_answers_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A command added to the registry is documented and reachable without further wiring."""
    with pytest.raises(SystemExit) as exit_:
        main([*name.split(), "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    command = registered()[name]
    assert shown.startswith(f"usage: runwatch {name}")
    assert command.help and command.description
    assert command.description.split()[0] in shown


def test_the_parser_has_exactly_the_registered_commands() -> None:
    """The registry is the one place a command is added: the parser holds nothing else."""
    assert set(subcommands()) == set(registered())
    assert list(command_help()) == [command.name for command in COMMANDS]


def test_only_the_registry_adds_subcommands() -> None:
    """No module wires a command into the parser behind the registry's back."""
    adders = {"add_parser", "add_subparsers"}
    for path in sorted((ROOT / "stream").rglob("*.py")):
        called = {
            node.func.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert path == CLI / "registry.py" or not called & adders, path


def test_every_command_module_is_registered() -> None:
    """A command module that exposes COMMAND but is missing from the registry is dead code."""
    modules = [
        importlib.import_module(f"runwatch.stream.cli.{path.stem}")
        for path in sorted(CLI.glob("*.py"))
        if path.stem != "__init__"
    ]
    exposed = [module.COMMAND for module in modules if hasattr(module, "COMMAND")]
    assert sorted(c.name for c in exposed) == sorted(c.name for c in COMMANDS)


def test_nothing_below_the_cli_imports_it() -> None:
    """Dependencies point inward: analysis, services, sources and the rest never reach up
    into the command line (errors they raise live in stream/errors.py)."""
    for path in sorted((ROOT / "stream").rglob("*.py")):
        if CLI in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("runwatch.stream.cli"), path
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("runwatch.stream.cli") for a in node.names), path


# --- replay and status --------------------------------------------------------------------


def test_status_table_shows_the_runs(built: Path, tmp_path: Path) -> None:
    """The default view must name every run with its status, or the monitor shows nothing."""
    out = ok("status", "--db", built, cwd=tmp_path).stdout
    for run_id, status in (("run-ok", "succeeded"), ("run-bad", "failed"), ("run-open", "running")):
        line = next(line for line in out.splitlines() if line.startswith(run_id + " "))
        assert status in line


def test_status_json_rows_have_exactly_the_runs_columns(built: Path, tmp_path: Path) -> None:
    """Scripts parse `status --json`; its objects are the documented runs columns, no more."""
    runs = status_json(built, tmp_path)
    assert isinstance(runs, list)
    assert {run["run_id"]: run["status"] for run in runs} == {
        "run-ok": "succeeded",
        "run-bad": "failed",
        "run-open": "running",
    }
    for run in runs:
        assert isinstance(run, dict)
        assert set(run) == set(RUN_COLUMNS)


def test_status_of_one_run_includes_tasks_and_workstreams(built: Path, tmp_path: Path) -> None:
    """Drilling into a run is how a user finds the failing task and its workstream."""
    text = ok("status", "--db", built, "--run", "run-ok", cwd=tmp_path).stdout
    assert "run-ok" in text
    assert "succeeded" in text
    for name in ("tasks:", "t1", "t2", "workstreams:", "WS-1", "WS-2"):
        assert name in text
    detail = json.loads(
        ok("status", "--db", built, "--run", "run-bad", "--json", cwd=tmp_path).stdout
    )
    assert {k: detail[k] for k in RUN_COLUMNS}["status"] == "failed"
    assert [(t["task_id"], t["status"], t["workstream_id"]) for t in detail["tasks"]] == [
        ("b1", "failed", "WS-1")
    ]
    assert [
        (w["workstream_id"], w["status"], w["tasks_failed"]) for w in detail["workstreams"]
    ] == [("WS-1", "failed", 1)]


def test_status_of_an_unknown_run_fails_with_a_message(built: Path, tmp_path: Path) -> None:
    """A typo in a run id must not look like an empty run."""
    message = clean_failure(run_cli("status", "--db", built, "--run", "nope", cwd=tmp_path), 1)
    assert "nope" in message
    assert run_cli("status", "--db", built, "--run", "nope", cwd=tmp_path).stdout == ""


def test_report_output_shows_a_hostile_run_id_inert(tmp_path: Path) -> None:
    """A run id is log text: printed by `report`, it must not drive the terminal."""
    evil = "R-\x1b]0;pwned\x07\x1b[2J-\u202eevil"
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        bus("run_started", 0, evil)
        + b"\n"
        + bus("run_completed", 1, evil, payload={"status": "succeeded"})
        + b"\n"
    )
    db = tmp_path / "runwatch.db"
    ok("replay", events, "--db", db, cwd=tmp_path)
    shown = ok("report", evil, "--db", db, cwd=tmp_path).stdout
    assert "REPORT_GENERATED" in shown
    assert "run_id=R-\\x1b]0;pwned\\x07\\x1b[2J-\\u202eevil" in shown
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown


def test_status_filter_keeps_only_that_status(built: Path, tmp_path: Path) -> None:
    """`--status failed` is the triage view: it must not mix in other runs."""
    runs = status_json(built, tmp_path, "--status", "failed")
    assert [run["run_id"] for run in runs] == ["run-bad"]
    table = ok("status", "--db", built, "--status", "failed", cwd=tmp_path).stdout
    assert "run-bad" in table
    assert "run-ok" not in table
    assert "run-open" not in table


def test_status_on_a_missing_database_names_it(tmp_path: Path) -> None:
    """A wrong --db must say which file is missing, and must not create an empty one."""
    missing = tmp_path / "nowhere" / "runwatch.db"
    message = clean_failure(run_cli("status", "--db", missing, cwd=tmp_path), 2)
    assert str(missing) in message
    assert not missing.exists()
    assert not missing.parent.exists()


def foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers VALUES (1, 'ada')")
    db.close()


def other_schema_version(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    db.close()


def not_sqlite(path: Path) -> None:
    path.write_bytes(b"this is a text file, not a database\n" * 200)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (foreign_sqlite, "not a runwatch database"),
        (other_schema_version, "schema version 99"),
        (not_sqlite, "not a usable runwatch database"),
    ],
    ids=["foreign-sqlite", "schema-99", "not-sqlite"],
)
def test_status_refuses_a_database_it_cannot_read(
    make: Callable[[Path], None], words: str, tmp_path: Path
) -> None:
    """Pointing --db at the wrong file gives a clear message and leaves that file untouched."""
    path = tmp_path / "other.db"
    make(path)
    before = path.read_bytes()
    message = clean_failure(run_cli("status", "--db", path, cwd=tmp_path), 1)
    assert str(path) in message
    assert words in message
    assert path.read_bytes() == before


def test_status_watch_refuses_postgresql_instead_of_showing_another_database(
    tmp_path: Path,
) -> None:
    """--watch reads SQLite files; given a PostgreSQL URL it must not fall back to the
    default file and show a different projection."""
    result = run_cli("status", "--watch", "--db", "postgresql://nobody@127.0.0.1/x", cwd=tmp_path)
    assert "not PostgreSQL" in clean_failure(result, 2)


def test_replaying_the_same_files_twice_gives_the_same_status(built: Path, tmp_path: Path) -> None:
    """Replay is a rebuild: doing it again over the same logs must not change what users see."""
    first = status_json(built, tmp_path)
    ok("replay", tmp_path / "events", "--db", built, cwd=tmp_path)
    assert status_json(built, tmp_path) == first


def test_failed_replay_leaves_the_old_database(built: Path, tmp_path: Path) -> None:
    """A replay that cannot start must not cost the user the database they already have."""
    before = status_json(built, tmp_path)
    message = clean_failure(
        run_cli("replay", tmp_path / "no-such-dir", "--db", built, cwd=tmp_path), 2
    )
    assert "no-such-dir" in message
    assert status_json(built, tmp_path) == before


def big_corpus(path: Path, lines: int = 200_000) -> Path:
    """A file large enough that replaying it takes a second or so."""
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "event_type": "task_progress",
                    "timestamp": 1767261600 + i,
                    "run_id": f"big-{i % 300}",
                    "task_id": f"t{i % 5}",
                }
            )
            + b"\n"
            for i in range(lines)
        )
    )
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "kill-9"])
def test_interrupted_replay_leaves_the_old_database(
    sig: signal.Signals, built: Path, tmp_path: Path
) -> None:
    """Ctrl-C or a crash halfway through a rebuild must leave the previous database in place."""
    before = status_json(built, tmp_path)
    big = big_corpus(tmp_path / "big.jsonl")
    proc = subprocess.Popen(
        [*RUNWATCH, "replay", str(big), "--db", str(built), "--workers", "0", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored, and Python then keeps it so.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    scratch = built.with_name(f".{built.name}.replay-{proc.pid}")
    deadline = time.monotonic() + 20
    while not scratch.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scratch.exists(), "the replay never started building"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert "interrupted" in stderr
        assert not scratch.exists(), "an interrupted replay must clean up its scratch file"
    else:
        assert proc.returncode == -signal.SIGKILL
    assert status_json(built, tmp_path) == before


# --- check-config ---------------------------------------------------------------------


def test_shipped_config_is_valid(tmp_path: Path) -> None:
    """The example config users copy must itself pass the checker."""
    result = ok("check-config", SHIPPED_CONFIG, cwd=tmp_path)
    assert "OK" in result.stdout


def test_every_setting_is_in_the_shipped_config_and_the_readme() -> None:
    """config/runwatch.yaml shows every key with its default, and the README's configuration
    table explains every one: a setting added to the code alone cannot be found by users."""
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Performance")]
    for name, field in Settings.model_fields.items():
        assert name in shipped, f"{name} is missing from {SHIPPED_CONFIG.name}"
        assert f"| `{name}" in table, f"{name} is missing from the README's configuration table"
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            assert set(shipped[name]) == set(nested.model_fields), name
            for key in nested.model_fields:
                assert re.search(rf"`({name}\.)?{key}`", table), f"{name}.{key} not in the README"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("stall_after: [30\n", "line"),
        ("stall_aftr: 30m\n", "stall_aftr"),
        ("stall_after: -5\n", "stall_after"),
        ("stall_after: soon\n", "stall_after"),
        ("sources:\n  - name: x\n    paths: []\n", "sources.0.paths"),
        ("database: ${RUNWATCH_TEST_SURELY_UNSET_VAR}/x.db\n", "RUNWATCH_TEST_SURELY_UNSET_VAR"),
    ],
    ids=["bad-yaml", "unknown-key", "negative", "not-a-duration", "empty-paths", "unset-env"],
)
def test_bad_config_is_one_message_naming_the_problem(
    text: str, named: str, tmp_path: Path
) -> None:
    """A config mistake must point at the file and the key, never dump a traceback."""
    config = tmp_path / "runwatch.yaml"
    config.write_text(text, encoding="utf-8")
    message = clean_failure(run_cli("check-config", config, cwd=tmp_path), 2)
    assert str(config) in message
    assert named in message


def test_unset_env_var_names_the_key_too(tmp_path: Path) -> None:
    """Knowing the variable is not enough when several keys use it: the key is named as well."""
    config = tmp_path / "runwatch.yaml"
    config.write_text("logs_dir: ${RUNWATCH_TEST_SURELY_UNSET_VAR}\n", encoding="utf-8")
    message = clean_failure(run_cli("check-config", config, cwd=tmp_path), 2)
    assert "logs_dir" in message


def test_check_config_never_prints_the_database_password(tmp_path: Path) -> None:
    """The settings are shown to check them, not to leak them: the URL keeps its user, host,
    database and schema, never a password (in the URL or as a query parameter)."""
    config = tmp_path / "runwatch.yaml"
    config.write_text(
        "database_url: postgresql://rw:s3cret-pw@db.example:5433/prod"
        "?password=other-pw&sslmode=require&schema=live\n",
        encoding="utf-8",
    )
    shown = "postgresql://rw@db.example:5433/prod?sslmode=require&schema=live"
    text = ok("check-config", config, cwd=tmp_path).stdout
    assert f"database_url: {shown}" in text
    as_json = ok("check-config", config, "--json", cwd=tmp_path).stdout
    assert json.loads(as_json)["database_url"] == shown
    for output in (text, as_json):
        assert "s3cret-pw" not in output and "other-pw" not in output


def test_a_bad_channel_timeout_is_one_message_naming_it(tmp_path: Path) -> None:
    """A duration typo in the alerts file is a config error like any other, not a crash."""
    alerts = tmp_path / "alerts.yaml"
    alerts.write_text(
        "channels:\n  webhook:\n    type: webhook\n    url: http://127.0.0.1:9/x\n"
        "    timeout: soon\n"
    )
    message = clean_failure(run_cli("alerts", "check", alerts, cwd=tmp_path), 2)
    assert "channels.webhook.timeout: expected a duration" in message


def test_bad_config_stops_other_commands_too(built: Path, tmp_path: Path) -> None:
    """Every command validates --config the same way, with exit 2 and no traceback."""
    config = tmp_path / "bad.yaml"
    config.write_text("stall_after: -5\n", encoding="utf-8")
    message = clean_failure(run_cli("status", "--db", built, "--config", config, cwd=tmp_path), 2)
    assert "stall_after" in message


# --- simulate → replay → status -------------------------------------------------------


def test_simulated_corpus_replays_to_the_simulators_expectation(tmp_path: Path) -> None:
    """The simulator knows the right answer for its corpus; the whole pipeline must agree."""
    runs, seed, stall_rate, fail_rate = 25, 11, 0.3, 0.4
    out = tmp_path / "events"
    ok(
        "simulate",
        "--out",
        out,
        "--runs",
        str(runs),
        "--seed",
        str(seed),
        "--stall-rate",
        str(stall_rate),
        "--fail-rate",
        str(fail_rate),
        cwd=tmp_path,
    )
    again = tmp_path / "again"
    summary = simulate(again, runs=runs, seed=seed, stall_rate=stall_rate, fail_rate=fail_rate)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl"))
    assert written == sorted(str(Path(name).relative_to(again)) for name in summary.files)
    for name in written:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    db = tmp_path / "sim.db"
    ok("replay", out, "--db", db, cwd=tmp_path)
    rows = status_json(db, tmp_path)
    assert {row["run_id"]: row["status"] for row in rows} == summary.expected_status
    assert sorted(r["run_id"] for r in rows if r["stalled"]) == sorted(summary.stalled_runs)
    assert len(set(summary.expected_status.values())) >= 3  # the corpus really is varied
