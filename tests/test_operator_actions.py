"""Issue 11 #4: operator actions (`cdnreq approve`, `retry`, `release`,
`forget`) through the real command, against a real slapproxy: sent to a
running daemon (`cdnreq run`, a subprocess) with its token, refused without
one (403) or with a wrong one (401), and applied under the store's lock when
no daemon runs. Each is an `operator` event naming who asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import pytest
from test_faults_master import _OPENER, wait_for
from test_reconcile_slapproxy import CDNREQ, cdnreq

from devtools.devdns import DevDns
from devtools.devmaster import CdnSite, write_config
from cdnreq.store.postgres import PgStore
from cdnreq.store.url import parse_store_url
from cdnreq.model import HostClaim, InstanceGuid, Phase, Record
from cdnreq.decide import operator as decide
from cdnreq.decide.guards import HeldRemovals, HeldUpdates
from cdnreq.decide.operator import OperatorAction, Refusal
from cdnreq.decide.titles import technical_title
from cdnreq.store import Store
from cdnreq.store.lock import DatabaseLock
from tests.storeread import events_since
from tests.test_domains_slapproxy import LABEL, make_config, token_of  # noqa: F401 (make_config is a fixture)

pytestmark = pytest.mark.slapproxy

TOKEN = "operator-token-" + "x" * 20
SHOP = "shop.example.com"


# -- helpers -------------------------------------------------------------------


def request(method: str, url: str, token: str | None = None) -> tuple[int, dict] | None:
    assert url.startswith("http://127.0.0.1:"), url
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with _OPENER.open(urllib.request.Request(url, method=method, headers=headers), timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def token_file(tmp_path: Path, name: str = "token", value: str = TOKEN) -> Path:
    path = tmp_path / name
    path.write_text(value)
    path.chmod(0o600)
    return path


@dataclass
class Running:
    process: subprocess.Popen
    stderr: Path
    endpoint: str

    def wait(self, predicate, what: str):
        return wait_for(predicate, what, self.process, self.stderr)

    def last_tick(self, token: str | None = TOKEN) -> int:
        answer = request("GET", self.endpoint + "/status", token)
        last = (answer[1].get("progress") or {}).get("last") if answer and answer[0] == 200 else None
        return int(last["tick"]) if last else 0


@contextlib.contextmanager
def daemon(config: Path, tmp_path: Path) -> Iterator[Running]:
    endpoint = "http://127.0.0.1:" + tomllib.loads(config.read_text())["daemon"]["listen"].rpartition(":")[2]
    stderr = tmp_path / f"{config.stem}.stderr"
    with open(stderr, "wb") as err:
        process = subprocess.Popen([CDNREQ, "run", "--config", str(config)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    running = Running(process, stderr, endpoint)
    try:
        running.wait(lambda: (r := request("GET", endpoint + "/healthz")) and r[0] == 200, "the daemon's endpoint")
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


def stored(database: Path):
    """(records, events, hosts) as stored."""

    async def go():
        if isinstance(database, str):  # a PostgreSQL store's URL (make_config's other engine)
            store = await PgStore.open(parse_store_url(database), holder="test-reader")
        else:
            store = await Store.open(database, lock=False)
        try:
            events = [e for _, e in await events_since(store, 0, 100000)]
            return await store.load(), events, await store.load_hosts()
        finally:
            await store.close()

    return asyncio.run(go())


def operator_events(database: Path, guid: str) -> list[str]:
    return [f"{e.outcome}: {e.detail}" for e in stored(database)[1] if e.action == "operator" and e.instance_guid == guid]


def act(*args: str, config: Path) -> subprocess.CompletedProcess:
    return cdnreq(*args, "--config", str(config))


def once(config: Path) -> subprocess.CompletedProcess:
    result = act("once", config=config)
    assert result.returncode == 0, result.stderr
    return result


def me() -> str:
    import getpass

    return f"by {getpass.getuser()} (uid {os.getuid()}"


def live_fleet(site: CdnSite, config: Path, count: int) -> dict[str, str]:
    """`count` live customers: name -> guid."""
    guids = {f"c{i}": site.add_customer(f"c{i}", {"url": f"https://c{i}.example"}) for i in range(count)}
    once(config)
    for entry in site.technical_entries():
        site.publish_as_cdn(entry["instance_guid"], {"domain": f"{entry['title']}.cdn.example"})
    once(config)
    return guids


def entry_of(site: CdnSite, guid: str) -> dict:
    """The customer's technical entry; slapproxy lists a destroyed one no more."""
    found = [e for e in site.technical_entries() if e["title"] == technical_title("cdnreq-", guid)]
    assert len(found) <= 1, found
    return found[0] if found else {"state": "destroyed"}


# -- pure decisions ----------------------------------------------------------------


NOW = 1_000_000.0


