"""Admission: at most [daemon].admit_per_tick never-seen instances a tick,
first seen first; known instances never wait (cdnreq/decide/admission.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from cdnreq.config import Config
from cdnreq.decide.admission import admit
from cdnreq.model import Listing, Lookup, SharedInstance
from cdnreq.reconcile.report import TickReport
from cdnreq.render import summary
from cdnreq.service.status import status_line
from cdnreq.store import Store

from test_tick_stages import L, Dns, customer, live, opened, reconciler, title  # noqa: F401  (the harness and its fixture)


def listing(*guids: str, destroyed: Iterable[str] = ()) -> Listing:
    gone = set(destroyed)
    return Listing(tuple(SharedInstance.of(g, {}, state="destroyed" if g in gone else "started") for g in guids))


def guids(found: Listing) -> list[str]:
    return [i.guid for i in found.instances]


def test_under_the_limit_the_listing_is_planned_whole() -> None:
    seen = listing("C", "A", "B")
    admitted = admit(seen, known=set(), asleep=set(), waiting={}, tick=1, limit=3)
    assert admitted.listing is seen and admitted.waiting == {} and admitted.taken == 3 and not admitted.again


def test_over_the_limit_the_first_by_guid_are_taken_and_the_rest_wait_in_listing_order() -> None:
    admitted = admit(listing("E", "B", "D", "A", "C"), known=set(), asleep=set(), waiting={}, tick=7, limit=2)
    assert guids(admitted.listing) == ["B", "A"]  # the listing's order kept
    assert admitted.waiting == {"C": 7, "D": 7, "E": 7}
    assert admitted.taken == 2 and admitted.again


def test_known_and_sleeping_instances_never_wait_nor_take_a_slot() -> None:
    admitted = admit(listing("K1", "N1", "S1", "N2", "K2", "N3"), known={"K1", "K2"}, asleep={"S1"},
                     waiting={}, tick=1, limit=1)
    assert guids(admitted.listing) == ["K1", "N1", "S1", "K2"]
    assert set(admitted.waiting) == {"N2", "N3"}


def test_never_seen_destroyed_instances_never_wait_nor_take_a_slot() -> None:
    # nothing is stored for them: counted, they would hold the first slots at every tick
    admitted = admit(listing("A", "B", "C", "D", destroyed=("A", "B")), known=set(), asleep=set(),
                     waiting={}, tick=1, limit=1)
    assert guids(admitted.listing) == ["A", "B", "C"]
    assert admitted.waiting == {"D": 1}


def test_first_seen_is_first_taken_whatever_the_guid() -> None:
    # "Z" waited since tick 3: a newcomer "A" of tick 4 does not pass it
    admitted = admit(listing("A", "Z"), known=set(), asleep=set(), waiting={"Z": 3}, tick=4, limit=1)
    assert guids(admitted.listing) == ["Z"]
    assert admitted.waiting == {"A": 4}


def test_a_waiting_instance_no_longer_listed_is_forgotten() -> None:
    admitted = admit(listing("C", "D"), known=set(), asleep=set(), waiting={"B": 1, "C": 1, "D": 1}, tick=2, limit=1)
    assert admitted.waiting == {"D": 1}


def test_the_next_tick_starts_at_once_only_while_the_queue_shrinks() -> None:
    waiting = {"B": 1, "C": 1}
    shrinking = admit(listing("B", "C"), known=set(), asleep=set(), waiting=waiting, tick=2, limit=1)
    assert shrinking.again
    # as many new as taken (or the taken never became known): no spinning
    stuck = admit(listing("A", "B", "C"), known=set(), asleep=set(), waiting=waiting, tick=2, limit=1)
    assert stuck.waiting == {"C": 1, "A": 2} and not stuck.again


def limited(tmp_path: Path, limit: int) -> Config:
    return Config.model_validate({
        "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
        "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
        "daemon": {"database": str(tmp_path / "cdnreq.db"), "admit_per_tick": limit},
        "domain": {"secret_file": str(tmp_path / "domain-secret"), "retention_s": 0},
    })


class ManyTxt(Dns):
    """Dns whose TXT values may be several at one name (two customers proving one host)."""

    async def txt_many(self, names: Iterable[str]) -> dict[str, Lookup]:
        names = list(names)
        self.asked += names
        return {n: Lookup(n, "found", tuple(self.txt[n])) if n in self.txt else Lookup(n, "absent") for n in names}


async def test_a_burst_of_new_instances_is_taken_on_over_ticks_and_live_ones_never_wait(
    tmp_path: Path, opened: list[Store]
) -> None:
    burst = [customer(f"NEW{k}") for k in range(5)]
    old = customer("OLD")
    r, master = await reconciler(opened, limited(tmp_path, 2), [*burst, old], Dns({}), records=[live("OLD")])
    old_changed = SharedInstance.of("OLD", {"url": "https://changed.backend.example"})
    master.instances = (*burst, old_changed)
    first = await r.tick()
    assert first.ok, first.error
    assert first.waiting_admission == 3 and first.admit_again
    assert sorted(master.titles()) == [title("NEW0"), title("NEW1"), title("OLD")]  # the live one's change at once
    second = await r.tick()
    assert second.ok and second.waiting_admission == 1 and second.admit_again
    third = await r.tick()
    assert third.ok and third.waiting_admission == 0 and not third.admit_again
    assert sorted(master.titles()) == sorted([*(title(f"NEW{k}") for k in range(5)), title("OLD")])
    assert len(master.titles()) == 6  # none twice
    assert "waiting_admission" not in third.summary() and first.summary()["waiting_admission"] == 3


async def test_of_two_newcomers_naming_one_host_the_first_seen_gets_it(tmp_path: Path, opened: list[Store]) -> None:
    # "ZED" is listed first and waits behind "BUSY"; "ACE" (a smaller guid) comes
    # later naming ZED's host: ZED is taken on first and holds it
    dns = ManyTxt({})
    busy, zed, ace = customer("BUSY"), customer("ZED", "www.x.example"), customer("ACE", "www.x.example")
    r, master = await reconciler(opened, limited(tmp_path, 1), [busy, zed, ace], dns)
    tokens = [c.token for c in (await r.store.load_challenges()).values()]
    dns.txt[f"{L}.www.x.example"] = tokens  # both prove it
    master.instances = (busy, zed)
    assert (await r.tick()).waiting_admission == 1
    master.instances = (busy, zed, ace)
    report = await r.tick()
    assert report.ok and report.waiting_admission == 1  # ACE waits behind ZED
    assert (await r.tick()).ok
    assert master.titles() == [title("BUSY"), title("ZED")]
    assert r.domains is not None and r.domains.index.by_host["www.x.example"].guid == "ZED"
    record = r.known["ACE"] if r.known is not None and "ACE" in r.known else None
    assert record is not None and "www.x.example" in (record.last_error or "")


def unlimited_is_zero(tmp_path: Path) -> Any:
    return limited(tmp_path, 0).daemon.admit_per_tick


def test_zero_means_no_limit(tmp_path: Path) -> None:
    assert unlimited_is_zero(tmp_path) == 0
    admitted = admit(listing(*(f"N{k}" for k in range(50))), known=set(), asleep=set(), waiting={}, tick=1, limit=0)
    assert len(admitted.listing.instances) == 50 and not admitted.waiting


def test_status_and_systemd_say_how_many_wait() -> None:
    report = TickReport(id=4, started_at=0.0, ok=True, results={"request:ok": 2}, waiting_admission=3)
    assert status_line(report).endswith("; 3 new instances wait")
    last = {"tick": 4, "ok": True, "finished_at": "t", "duration_s": 1.0, "summary": report.summary()}
    text = summary({"version": "x", "pid": None, "progress": {"last": last}})
    assert "3 new instances wait for a later tick ([daemon].admit_per_tick)" in text
