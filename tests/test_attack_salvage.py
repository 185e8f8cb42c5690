"""Third attack round: the salvaged record row (f62340f) and the admission
place in explain (3841db7). Each failed on 3841db7.

A salvaged `served` column was read as NULL, which every reader takes as
"this entry serves nothing": the entry's hosts stopped counting while the
technical entry still served them. It is now read as every host the
instance claims."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from cdnreq.decide.admission import Queue, place
from cdnreq.decide.served import ServedHosts
from cdnreq.explain import explain
from cdnreq.model import HostClaim, InstanceGuid, Phase, RequestedState
from cdnreq.store import Store
from tests.test_domains import NOW, DAY, Recording, domains, dns, instance, record  # noqa: F401
from tests.test_attack_packed_restart import _stored_row

A = InstanceGuid("SOFTINST-A")
SERVED = ("a.example", "www.a.example", "api.a.example")


def live(guid: InstanceGuid, served: tuple[str, ...]):
    return replace(record(guid, served=served), param_hash="h" * 64, tech_guid="TECH-A",
                   requested_state=RequestedState.STARTED, last_action="request")


def claims() -> list[HostClaim]:
    return [HostClaim(h, A, "a.example", NOW - DAY, NOW - 60) for h in SERVED]


async def _stored_then_hand_edited(tmp_path: Path, served_text: str) -> Store:
    """A's live record and its claims, then its served column edited by hand."""
    store = await Store.open(tmp_path / "state" / "cdnreq.db")
    await store.commit(upserts=[live(A, SERVED)], host_upserts=claims())
    await store._conn.execute("UPDATE instances SET served = ? WHERE guid = ?", (served_text, A))  # type: ignore[attr-defined]
    await store._conn.commit()  # type: ignore[attr-defined]
    return store


# 1a: unreadable `served` -> the owner's still-served host is released
@pytest.mark.parametrize("served_text", ['["a.example", "www.a.example", "api.a.example"', '["a.example", 1]'],
                         ids=["truncated", "number"])
async def test_a_salvaged_served_column_does_not_release_a_host_the_live_entry_still_serves(
    tmp_path: Path, dns: Recording, served_text: str  # noqa: F811
) -> None:
    """The live entry was requested with api.a.example; the customer dropped
    it from its parameters and the new request is not out yet. Read back
    whole, `served` keeps the claim (test_domains.test_host_no_longer_named_is_released);
    salvaged to NULL, the claim is released after confirm_ticks ticks."""
    store = await _stored_then_hand_edited(tmp_path, served_text)
    try:
        known = await store.load()
    finally:
        await store.close()
    assert known[A].phase is Phase.LIVE and known[A].tech_guid == "TECH-A"
    hosts = [HostClaim(h, A, "a.example", NOW - DAY, NOW - 60) for h in SERVED]
    d = domains(dns, hosts=hosts)
    a = instance(A, "a.example", "www.a.example")
    released: set[str] = set()
    for tick in range(1, 6):
        out = await d.step([a], known, NOW + 60 * (tick - 1), tick=tick)
        released |= out.host_deletes
    assert "api.a.example" not in released, (
        f"served read as {known[A].served!r}: the claim on a host the live entry still serves was released")


# 1b: unreadable `served` -> a rival's request is not held back
async def test_a_salvaged_served_column_still_holds_a_rivals_request_back(tmp_path: Path) -> None:
    store = await _stored_then_hand_edited(tmp_path, "[1]")
    try:
        known = await store.load()
    finally:
        await store.close()
    assert ServedHosts(known).others(("api.a.example",), "SOFTINST-B") == ("api.a.example",), (
        f"served read as {known[A].served!r}: another instance may be requested for a host entry TECH-A serves")


# 1c: a blob in a JSON column is not caught by the salvage: the load fails
@pytest.mark.parametrize("column", ["connection", "published", "served"])
def test_a_blob_in_a_json_column_is_salvaged_not_an_uncaught_error(column: str) -> None:
    from cdnreq.store import StoreError
    from cdnreq.store.rows import to_records

    try:
        records = to_records([_stored_row(**{column: b"\xff{}"}), _stored_row(guid="OTHER")])
    except StoreError:
        return  # named: acceptable
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{column} as a blob: {type(exc).__name__}: {exc} (neither salvaged nor a StoreError)")
    assert "OTHER" in records


