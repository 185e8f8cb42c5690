"""Attacks on what a restart keeps of the domain step (cdnreq/decide/kept.py):
scenarios where a restarted daemon would reuse a stored decision it should
not, or where stored decisions outlive what they are about."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from pathlib import Path

import pytest

from cdnreq.decide.gate import DomainPolicy
from cdnreq.reconcile.tick import Reconciler
from cdnreq.store import Store
from cdnreq.validate import version
from test_tick_stages import opened  # noqa: F401 -- the fixture

POLICY = DomainPolicy()


def _stamp_with(library: str, release: str) -> str:
    """The stamp a daemon started on another release of `library` computes."""
    real = importlib.metadata.version

    def installed(name: str) -> str:
        return release if name == library else real(name)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(importlib.metadata, "version", installed)
            return importlib.reload(version).stamp(POLICY)
    finally:
        importlib.reload(version)


@pytest.mark.parametrize("library", ["idna", "cryptography", "jsonschema"])
def test_an_upgrade_of_a_library_the_rules_run_on_decides_afresh(library: str) -> None:
    """A verdict is made by idna (host names, UTS 46), cryptography
    (certificates and keys) and jsonschema (the instance schema) as much as
    by cdnreq/validate/: after an upgrade of one of them (which needs a
    restart) the kept verdicts must not be trusted, as they are not after an
    upgrade of the public suffix list. Otherwise an instance the new rules
    refuse keeps being served on a verdict of the old ones."""
    assert _stamp_with("publicsuffixlist", "0.0.0-other") != version.stamp(POLICY)  # the one that is covered
    assert _stamp_with(library, "0.0.0-other") != version.stamp(POLICY)


def test_a_new_unicode_database_decides_afresh() -> None:
    """Host names are normalised with Python's own Unicode tables
    (unicodedata, stringprep): a Python upgrade may accept or refuse other
    names, like an upgrade of idna."""
    import unicodedata

    before = version.stamp(POLICY)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(unicodedata, "unidata_version", "0.0.0-other")
            after = importlib.reload(version).stamp(POLICY)
    finally:
        importlib.reload(version)
    assert after != before


# -- rows that outlive their instance ---------------------------------------------------


async def test_a_verdict_kept_for_an_instance_that_never_got_a_record_does_not_stay_forever(
    tmp_path: Path, opened: list[Store]
) -> None:
    """A new instance waiting for DNS: its verdict was committed with the
    first stage, its record only comes with its group's decision. The daemon
    stops during DNS (an upgrade); meanwhile the customer deleted the
    instance. Nothing ever forgets a guid without a record, so its decision
    row must not have been stored without one."""
    from test_tick_stages import L, Dns, Master, config, customer

    cfg = config(tmp_path)
    store = await Store.open(cfg.daemon.database)
    opened.append(store)
    dns = Dns({}, hold={f"{L}.www.x.example"})  # answered after the stop
    master = Master(store, [customer("PLAIN"), customer("X", "www.x.example")])
    r = Reconciler(config=cfg, store=store, master=master, resolver=dns)  # type: ignore[arg-type]
    stop = asyncio.Event()
    tick = asyncio.create_task(r.tick(stop))
    await asyncio.wait_for(master.requested.wait(), 10)  # PLAIN requested: X waits for DNS
    stop.set()
    assert (await asyncio.wait_for(tick, 5)).interrupted
    await store.close()

    # restarted; X is gone from the master
    store = await Store.open(cfg.daemon.database)
    opened.append(store)
    master = Master(store, [customer("PLAIN")])
    r = Reconciler(config=cfg, store=store, master=master, resolver=Dns({}))  # type: ignore[arg-type]
    for _ in range(3):
        assert (await r.tick()).ok
    records = await store.load()
    assert "X" not in records
    orphans = {d.guid for d in await store.load_decisions()} - set(records)
    assert orphans == set(), "decision rows of guids no tick will ever forget"
