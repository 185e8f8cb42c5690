"""`cdnreq import-legacy` end to end: real legacy databases (tests/legacy),
a real slapproxy and DevDns, then cdnreq's own ticks. Each test damages the
old state or the parties around it the way an operator's mistake or a
hostile customer could, and checks the promises: no live site broken, no
second entry, no lost proof, one instance's garbage that instance's finding."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from legacy.fixtures import LegacySite

pytestmark = pytest.mark.slapproxy

ROOT = Path(__file__).resolve().parents[1]  # this tree's cdnreq, not the installed one
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cdnreq(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cdnreq.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def copy_of(ls: LegacySite, tmp_path: Path, name: str) -> Path:
    """A copy of the old requester's directory to damage (the fixture's stays as built)."""
    folder = tmp_path / name
    shutil.copytree(ls.db_dir, folder)
    return folder


def configure(ls: LegacySite, tmp_path: Path, name: str) -> Path:
    return ls.write_config(tmp_path / f"{name}.toml", database=tmp_path / name / "state" / "cdnreq.db")


def stored_instances(database: Path) -> int:
    if not database.exists():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]


def shown(ls: LegacySite, customer) -> dict:
    """What the customer's instance shows now (its connection parameters)."""
    return ls.site.customer(customer.guid)["connection_parameters"]