async def test_a_blob_connection_column_does_not_fail_the_restart(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state" / "cdnreq.db")
    try:
        await store.commit(upserts=[live(A, SERVED), live(InstanceGuid("B"), ("b.example",))])
        await store._conn.execute("UPDATE instances SET connection = X'7b7d' WHERE guid = ?", (A,))  # type: ignore[attr-defined]
        await store._conn.commit()  # type: ignore[attr-defined]
        try:
            await store.load()
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"the restart failed: {type(exc).__name__}: {exc}")
    finally:
        await store.close()


# 1d: the row the load salvages cannot be explained nor forgotten
async def test_an_instance_whose_row_was_salvaged_can_still_be_explained(tmp_path: Path) -> None:
    """store.get reads with to_record, not the salvage: GET /instances/GUID
    answers 500 and `cdnreq explain`, `retry`, `forget` fail for the one
    instance the operator needs to look at."""
    store = await _stored_then_hand_edited(tmp_path, "[1]")
    try:
        assert A in await store.load()  # the daemon goes on
        try:
            found = await explain(store, A, label="_x", retention_s=1.0, now=NOW)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"explain failed: {type(exc).__name__}: {exc}")
        assert found is not None and found["state"] == "live"
    finally:
        await store.close()


# 2: place() walks the whole queue in the event loop for each request
def test_place_of_one_waiting_newcomer_does_not_walk_the_whole_queue() -> None:
    n = 80_000
    guids = [f"{i:064x}" for i in range(n)]
    queue = Queue({g: 1.0 for g in guids}, {}, tuple(guids))
    started = time.perf_counter()
    for _ in range(10):
        place(queue, guids[-1])
    per_call = (time.perf_counter() - started) / 10
    assert per_call < 0.005, f"{per_call * 1000:.1f} ms of event loop per GET /instances/GUID"


async def test_control_a_readable_served_column_keeps_the_claim(tmp_path: Path, dns: Recording) -> None:  # noqa: F811
    store = await _stored_then_hand_edited(tmp_path, '["a.example", "www.a.example", "api.a.example"]')
    try:
        known = await store.load()
    finally:
        await store.close()
    d = domains(dns, hosts=[HostClaim(h, A, "a.example", NOW - DAY, NOW - 60) for h in SERVED])
    for tick in range(1, 6):
        out = await d.step([instance(A, "a.example", "www.a.example")], known, NOW + 60 * (tick - 1), tick=tick)
        assert out.host_deletes == set()
    assert ServedHosts(known).others(("api.a.example",), "SOFTINST-B") == ("api.a.example",)


# 3: a node that leads again kept the admission state of its earlier term
async def test_a_new_term_starts_with_a_new_admission_queue() -> None:
    """take_over (service/leader.py) read the store again but kept Admission:
    its `_left_ok` of an earlier term made a new burst wait a whole
    tick_interval_s, and its queue kept that term's first-listed times."""
    from types import SimpleNamespace

    from cdnreq.reconcile.admitting import Admission
    from cdnreq.service.leader import take_over

    class Lease:
        bound = 1

    class NewTerm:
        acting, seen = False, SimpleNamespace(epoch=2)

        def valid_term(self):
            return SimpleNamespace(epoch=2)

    class Prepared:
        lease = Lease()

        async def migrate(self): ...

        async def end_unfinished_ticks(self, now, why):
            return []

        async def copying(self):
            return None

    old = Admission()
    old._left_ok = ("OLD",)
    reconciler = SimpleNamespace(admission=old, reread=lambda: None)
    gauge = SimpleNamespace(set=lambda value: None)
    import cdnreq.service.leader as leader

    async def no_copy(store):
        return None

    saved, leader.refuse_unfinished_copy = leader.refuse_unfinished_copy, no_copy
    try:
        assert await take_over(NewTerm(), Prepared(), reconciler, SimpleNamespace(leader=gauge, lease_epoch=gauge))
    finally:
        leader.refuse_unfinished_copy = saved
    assert reconciler.admission is not old and reconciler.admission._left_ok == ()
