"""What follows each outcome of a call, decided without a master (cdnreq/decide/steps.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cdnreq.decide.gate import Gate, Status
from cdnreq.decide.steps import Next, after_destroy_read_back, after_read_back, after_read_back_error, once_gone
from cdnreq.decide.transitions import publication
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
