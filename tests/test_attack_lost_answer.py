"""One 404 at the read-back of a live technical entry (the master lied, or
lost the entry) requests the entry again; the answer its customer was told
stays published until that request succeeds and the technical CDN answers
anew. A refused request adds its error beside the last answer (as for an
update refused while the old entry serves); a failed one is retried after
its backoff, the customer told nothing new.

Before, the record's answer was cleared on the 404: the customer was shown
the refusal alone, or "in progress" while the new request deployed, while
its entry may still have been serving. tests/stateful_world.py's master and
the real Reconciler and store; each tick is checked against what `cdnreq
plan` showed before it, what `/instances` shows (the store) and, across a
restart, against a daemon restarted on a copy of the store and the master.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdnreq.decide import transitions
from cdnreq.dns.resolver import Resolver
from cdnreq.model import Phase, SharedInstance, frozen_json
from tests.planharness import dry_plan
from tests.stateful_world import PREFIX, World, cdn_answer

A = SharedInstance.of("A", {"url": "https://one.backend.example"})
TITLE = PREFIX + "A"
NEW_ANSWER = cdn_answer(TITLE)  # what a new request of A's entry is answered
REFUSED = "The CDN could not accept this entry: no more entries"


@pytest.fixture
def world(tmp_path: Path) -> Any:
    w = World(tmp_path)
    yield w
    w.close()


def shown(w: World) -> dict[str, Any]:
    return w.master.published.get("A", {})


def planned_as_shown(w: World) -> dict[str, int]:
    """What `cdnreq plan` shows the next tick will do (run on a snapshot of the store)."""
    async def run() -> Any:
        resolver = Resolver(nameservers=[w.dns.address], timeout_s=0.2, tries=1)
        try:
            return await dry_plan(w.cfg, w.master, resolver, w.clock)  # type: ignore[arg-type]
        finally:
            await resolver.close()

    w.now += 60  # the tick's clock
    try:
        report = w.run(run())[2]
    finally:
        w.now -= 60
    return dict(report.planned)


def tick(w: World, *, restarted: bool = False) -> None:
    """One tick, as `cdnreq plan` showed it, leaving in the store
    (`/instances`) what the customer holds. `restarted`: a daemon started
    just before it on a copy of the store and of the master makes the same
    calls and publishes the same; the world goes on with a restarted one."""
    plan = planned_as_shown(w)
    cold = None
    if restarted:
        other = w.fork("cold")
        try:
            w.now += 60
            assert w.run(other.tick()).ok
            w.now -= 60
            cold = other.master
        finally:
            w.drop(other)
    report = w.tick()
    assert report.ok, report.error
    assert dict(report.planned) == plan
    assert w.run(w.r.store.published_of("A")) == shown(w)  # type: ignore[union-attr]
    assert not w.store_matches_memory(), w.store_matches_memory()
    if cold is not None:
        assert cold.writes == w.master.writes
        assert cold.calls == w.master.calls  # reads too
        assert cold.published == w.master.published and cold.errors == w.master.errors
        w.restart()


def live(w: World) -> dict[str, Any]:
    """A live, and shown an answer a new request would not be answered
    (its entry redeployed since it was requested)."""
    w.master.listed = [A]
    for _ in range(3):
        tick(w)
    w.master.entries[TITLE].connection["rev"] = "1"
    w.now += 2000  # the periodic read-back
    tick(w)
    told = {**NEW_ANSWER, "rev": "1"}
    assert shown(w) == told
    return told


def read_back_404(w: World) -> None:
    """The next periodic read-back of A's entry is answered 404."""
    w.master.read_back_fault = "lost"
    w.now += 2000


def backoff_over(w: World) -> None:
    w.now += 600  # [daemon].retry_max_s


@pytest.mark.parametrize("restarted", [False, True], ids=["warm", "restarted"])
def test_a_refused_re_request_adds_its_error_beside_the_last_answer(world: World, restarted: bool) -> None:
    w = world
    told = live(w)
    read_back_404(w)
    w.master.reject["request"] = 1
    tick(w)
    assert w.master.read_back_fault is None and w.master.calls["request"] >= 2  # lied to, asked again
    assert shown(w) == {**told, "request-error-list": json.dumps([REFUSED]), "message": REFUSED}
    assert w.master.errors["A"] == REFUSED
    backoff_over(w)
    w.master.deploying["request"] = 1  # accepted, answered before the CDN deployed it
    tick(w, restarted=restarted)
    assert shown(w) == told
    tick(w)  # read back: still deploying
    assert shown(w) == told
    tick(w)
    assert shown(w) == NEW_ANSWER


@pytest.mark.parametrize("restarted", [False, True], ids=["warm", "restarted"])
def test_a_failed_re_request_then_a_refused_one_keep_the_last_answer(world: World, restarted: bool) -> None:
    w = world
    told = live(w)
    read_back_404(w)
    w.master.fail["request"] = 1
    tick(w)
    assert w.master.read_back_fault is None and shown(w) == told
    backoff_over(w)
    w.master.reject["request"] = 1
    tick(w, restarted=restarted)
    assert shown(w) == {**told, "request-error-list": json.dumps([REFUSED]), "message": REFUSED}
    backoff_over(w)
    tick(w)
    assert shown(w) == NEW_ANSWER
    assert w.r.known["A"].phase is Phase.REQUESTED  # type: ignore[union-attr]  # live once read back
    tick(w)
    assert w.r.known["A"].phase is Phase.LIVE and shown(w) == NEW_ANSWER  # type: ignore[union-attr]


@pytest.mark.parametrize("restarted", [False, True], ids=["warm", "restarted"])
def test_a_re_request_answered_later_keeps_the_last_answer_until_the_new_one(world: World, restarted: bool) -> None:
    w = world
    told = live(w)
    read_back_404(w)
    w.master.deploying["request"] = 1
    tick(w)
    assert w.master.read_back_fault is None and shown(w) == told
    tick(w, restarted=restarted)  # read back: still deploying
    assert shown(w) == told
    tick(w)
    assert shown(w) == NEW_ANSWER and w.r.known["A"].phase is Phase.LIVE  # type: ignore[union-attr]


def test_a_re_request_answered_at_once_publishes_its_answer(world: World) -> None:
    w = world
    live(w)
    read_back_404(w)
    tick(w)
    assert w.master.read_back_fault is None and shown(w) == NEW_ANSWER
    assert [c for c, _, _ in w.master.writes] == ["request", "publish"]


def test_lost_keeps_the_answer_and_forgets_the_entry() -> None:
    """The one rule (decide/transitions.lost): no entry known, requested
    again, the answer kept for what the customer is shown meanwhile."""
    answer = frozen_json({"url": "https://a.cdn.example"})
    record = transitions.lost(
        transitions.Record(guid="A", title=TITLE, phase=Phase.LIVE, created_at=1.0, updated_at=1.0,  # type: ignore[arg-type]
                           param_hash="h", tech_guid="tech-A", connection=answer, served=("a.example",)),
        "HTTP 404: not found", 2.0,
    )
    assert record.phase is Phase.NEW and record.param_hash is None and record.tech_guid is None
    assert record.connection == answer and record.served == ("a.example",)
    assert transitions.publication(record, None).shown == dict(answer)
