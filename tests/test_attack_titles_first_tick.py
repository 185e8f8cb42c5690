"""Attack on issue 16 (customers' titles): an instance whose first listing
carried no usable title is recorded untitled, and the tick never stores its
title afterwards (Names.unnamed is read only at a load): its changes are
outside every title scope until the daemon restarts or leadership moves."""

from __future__ import annotations

from pathlib import Path

import orjson
from test_tick_stages import Dns, config, opened, reconciler  # noqa: F401  (the harness and its fixture)

from cdnreq.listing import read_listing
from cdnreq.model import SharedInstance
from cdnreq.store import Store

SCOPE = ["reseller-a/"]


def listing_of(*entries: dict):
    return read_listing(orjson.dumps({"result_list": list(entries)}))


def entry(guid: str, title, parameters=None) -> dict:
    return {"instance_guid": guid, "state": "started", "title": title,
            "parameters": {"url": f"https://{guid.lower()}.backend.example"} if parameters is None else parameters}


async def names(store) -> dict:
    return dict(await store._all("SELECT guid, name FROM names"))


async def test_an_unusable_first_entry_loses_its_title_for_good(tmp_path: Path,
        opened: list[Store]) -> None:  # noqa: F811
    """The master lists G1 with its title but parameters that are not an object:
    G1 is recorded and told `refused`; the reseller owning `reseller-a/` never
    sees that change, nor G1's next ones once the entry is fixed."""
    r, master = await reconciler(opened, config(tmp_path), [], Dns({}))
    listed = [listing_of(entry("G1", "reseller-a/shop", parameters="oops"))]

    async def list_hosted(guid: str):
        return listed[0]

    master.list_hosted = list_hosted
    assert (await r.tick()).ok
    kinds = [row[3] for row in await master.store.changes_after(0, 100)]
    assert "refused" in kinds  # the customer was told
    listed[0] = listing_of(entry("G1", "reseller-a/shop"))  # fixed by the customer
    assert (await r.tick()).ok
    seen = [(row[3], row[5]) for row in await master.store.changes_after(0, 100, titles=SCOPE)]
    all_ = [(row[3], row[5]) for row in await master.store.changes_after(0, 100)]
    assert seen, f"the reseller's scope sees none of G1's changes {all_}; names: {await names(master.store)}"


async def test_a_title_listed_after_the_first_tick_depends_on_a_restart(tmp_path: Path,
        opened: list[Store]) -> None:  # noqa: F811
    """First listed without a title, then with one: whether it is stored
    depends on whether the daemon was restarted in between."""
    r, master = await reconciler(opened, config(tmp_path), [SharedInstance.of("G1", {"url": "https://g1.example"})],
                                 Dns({}))
    assert (await r.tick()).ok  # listed without a title: none kept
    master.instances = (SharedInstance.of("G1", {"url": "https://g1.example"}, title="reseller-a/shop"),)
    assert (await r.tick()).ok
    without_restart = await names(master.store)
    await r.load()  # a restart, a reload or a change of leader
    assert (await r.tick()).ok
    after_restart = await names(master.store)
    assert without_restart == after_restart, (without_restart, after_restart)
