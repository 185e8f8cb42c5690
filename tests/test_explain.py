"""`explain` (the endpoint's /instances/GUID and `cdnreq explain`) on a real store."""

from __future__ import annotations

import pytest

from cdnreq.explain import explain
from cdnreq.model import Challenge, Event, InstanceGuid
from cdnreq.store import Store
from tests.test_tick_stages import opened  # noqa: F401


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "cdnreq.db")
    yield s
    await s.close()


async def test_a_new_instance_waiting_for_dns_is_waiting_not_forgotten(store: Store) -> None:
    """The domain step commits the challenge and its event before the
    instance's first record: read in between (the daemon's endpoint during a
    tick), the customer's instance was shown as 'forgotten' without its TXT."""
    guid = InstanceGuid("shop")
    await store.commit(
        challenge_upserts=[Challenge(guid, "shop.example.com", "salt", "token-1", 10.0)],
        events=[Event(guid, "challenge", "issued", 10.0, "for shop.example.com", 1)],
    )
    answer = await explain(store, guid, label="_cdnreq", retention_s=60, now=20.0)
    assert answer is not None
    assert answer["state"] == "waiting" and "shop.example.com" in answer["why"]
    assert answer["challenge"] == {
        "domain": "shop.example.com",
        "txt_record": "_cdnreq.shop.example.com",
        "txt_value": "token-1",
        "issued_at": "1970-01-01T00:00:10+00:00",
    }
    assert [e["action"] for e in answer["events"]] == ["challenge"]


async def test_events_without_record_or_challenge_are_a_forgotten_instance(store: Store) -> None:
    guid = InstanceGuid("gone")
    await store.commit(events=[Event(guid, "operator", "forget", 10.0, "forgotten, never requested")])
    answer = await explain(store, guid, label="_cdnreq", retention_s=60, now=20.0)
    assert answer is not None and answer["state"] == "forgotten"
    assert await explain(store, InstanceGuid("never"), label="_cdnreq", retention_s=60, now=20.0) is None


async def test_a_newcomer_waiting_to_be_taken_on_says_so_and_its_place(store: Store) -> None:
    from cdnreq.decide.admission import Queue, place

    queue = Queue({"A": 10.0, "B": 5.0, "C": 10.0, "D": 1.0}, {}, ("B", "A", "C"))  # in order; D was taken
    assert place(queue, "D") is None and place(queue, "X") is None
    assert place(queue, "C") == (10.0, 2)  # B (listed earlier) and A (same time, smaller guid) first
    data = await explain(store, "C", label="_slapos-challenge", retention_s=0, now=20.0, admission=place(queue, "C"))
    assert data is not None and data["state"] == "waiting"
    assert "waiting to be taken on" in data["why"] and "2 new instances listed before it" in data["why"]
    assert await explain(store, "X", label="_slapos-challenge", retention_s=0, now=20.0, admission=None) is None


async def test_an_instance_whose_removal_is_held_says_so_and_how_to_approve(tmp_path, opened) -> None:
    """An empty listing holds every removal; `explain` of a sleeper it does
    not name said "live" and nothing of the hold (only /status counted it)."""
    from tests.test_attack_master_lies import PLAIN, fleet, ok_tick

    r, master, clock = await fleet(tmp_path, opened)
    master.entries = []
    await ok_tick(r, clock)
    fingerprint = (await r.store.load_guards())["held_removals"]["fingerprint"]
    data = await explain(r.store, PLAIN[0], label="_cdnreq", retention_s=60, now=clock.now)
    assert data is not None and data["state"] == "live"
    assert data["held"] == {"kind": "removal", "reason": data["held"]["reason"], "fingerprint": fingerprint}
    assert "listed no instance" in data["held"]["reason"]
    assert "removal is held by a guard" in data["why"] and f"--fingerprint {fingerprint}" in data["why"]


async def test_an_instance_whose_update_is_held_says_so(store: Store) -> None:
    from cdnreq.decide.guards import HeldUpdates
    from cdnreq.model import Phase, Record

    await store.commit(upserts=[Record(InstanceGuid("shop"), "Shop", Phase.LIVE, 1.0, 1.0)])
    held = HeldUpdates({"shop": ("target", 2)}, "f" * 16, "a mass change: 5 of 10 live entries")
    await store.save_guards({"updates": held.to_json()}, 5.0)
    data = await explain(store, "shop", label="_cdnreq", retention_s=60, now=20.0)
    assert data is not None and data["held"]["kind"] == "update" and data["held"]["seen_ticks"] == 2
    assert "update is held by a guard (a mass change: 5 of 10 live entries)" in data["why"]
    assert (await explain(store, "other", label="_cdnreq", retention_s=60, now=20.0)) is None


def test_a_live_instance_whose_entry_was_destroyed_is_not_explained_as_live() -> None:
    """Still listed, its entry destroyed for a host it lost (re-checks failed
    past the grace period, or `release --to` another): the record keeps its
    phase until the read-back, and was explained as "live: the technical
    CDN's answer was relayed" while its entry was gone."""
    from cdnreq.explain import why
    from cdnreq.model import Phase, Record

    record = Record(InstanceGuid("shop"), "cdnreq-shop", Phase.LIVE, 1.0, 2.0, param_hash="h", tech_guid="tech-shop",
                    last_action="destroy")
    text = why(record, retention_s=60, now=3.0)
    assert "destroyed" in text and not text.startswith("live"), text
    assert why(replace_action(record, "poll"), retention_s=60, now=3.0).startswith("live")


def replace_action(record, action: str):
    from dataclasses import replace

    return replace(record, last_action=action)
