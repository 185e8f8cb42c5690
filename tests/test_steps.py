"""What follows each outcome of a call, decided without a master (cdnreq/decide/steps.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cdnreq.decide.gate import Gate, Status
from cdnreq.decide.steps import (
    Next,
    after_destroy,
    after_destroy_error,
    after_destroy_read_back,
    after_read_back,
    after_read_back_error,
    once_gone,
)
from cdnreq.decide.transitions import destroy_failing, needs_publish, publication
from cdnreq.model import Phase, Record, shown_digest


@pytest.mark.parametrize(("not_found", "listed", "step"), [
    (True, True, Next.REQUEST),  # lost: requested again under its title
    (True, False, Next.FAIL),
    (False, True, Next.FAIL),  # any other refusal proves nothing
    (False, False, Next.FAIL),
])
def test_a_read_back_that_fails(not_found: bool, listed: bool, step: Next) -> None:
    assert after_read_back_error(not_found=not_found, listed=listed) is step


def test_a_read_back_that_answers() -> None:
    assert after_read_back(listed=True, kept=False) is Next.REQUEST  # the master dropped the request
    assert after_read_back(listed=True, kept=True) is Next.PUBLISH
    assert after_read_back(listed=False, kept=False) is Next.PUBLISH


@pytest.mark.parametrize(("by_title", "absent", "step"), [
    (True, True, Next.CONFIRMED),  # no entry known and the master knows no such title: nothing to destroy
    (True, False, Next.FAIL),
    (False, True, Next.FAIL),  # an entry known by guid is read back, never assumed gone
    (False, False, Next.FAIL),
])
def test_a_destroy_that_fails(by_title: bool, absent: bool, step: Next) -> None:
    assert after_destroy_error(by_title=by_title, absent=absent) is step


def test_a_destroy_sent() -> None:
    assert after_destroy(by_title=True, answered_guid=None) is Next.CONFIRMED  # nothing to read back by
    assert after_destroy(by_title=True, answered_guid="SOFTINST-9") is Next.READ_BACK
    assert after_destroy(by_title=False, answered_guid=None) is Next.READ_BACK  # by the stored guid


@pytest.mark.parametrize(("phase", "leaving", "after"), [
    (Phase.LIVE, True, Phase.REMOVING),  # retried as a removal
    (Phase.RETAINED, True, Phase.RETAINED),  # kept until its retention ends
    (Phase.LIVE, False, Phase.LIVE),  # a customer's destroy of a listed instance
])
def test_a_failed_destroy_of_a_leaving_instance_is_retried_as_a_removal(phase: Phase, leaving: bool, after: Phase) -> None:
    record = Record(guid="A", title="cdnreq-A", phase=phase, created_at=0.0, updated_at=0.0)
    assert destroy_failing(record, leaving=leaving).phase is after


def test_a_destroy_read_back() -> None:
    assert after_destroy_read_back(destroyed=False) is Next.DESTROY
    assert after_destroy_read_back(destroyed=True) is Next.CONFIRMED


def test_once_gone() -> None:
    gate = Gate(Status.OK)
    assert once_gone(forget=True, gate=gate) is Next.FORGET
    assert once_gone(forget=False, gate=None) is Next.KEEP
    assert once_gone(forget=False, gate=gate) is Next.PUBLISH


def test_the_one_publish_rule() -> None:
    record = Record(guid="S-1", title="t", phase=Phase.LIVE, created_at=0.0, updated_at=0.0,
                    tech_guid="T-1", connection={"url": "https://cdn"})
    due = publication(record, None)
    assert due.due and due.send_connection and not due.send_error and due.shown == {"url": "https://cdn"}
    assert not publication(replace(record, published=shown_digest(due.shown)), None).due
    refused = Gate(Status.INVALID, error="custom_domain: refused", extras={"message": "refused"})
    due = publication(record, refused)
    assert due.send_error and due.error == "custom_domain: refused"


def test_the_planner_asks_the_same_publish_rule() -> None:
    """needs_publish is publication().due without building the answer (the
    planner asks it of every instance the idle cache does not skip)."""
    base = Record(guid="S-1", title="t", phase=Phase.LIVE, created_at=0.0, updated_at=0.0,
                  tech_guid="T-1", connection={"url": "https://cdn"})
    shown = shown_digest({"url": "https://cdn"})
    refused = Gate(Status.INVALID, error="custom_domain: refused", extras={"message": "refused"})
    pending = Gate(Status.PENDING, extras={"challenge": "x"}, pending=("www.a.example",))
    records = [
        base,
        replace(base, published=shown),
        replace(base, published=shown, published_error="custom_domain: refused"),
        replace(base, tech_guid=None, connection=None),
        replace(base, tech_guid=None, connection=None, param_hash="h"),
    ]
    for record in records:
        for gate in (Gate(Status.OK), refused, pending):
            assert needs_publish(record, gate) is publication(record, gate).due, (record, gate)
    told = replace(base, published=shown_digest(publication(base, refused).shown), published_error=refused.error)
    assert not needs_publish(told, refused) and needs_publish(records[1], refused)
