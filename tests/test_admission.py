"""Admission: at most [daemon].admit_per_tick never-seen instances a tick,
first seen first; known instances never wait (cdnreq/decide/admission.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from cdnreq.config import Config
from cdnreq.decide.admission import Queue, admit
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
    admitted = admit(seen, known=set(), asleep=set(), queue=Queue(), now=1.0, limit=3)
    assert admitted.listing is seen and admitted.waiting == 0 and admitted.taken == 3 and not admitted.again
    assert admitted.queue.listed_at == {"A": 1.0, "B": 1.0, "C": 1.0}  # kept until they are known


def test_over_the_limit_the_first_by_guid_are_taken_and_the_rest_wait_in_listing_order() -> None:
    admitted = admit(listing("E", "B", "D", "A", "C"), known=set(), asleep=set(), queue=Queue(), now=7.0, limit=2)
    assert guids(admitted.listing) == ["B", "A"]  # the listing's order kept
    assert admitted.queue.left == ("C", "D", "E")  # in the order they will be taken
    assert admitted.taken == 2 and admitted.again


def test_known_and_sleeping_instances_never_wait_nor_take_a_slot() -> None:
    admitted = admit(listing("K1", "N1", "S1", "N2", "K2", "N3"), known={"K1", "K2"}, asleep={"S1"},
                     queue=Queue(), now=1.0, limit=1)
    assert guids(admitted.listing) == ["K1", "N1", "S1", "K2"]
    assert admitted.queue.left == ("N2", "N3")
    assert set(admitted.queue.listed_at) == {"N1", "N2", "N3"}


def test_never_seen_destroyed_instances_never_wait_nor_take_a_slot() -> None:
    # nothing is stored for them: counted, they would hold the first slots at every tick
    admitted = admit(listing("A", "B", "C", "D", destroyed=("A", "B")), known=set(), asleep=set(),
                     queue=Queue(), now=1.0, limit=1)
    assert guids(admitted.listing) == ["A", "B", "C"]
    assert admitted.queue.left == ("D",)


def test_unusable_newcomers_wait_their_turn_too() -> None:
    # told why, an unusable entry gets a record: known, it would jump the queue when fixed
    seen = Listing(listing("A", "C").instances, unusable={"B": "parameters: not an object", "D": "state: missing"},
                   unusable_titles={"B": "b", "D": "d"})
    admitted = admit(seen, known=set(), asleep=set(), queue=Queue(), now=1.0, limit=2)
    assert guids(admitted.listing) == ["A"] and dict(admitted.listing.unusable) == {"B": "parameters: not an object"}
    assert dict(admitted.listing.unusable_titles) == {"B": "b"}
    assert admitted.queue.left == ("C", "D")


def test_first_listed_is_first_taken_whatever_the_guid() -> None:
    # "Z" waited since 3.0: a newcomer "A" of 4.0 does not pass it
    queue = Queue({"Z": 3.0}, {}, ("Z",))
    admitted = admit(listing("A", "Z"), known=set(), asleep=set(), queue=queue, now=4.0, limit=1)
    assert guids(admitted.listing) == ["Z"]
    assert admitted.queue.left == ("A",) and admitted.queue.listed_at == {"A": 4.0, "Z": 3.0}


def test_a_taken_instance_keeps_its_place_until_it_is_known() -> None:
    # taken at 2.0, its tick failed before its record was stored: still first
    queue = Queue({"Z": 1.0, "Y": 2.0}, {}, ("Y",))
    admitted = admit(listing("A", "Y", "Z"), known=set(), asleep=set(), queue=queue, now=3.0, limit=1)
    assert guids(admitted.listing) == ["Z"]
    known = admit(listing("A", "Y", "Z"), known={"Z"}, asleep=set(), queue=admitted.queue, now=4.0, limit=1)
    assert guids(known.listing) == ["Y", "Z"] and "Z" not in known.queue.listed_at


def test_a_newcomer_left_out_of_a_listing_keeps_its_place_for_a_while() -> None:
    queue = Queue({"Z": 1.0}, {}, ("Z",))
    out = admit(listing("B"), known=set(), asleep=set(), queue=queue, now=2.0, limit=1, keep_unlisted=3)
    assert out.queue.listed_at["Z"] == 1.0 and out.queue.missing == {"Z": 1}
    back = admit(listing("B", "A", "Z"), known={"B"}, asleep=set(), queue=out.queue, now=3.0, limit=1, keep_unlisted=3)
    assert guids(back.listing) == ["B", "Z"] and back.queue.missing == {}
    gone = out.queue
    for now in (3.0, 4.0):
        gone = admit(listing("B"), known=set(), asleep=set(), queue=gone, now=now, limit=1, keep_unlisted=3).queue
    assert "Z" not in gone.listed_at  # missing from 3 listings in a row: forgotten


def test_the_next_tick_starts_at_once_only_while_the_queue_shrinks() -> None:
    queue = Queue({"B": 1.0, "C": 1.0}, {}, ("B", "C"))
    shrinking = admit(listing("B", "C"), known=set(), asleep=set(), queue=queue, now=2.0, limit=1)
    assert shrinking.again
    # as many new as taken (or the taken never became known): no spinning
    stuck = admit(listing("A", "B", "C"), known=set(), asleep=set(), queue=queue, now=2.0, limit=1)
    assert stuck.queue.left == ("C", "A") and not stuck.again


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
    admitted = admit(listing(*(f"N{k}" for k in range(50))), known=set(), asleep=set(), queue=Queue(), now=1.0, limit=0)
    assert len(admitted.listing.instances) == 50 and not admitted.waiting


def test_status_and_systemd_say_how_many_wait() -> None:
    report = TickReport(id=4, started_at=0.0, ok=True, results={"request:ok": 2}, waiting_admission=3)
    assert status_line(report).endswith("; 3 new instances wait")
    last = {"tick": 4, "ok": True, "finished_at": "t", "duration_s": 1.0, "summary": report.summary()}
    text = summary({"version": "x", "pid": None, "progress": {"last": last}})
    assert "3 new instances wait for a later tick ([daemon].admit_per_tick)" in text


def test_a_catch_up_tick_starts_host_streaks_but_advances_none() -> None:
    from cdnreq.decide.domainstep import contested

    streaks, due = contested({"a.example": 2}, ["a.example", "b.example"], confirm_ticks=3, step=0)
    assert streaks == {"a.example": 2, "b.example": 1} and not due
    streaks, due = contested(streaks, ["a.example"], confirm_ticks=3)  # the next scheduled tick
    assert streaks == {"a.example": 3} and due == {"a.example"}


def test_a_catch_up_tick_does_not_advance_a_held_update() -> None:
    from cdnreq.decide.guards import Change, GuardPolicy, HeldUpdates, UpdateGuard

    held = HeldUpdates({"G": ("t1", 2)}, "fp", "mass change", ())
    policy = GuardPolicy(confirm_ticks=3)
    catch_up = UpdateGuard(held, None, live=10, policy=policy, step=0)
    assert catch_up.sift([Change("G", "t1", "parameters changed")]) == {"G"}
    assert catch_up.state().streaks["G"] == ("t1", 2)
    scheduled = UpdateGuard(held, None, live=10, policy=policy)
    assert scheduled.sift([Change("G", "t1", "parameters changed")]) == set()  # seen a third time: applied
