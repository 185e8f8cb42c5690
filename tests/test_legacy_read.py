"""cdnreq.legacy.read: the old databases are read from copies, and told apart by content.

These build small databases in the old requester's table layout by hand, to
reach cases its own code rarely leaves (WAL files, two request tables,
garbage); tests/test_legacy_import.py reads databases the old code wrote.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from cdnreq.legacy.read import LegacyError, read_legacy

INSTANCE = (
    "CREATE TABLE instance (reference VARCHAR(255), json_parameters TEXT, json_error TEXT,"
    " hash VARCHAR(255), timestamp VARCHAR(255), valid_parameter VARCHAR(255), PRIMARY KEY (reference))"
)
DOMAINS = (
    "CREATE TABLE domain_validation (instance_reference VARCHAR(255) unique, domain VARCHAR(255),"
    " token VARCHAR(255), validated BOOLEAN, timestamp VARCHAR(255), PRIMARY KEY (instance_reference));"
    "CREATE TABLE used_hosts (host VARCHAR(255), instance_reference VARCHAR(255), PRIMARY KEY (host, instance_reference))"
)


def instance_db(path: Path, rows: list[tuple], *, wal: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(INSTANCE)
    for ref, params, error, state, at in rows:
        conn.execute("INSERT INTO instance VALUES (?, ?, ?, '', ?, ?)",
                     (ref, params if isinstance(params, str) else json.dumps(params), json.dumps(error), str(at), state))
    conn.commit()
    return conn


def domains_db(path: Path, rows: list[tuple]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(DOMAINS)
    conn.executemany("INSERT INTO domain_validation VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_roles_are_told_apart_and_the_originals_are_left_as_they_were(tmp_path: Path):
    old = tmp_path / "old"
    old.mkdir()
    p = {"url": "https://198.51.100.1"}
    instance_db(old / "a.db", [("_x", p, {}, "valid", 1), ("_y", p, {}, "valid", 1)]).close()
    instance_db(old / "b.db", [("_x", p, {}, "valid", 1), ("_y", p, {}, "stopped", 9)]).close()
    # the request stage's table in WAL mode, its rows still in the -wal file (never checkpointed)
    keep_open = instance_db(old / "c.db", [("_x", p, {"site_url": "https://x"}, "valid", 1)], wal=True)
    domains_db(old / "d.db", [("_x", "x.test", "tok", 1, "5")])
    (old / "notes.txt").write_text("not a database")
    assert (old / "c.db-wal").stat().st_size > 0
    before = digests(old)
    state = read_legacy([old])
    after = digests(old)  # while the old requester's connection still holds its WAL
    keep_open.close()
    assert after == before  # byte for byte, and no -shm or journal left behind by the reader
    roles = {Path(s.path).name: s.role for s in state.sources}
    assert roles == {"a.db": "source (not needed)", "b.db": "validated", "c.db": "requested", "d.db": "domains"}
    assert state.requested["_x"].published == {"site_url": "https://x"}  # read through the -wal
    assert state.validated["_y"].state == "stopped" and state.validated["_y"].at == 9.0
    assert state.proofs["_x"].token == "tok" and state.proofs["_x"].validated is True


def test_two_request_tables_are_refused_naming_both(tmp_path: Path):
    for name in ("r1.db", "r2.db"):
        instance_db(tmp_path / name, [("_x", {}, {"site_url": "u"}, "valid", 1)]).close()
    with pytest.raises(LegacyError, match=r"r1\.db.*r2\.db.*--from"):
        read_legacy([tmp_path])


def test_unreadable_rows_are_kept_as_unreadable_not_guessed(tmp_path: Path):
    instance_db(tmp_path / "r.db", [("_x", "{not json", {"site_url": "u"}, "valid", "later"), (None, {}, {}, "valid", 1)]).close()
    state = read_legacy([tmp_path / "r.db"])
    assert list(state.requested) == ["_x"]
    assert state.requested["_x"].parameters is None and state.requested["_x"].at is None


@pytest.mark.parametrize("at", [None, "", "later", "nan", "inf", "-inf", "1e999"])
def test_a_time_that_cannot_be_read_is_none_not_a_guess(tmp_path: Path, at):
    """0 would end a retention at once and win every host conflict; NaN cannot be stored."""
    instance_db(tmp_path / "v.db", [("_x", {}, {}, "stopped", at)]).close()
    domains_db(tmp_path / "d.db", [("_x", "x.test", "tok", 1, at)])
    state = read_legacy([tmp_path])
    assert state.validated["_x"].at is None and state.proofs["_x"].at is None


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or directory"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200), "not a readable legacy database"),
    (lambda p: p.write_text("hello"), "no SQLite database found"),
])
def test_bad_sources_are_refused_naming_the_file(tmp_path: Path, make, message):
    path = tmp_path / "x.db"
    make(path)
    with pytest.raises(LegacyError, match=message):
        read_legacy([path])


def test_two_token_tables_are_refused_naming_both(tmp_path: Path):
    """A stale copy of the tokens beside the real one (domains.db.bak) must not
    be merged in: whichever were read last would decide every customer's proof."""
    domains_db(tmp_path / "domains.db", [("_x", "x.test", "tok", 1, "5")])
    domains_db(tmp_path / "domains.db.bak", [("_x", "x.test", "stale", 0, "5")])
    with pytest.raises(LegacyError, match=r"domains\.db, .*domains\.db\.bak.*--from"):
        read_legacy([tmp_path])
    assert read_legacy([tmp_path / "domains.db"]).proofs["_x"].token == "tok"


def test_the_import_prints_a_hostile_file_name_escaped(tmp_path: Path):
    """A database whose name holds a terminal escape or a newline is named, not obeyed."""
    from cdnreq.commands.import_legacy import render

    name = "evil\x1b]0;owned\x07\nfake: requested (9 rows).db"
    domains_db(tmp_path / name, [("_x", "x.test", "tok", 1, "5")])
    state = read_legacy([tmp_path])
    doc = {"dry_run": True, "summary": {}, "findings": [], "unreadable_entries": 0,
           "sources": [{"path": s.path, "role": s.role, "rows": s.rows} for s in state.sources]}
    text = render(doc)
    assert "\x1b" not in text and "\x07" not in text
    assert len(text.splitlines()) == 3  # the header, the one source, the totals