def record(guid: str, **changes) -> Record:
    base = Record(InstanceGuid(guid), f"cdnreq-{guid}", Phase.LIVE, NOW - 100, NOW - 100, tech_guid=f"T-{guid}")  # type: ignore[arg-type]
    return replace(base, **changes)


def test_action_arguments_are_checked_and_named() -> None:
    with pytest.raises(ValueError, match="unknown operator action 'drop'"):
        decide.action_of("drop", {}, "by x")
    with pytest.raises(ValueError, match="retry: `guid` is required"):
        decide.action_of("retry", {}, "by x")
    with pytest.raises(ValueError, match="release: unexpected argument"):
        decide.action_of("release", {"host": "a.example", "guid": "G"}, "by x")
    action = decide.action_of("approve", {"fingerprint": ["f1", "f2"]}, "by x")
    assert action.fingerprints == ("f1", "f2") and action.query() == [("fingerprint", "f1"), ("fingerprint", "f2")]


def test_pure_refusals_name_the_instance_or_the_host() -> None:
    retry = OperatorAction("retry", guid="G")
    assert decide.retry(retry, None, NOW) == Refusal("no instance 'G' is known")
    assert "G is not backing off" in decide.retry(retry, record("G"), NOW).reason  # type: ignore[union-attr]
    due = decide.retry(retry, record("G", failures=2, retry_at=NOW + 600), NOW)
    assert not isinstance(due, Refusal) and due.upserts[0].retry_at == NOW and due.upserts[0].failures == 2

    claims = {SHOP: HostClaim(SHOP, InstanceGuid("A"), "example.com", NOW, NOW)}
    records = {InstanceGuid("A"): record("A"), InstanceGuid("R"): record("R", phase=Phase.RETAINED)}
    release = OperatorAction("release", host="Shop.Example.com.", to="R")
    assert decide.release(replace(release, to=None, host="x.example"), claims, records, NOW).reason == (  # type: ignore[union-attr]
        "host x.example is not claimed by any instance: nothing to release"
    )
    refused = decide.release(release, claims, records, NOW)
    assert isinstance(refused, Refusal) and "R is gone from the master" in refused.reason and SHOP in refused.reason
    freed = decide.release(replace(release, to=None), claims, records, NOW)  # the host is normalised
    assert not isinstance(freed, Refusal) and freed.host_deletes == (SHOP,)

    forget = OperatorAction("forget", guid="A")
    assert "A is still listed by the master" in decide.forget_check(forget, record("A")).reason  # type: ignore[union-attr]
    gone = record("A", phase=Phase.REMOVING)
    assert decide.forget_check(forget, gone) == "T-A"
    live = decide.forget(forget, gone, (False, "state started"), NOW)
    assert isinstance(live, Refusal) and "T-A is still on the master (state started)" in live.reason


def test_approve_names_the_held_sets() -> None:
    updates = HeldUpdates({"A": ("h:started", 1)}, "fu", "why", (("A", "why"),))
    removals = HeldRemovals.of(["B", "C"], "3 of 4 gone")
    action = OperatorAction("approve")
    assert decide.approve(action, HeldUpdates(), HeldRemovals(), NOW, "approval").reason == (  # type: ignore[union-attr]
        "nothing is held: no update nor removal to approve"
    )
    both = decide.approve(action, updates, removals, NOW, "approval")
    assert not isinstance(both, Refusal)
    assert both.guards == {"approval": {"fingerprint": "fu", "removals": removals.fingerprint}}
    assert sorted(e.instance_guid for e in both.events) == ["A", "B", "C"]
    one = decide.approve(replace(action, fingerprints=(removals.fingerprint,)), updates, removals, NOW, "approval")
    assert one.guards == {"approval": {"removals": removals.fingerprint}}  # type: ignore[union-attr]
    stale = decide.approve(replace(action, fingerprints=("old",)), updates, removals, NOW, "approval")
    assert isinstance(stale, Refusal) and "--fingerprint old is not a held set" in stale.reason


# -- with a daemon, over HTTP ----------------------------------------------------------