def import_legacy(config: Path, *sources: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [a for s in sources for a in ("--from", str(s))]
    return cdnreq("import-legacy", "--config", str(config), *args, *extra)


def test_a_request_stage_database_left_out_is_refused_naming_the_prefix(legacy_site_shared, tmp_path):
    """Without the request stage's table every live customer would be imported
    as still waiting for its entry, and the first tick would publish to all."""
    ls = legacy_site_shared
    folder = copy_of(ls, tmp_path, "old")
    (folder / "requested.db").unlink()
    config = configure(ls, tmp_path, "left-out")
    done = import_legacy(config, folder)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "[legacy].request_prefix" in done.stderr and "request stage" in done.stderr
    assert stored_instances(tmp_path / "left-out" / "state" / "cdnreq.db") == 0


def test_a_database_linked_into_the_directory_is_read(legacy_site_shared, tmp_path):
    """The old requester's databases may be links to where buildout kept them."""
    ls = legacy_site_shared
    folder = copy_of(ls, tmp_path, "old")
    real = tmp_path / "elsewhere" / "requested.db"
    real.parent.mkdir()
    (folder / "requested.db").rename(real)
    (folder / "requested.db").symlink_to(real)
    config = configure(ls, tmp_path, "linked")
    done = import_legacy(config, folder, extra=("--json", "--dry-run"))
    assert done.returncode == 0, done.stderr
    sources = [(Path(s["path"]).name, s["role"]) for s in json.loads(done.stdout)["sources"]]
    assert [role for name, role in sources if name == "requested.db"] == ["requested"]
    baseline = import_legacy(configure(ls, tmp_path, "baseline"), ls.db_dir, extra=("--json", "--dry-run"))
    assert json.loads(done.stdout)["summary"] == json.loads(baseline.stdout)["summary"]
    twice = import_legacy(config, folder, real, extra=("--json", "--dry-run"))  # one file named twice: read once
    assert twice.returncode == 0, twice.stderr
    assert json.loads(twice.stdout)["summary"] == json.loads(baseline.stdout)["summary"]


def test_importing_again_with_merge_adds_nothing_and_is_not_taken_for_a_wrong_style(legacy_site_shared, tmp_path):
    ls = legacy_site_shared
    config = configure(ls, tmp_path, "twice")
    first = import_legacy(config, ls.db_dir, extra=("--json",))
    assert first.returncode == 0, first.stderr
    stored = stored_instances(tmp_path / "twice" / "state" / "cdnreq.db")
    again = import_legacy(config, ls.db_dir)
    assert again.returncode == 3 and "--merge" in again.stderr
    merged = import_legacy(config, ls.db_dir, extra=("--merge", "--json"))
    assert merged.returncode == 0, merged.stderr
    doc = json.loads(merged.stdout)
    assert doc["summary"]["instances"] == 0
    assert {f["kind"] for f in doc["findings"]} == {"already-known"}
    assert stored_instances(tmp_path / "twice" / "state" / "cdnreq.db") == stored


def test_a_store_that_is_not_a_cdnreq_database_is_refused_without_blaming_a_daemon(legacy_site_shared, tmp_path):
    ls = legacy_site_shared
    config = configure(ls, tmp_path, "foreign")
    database = tmp_path / "foreign" / "state" / "cdnreq.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"not a database at all" * 100)
    done = import_legacy(config, ls.db_dir)
    assert done.returncode == 3
    assert str(database) in done.stderr and "stop cdnreq" not in done.stderr
    assert database.read_bytes() == b"not a database at all" * 100


def test_a_pending_customer_missing_from_the_listing_at_the_import_keeps_its_token(legacy_site, tmp_path):
    """The master's listing loses a pending customer during the import and
    has it again at the first tick: the customer is shown the token the old
    requester gave it, not a new challenge."""
    ls = legacy_site
    pending = ls.pending[0]
    token = shown(ls, pending)["txt_value"]
    params = dict(pending.parameters)
    ls.site.remove_customer(pending.title)
    config = configure(ls, tmp_path, "lost")
    done = import_legacy(config, ls.db_dir, extra=("--json",))
    assert done.returncode == 0, done.stderr
    assert ("pending-not-listed", pending.guid) in {(f["kind"], f["guid"]) for f in json.loads(done.stdout)["findings"]}
    assert ls.site.add_customer(pending.title, params) == pending.guid
    tick = cdnreq("once", "--config", str(config))
    assert tick.returncode == 0, tick.stderr
    assert shown(ls, pending).get("txt_value") == token


def test_an_alias_added_after_the_cron_stopped_is_not_served_without_proof(legacy_site, tmp_path):
    """proven-www proved www.x.test; after the old requester's last run it adds
    blog.x.test. The import must not grant it by the old last-two-labels rule:
    after the first tick no entry serves blog.x.test and nobody holds it."""
    ls = legacy_site
    customer = next(c for c in ls.proven if c.parameters["custom_domain"] == "www.x.test")
    params = {**customer.parameters, "server-alias": customer.parameters["server-alias"] + " blog.x.test"}
    ls.site.add_customer(customer.title, params)
    config = configure(ls, tmp_path, "added")
    done = import_legacy(config, ls.db_dir)
    assert done.returncode == 0, done.stderr
    database = tmp_path / "added" / "state" / "cdnreq.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        held = {h for (h,) in conn.execute("SELECT host FROM hosts")}
    assert "blog.x.test" not in held and "www.x.test" in held
    tick = cdnreq("once", "--config", str(config))
    assert tick.returncode == 0, tick.stderr
    served = [e for e in ls.site.technical_entries() if "blog.x.test" in json.dumps(e.get("parameters"))]
    assert served == []


def tick_calls(config: Path) -> dict:
    """One tick; the master calls it made (from its 'tick done' log line)."""
    done = cdnreq("once", "--config", str(config))
    assert done.returncode == 0, done.stderr
    line = next(json.loads(l) for l in (done.stdout + done.stderr).splitlines()
                if l.startswith("{") and '"tick done"' in l)
    return line["master_calls"]


def test_the_first_two_ticks_after_an_import_of_unchanged_customers_only_list(legacy_population, tmp_path):
    """The cut-over is a non-event for unchanged live customers: the first and
    second ticks request, update, destroy and publish nothing."""
    ls = legacy_population(n=24, proven_every=3)
    before = {e["title"]: e for e in ls.site.technical_entries()}
    shown_before = {c.guid: shown(ls, c) for c in ls.all()}
    config = configure(ls, tmp_path, "quiet")
    done = import_legacy(config, ls.db_dir, extra=("--json",))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["findings"] == []
    for _ in range(2):
        assert set(tick_calls(config)) == {"slapos.allDocs.v0.instance_node_instance_list"}
    assert {e["title"]: e for e in ls.site.technical_entries()} == before
    assert {c.guid: shown(ls, c) for c in ls.all()} == shown_before
