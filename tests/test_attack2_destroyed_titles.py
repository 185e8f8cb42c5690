"""Attack on issue 16 (customers' titles): a destroyed customer stays listed
by the master (state destroyed). Once cdnreq has destroyed its entry and
forgotten it, the guid is no longer known, so every later tick takes it
for a new instance and stores its title again (cdnreq/decide/names.py
to_keep): the names row that forgetting deleted comes back and is never
deleted again, and each idle tick writes it (one more transaction per tick
for as long as the master lists the destroyed guid)."""

from __future__ import annotations

from pathlib import Path

from test_tick_stages import Dns, config, opened, reconciler  # noqa: F401  (the harness and its fixture)

from cdnreq.model import SharedInstance
from cdnreq.store import Store

P = {"url": "https://shop.backend.example"}


def others() -> list[SharedInstance]:  # keep the removal under max_destroy_fraction
    return [SharedInstance.of(f"K{i}", {"url": f"https://k{i}.example"}, title=f"other/{i}") for i in range(4)]


async def names(store, guid: str) -> list:
    return [tuple(r) for r in await store._all("SELECT guid, name FROM names WHERE guid = ?", (guid,))]


async def test_a_forgotten_destroyed_instance_gets_its_title_stored_again(tmp_path: Path,
        opened: list[Store]) -> None:  # noqa: F811
    r, master = await reconciler(opened, config(tmp_path),
                                 [SharedInstance.of("G1", P, title="reseller-a/shop"), *others()], Dns({}))
    for _ in range(2):
        assert (await r.tick()).ok
    master.instances = (SharedInstance.of("G1", P, state="destroyed", title="reseller-a/shop"), *others())
    for _ in range(2):  # destroyed, then forgotten (its title deleted with it)
        assert (await r.tick()).ok
    assert "G1" not in await master.store.load()
    assert await names(master.store, "G1") == []
    assert (await r.tick()).ok  # the master still lists it, destroyed
    assert await names(master.store, "G1") == [], "the forgotten instance's title is stored again, for good"


async def test_an_idle_tick_writes_the_title_of_a_listed_destroyed_guid(tmp_path: Path,
        opened: list[Store]) -> None:  # noqa: F811
    """A guid the master lists destroyed and cdnreq never stored: nothing to
    do, yet every tick commits its title."""
    gone = SharedInstance.of("GONE", P, state="destroyed", title="reseller-a/gone")
    r, master = await reconciler(opened, config(tmp_path), [gone, *others()], Dns({}))
    for _ in range(3):
        assert (await r.tick()).ok
    commits: list[dict] = []
    real = master.store.commit

    async def counting(**kw):
        commits.append({k: v for k, v in kw.items() if v})
        return await real(**kw)

    master.store.commit = counting  # type: ignore[method-assign]
    assert (await r.tick()).ok
    assert "GONE" not in await master.store.load()
    assert [c for c in commits if "names" in c] == [], commits