def test_approve_held_removals_over_http_with_the_token(cdn_site: CdnSite, tmp_path: Path) -> None:
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(
        tmp_path / "cdnreq.toml", cdn_site, database=database, domain={"retention_s": 0},
        daemon={"tick_interval_s": 0.3, "token_file": str(token_file(tmp_path))},
    )  # fmt: skip
    guids = live_fleet(cdn_site, config, 4)
    for name in ("c1", "c2", "c3"):  # 3 of 4 gone: held by [daemon].max_destroy_fraction
        cdn_site.remove_customer(name)
    wrong = write_config(tmp_path / "wrong.toml", cdn_site, database=database,
                         daemon={"listen": tomllib.loads(config.read_text())["daemon"]["listen"],
                                 "token_file": str(token_file(tmp_path, "wrong", "not-the-token-" + "y" * 20))})  # fmt: skip
    with daemon(config, tmp_path) as running:
        status = running.wait(
            lambda: (r := request("GET", running.endpoint + "/status", TOKEN)) and (r[1].get("held_removals") or {}).get("fingerprint") and r[1],
            "/status showing the held removals")  # fmt: skip
        held = status["held_removals"]
        assert held["count"] == 3 and "max_destroy_fraction" in held["reason"]

        assert request("POST", running.endpoint + "/actions/approve")[0] == 401  # type: ignore[index]
        bad = act("approve", config=wrong)
        assert bad.returncode == 2 and "401" in bad.stderr, bad.stderr
        live = act("forget", guids["c1"], config=config)
        assert live.returncode == 1 and f"{guids['c1']}: its technical entry" in live.stderr, live.stderr
        assert "still on the master (state started)" in live.stderr
        not_backing = act("retry", guids["c0"], config=config)
        assert not_backing.returncode == 1 and f"{guids['c0']} is not backing off" in not_backing.stderr
        stale = act("approve", "--fingerprint", "0123456789abcdef", config=config)
        assert stale.returncode == 1 and "is not a held set" in stale.stderr
        assert all(entry_of(cdn_site, guids[n])["state"] != "destroyed" for n in ("c1", "c2", "c3"))

        approved = act("approve", "--fingerprint", held["fingerprint"], config=config)
        assert approved.returncode == 0, approved.stderr
        assert "approved 3 removal(s)" in approved.stdout and guids["c2"] in approved.stdout
        running.wait(lambda: all(entry_of(cdn_site, guids[n])["state"] == "destroyed" for n in ("c1", "c2", "c3")),
                     "the approved removals carried out")  # fmt: skip
        assert entry_of(cdn_site, guids["c0"])["state"] == "started"
    for name in ("c1", "c2", "c3"):
        (event,) = operator_events(database, guids[name])
        assert event.startswith(f"approve: held removals {held['fingerprint']} approved; {me()}, as the client claims, via HTTP from 127.0.0.1)"), event


def test_retry_skips_the_backoff_over_http(cdn_site: CdnSite, tmp_path: Path) -> None:
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(
        tmp_path / "cdnreq.toml", cdn_site, database=database,
        daemon={"tick_interval_s": 0.3, "token_file": str(token_file(tmp_path))},
    )  # fmt: skip
    guids = live_fleet(cdn_site, config, 2)
    c0 = guids["c0"]
    cdn_site.add_customer("c0", {"url": "https://moved.example"})

    async def back_off() -> None:  # as after a failed call: tried again in an hour
        async with await Store.open(database) as store:
            rec = await store.get(c0)
            assert rec is not None
            await store.commit(upserts=[replace(rec, failures=3, retry_at=time.time() + 3600, last_error="refused")])

    asyncio.run(back_off())
    with daemon(config, tmp_path) as running:
        running.wait(lambda: running.last_tick() >= 3, "three ticks")
        assert entry_of(cdn_site, c0)["parameters"] == {"url": "https://c0.example"}  # backing off

        retried = act("retry", c0, config=config)
        assert retried.returncode == 0, retried.stderr
        assert f"{c0}: retried at the next tick" in retried.stdout
        running.wait(lambda: entry_of(cdn_site, c0)["parameters"] == {"url": "https://moved.example"},
                     "the update carried out at the next tick")  # fmt: skip
        explained = act("explain", c0, config=config)
        assert explained.returncode == 0 and "operator: retry (backoff skipped" in explained.stdout, explained.stdout
        assert f"{me()}, as the client claims, via HTTP from 127.0.0.1)" in explained.stdout


def test_release_and_hand_over_a_proven_host(cdn_site: CdnSite, devdns: DevDns, make_config, tmp_path: Path) -> None:
    config = make_config(daemon={"tick_interval_s": 0.3, "token_file": str(token_file(tmp_path))})
    database = make_config.database
    a = cdn_site.add_customer("a", {"url": "https://a.example", "custom_domain": SHOP})
    once(config)
    devdns.set_txt(f"{LABEL}.{SHOP}", token_of(cdn_site, a))
    once(config)
    b = cdn_site.add_customer("b", {"url": "https://b.example", "custom_domain": SHOP})
    once(config)
    assert stored(database)[2][SHOP].guid == a

    with daemon(config, tmp_path) as running:
        unknown = act("release", "nowhere.example", config=config)
        assert unknown.returncode == 1 and "host nowhere.example is not claimed" in unknown.stderr
        nobody = act("release", SHOP, "--to", "SOFTINST-none", config=config)
        assert nobody.returncode == 1 and "no instance 'SOFTINST-none' is known" in nobody.stderr
        handed = act("release", SHOP, "--to", b, config=config)
        assert handed.returncode == 0, handed.stderr
        assert f"host {SHOP} released from {a} and handed to {b}" in handed.stdout
        assert stored(database)[2][SHOP].guid == b
        tick = running.last_tick()
        running.wait(lambda: running.last_tick() >= tick + 2, "two more ticks")
        assert stored(database)[2][SHOP].guid == b  # the daemon read the store again: b keeps it
    assert operator_events(database, a)[0].startswith(f"release: host {SHOP} released and handed to {b}; {me()}")
    explained = act("explain", b, config=config)
    assert f"operator: release (host {SHOP} handed over from {a}; {me()}" in explained.stdout, explained.stdout

    freed = act("release", SHOP, config=config)  # no daemon: under the store's lock
    assert freed.returncode == 0, freed.stderr
    assert SHOP not in stored(database)[2]
    assert operator_events(database, b)[-1] == f"release: host {SHOP} released; {me()})"


def test_a_daemon_without_a_token_refuses_every_action(cdn_site: CdnSite, tmp_path: Path) -> None:
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, daemon={"tick_interval_s": 0.3})
    guids = live_fleet(cdn_site, config, 1)
    with daemon(config, tmp_path) as running:
        code, body = request("POST", running.endpoint + f"/actions/retry?guid={guids['c0']}")  # type: ignore[misc]
        assert code == 403 and "token_file" in body["error"]
        assert request("GET", running.endpoint + "/status")[0] == 200  # type: ignore[index]  # loopback: reads stay open
        for args in (("approve",), ("retry", guids["c0"]), ("release", SHOP), ("forget", guids["c0"])):
            refused = act(*args, config=config)
            assert refused.returncode == 2 and "403" in refused.stderr, (args, refused.stderr)
    assert not [e for e in stored(database)[1] if e.action == "operator"]


# -- without a daemon, under the store's lock -----------------------------------------


def test_held_removals_approved_then_forgotten_without_a_daemon(cdn_site: CdnSite, tmp_path: Path) -> None:
    database = tmp_path / "state" / "cdnreq.db"
    config = write_config(tmp_path / "cdnreq.toml", cdn_site, database=database, domain={"retention_s": 0})
    guids = live_fleet(cdn_site, config, 4)
    for name in ("c1", "c2", "c3"):
        cdn_site.remove_customer(name)
    held = once(config)
    assert "removals held" in held.stderr
    status = act("status", config=config)
    assert "REMOVALS HELD: 3" in status.stdout and "cdnreq approve --fingerprint" in status.stdout, status.stdout

    listed = act("forget", guids["c0"], config=config)
    assert listed.returncode == 1 and f"{guids['c0']} is still listed by the master" in listed.stderr
    live = act("forget", guids["c1"], config=config)
    assert live.returncode == 1 and "still on the master (state started)" in live.stderr, live.stderr
    lock = DatabaseLock.acquire(database)  # as a `cdnreq once` running meanwhile
    try:
        locked = act("approve", config=config)
        assert locked.returncode == 3 and "another cdnreq is using" in locked.stderr, locked.stderr
    finally:
        lock.release()

    approved = act("approve", config=config)
    assert approved.returncode == 0 and "approved 3 removal(s)" in approved.stdout, approved.stderr
    once(config)  # the destroys are sent; the records wait for their read-back
    records = stored(database)[0]
    assert all(entry_of(cdn_site, guids[n])["state"] == "destroyed" for n in ("c1", "c2", "c3"))
    assert guids["c1"] in records and records[InstanceGuid(guids["c1"])].phase is Phase.REMOVING

    forgotten = act("forget", guids["c1"], config=config)
    assert forgotten.returncode == 0, forgotten.stderr
    assert f"{guids['c1']} forgotten (technical entry" in forgotten.stdout
    assert guids["c1"] not in stored(database)[0]
    (event,) = [e for e in operator_events(database, guids["c1"]) if e.startswith("forget")]
    assert event.endswith(f"; {me()})") and "read back" in event
    explained = act("explain", guids["c1"], config=config)
    assert explained.returncode == 0 and f"{guids['c1']}: forgotten" in explained.stdout, explained.stderr
    assert "operator: forget (forgotten, technical entry" in explained.stdout
    again = once(config)  # the approval was for one tick: nothing more is removed
    assert "removals held" not in again.stderr
    assert entry_of(cdn_site, guids["c0"])["state"] == "started"


def test_who_asked_is_one_printable_line() -> None:
    assert decide.who("alice", 1000) == "by alice (uid 1000)"
    claimed = decide.who("eve\nforged line" + "x" * 100, "0\x1b[2J", "HTTP from 127.0.0.1")
    assert "\n" not in claimed and "\x1b" not in claimed and claimed.endswith("as the client claims, via HTTP from 127.0.0.1)")
