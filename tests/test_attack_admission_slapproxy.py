"""Attack: admission's at-once ticks count as [daemon].confirm_ticks'
evidence. A mass change of a live fleet is held "until seen for
confirm_ticks ticks"; ticks that admission starts at once (the daemon) or
runs in one pass (`cdnreq once`) see the same glitching listing seconds
apart, so a glitch of seconds passes the guard. Real slapproxy, real cdnreq."""

from __future__ import annotations

import time
from pathlib import Path

from devtools.devmaster import CdnSite
from test_guards_slapproxy import CUSTOMERS, empty_every_url, entries, make_live
from test_reconcile_slapproxy import once
from test_service import config_for, spawn, wait_for  # noqa: F401  (the fixture)



def live_fleet(site: CdnSite, tmp_path: Path) -> dict[str, dict]:
    """Twenty live customers, reconciled with the default admission."""
    make_live(site, config_for(site, tmp_path, name="setup.toml"))
    return entries(site)


def glitch_with_newcomers(site: CdnSite, newcomers: int) -> None:
    """The master lists every live customer without its url, and a few new
    instances (a hostile customer's burst, or the same faulty master)."""
    empty_every_url(site)
    for k in range(newcomers):
        site.add_customer(f"newcomer-{k}", {"url": f"https://new-{k}.example"})


def test_one_once_does_not_confirm_a_mass_change(cdn_site: CdnSite, tmp_path: Path) -> None:
    before = live_fleet(cdn_site, tmp_path)
    config = config_for(cdn_site, tmp_path, name="attack.toml", daemon={"admit_per_tick": 1})
    glitch_with_newcomers(cdn_site, 3)
    result = once(config)  # one observation of the glitch, as the guard's test runs it
    assert result.returncode == 0, result.stderr
    after = entries(cdn_site)
    changed = sorted(t for t in before if after.get(t) != before[t])
    assert not changed, f"one `cdnreq once` applied the held mass change to {len(changed)} live entries"


def test_the_daemon_does_not_confirm_a_mass_change_in_seconds(cdn_site: CdnSite, tmp_path: Path, spawn) -> None:
    before = live_fleet(cdn_site, tmp_path)
    # an hour between ticks: confirm_ticks = 3 should take two hours of the same glitch
    config = config_for(cdn_site, tmp_path, name="attack.toml",
                        daemon={"admit_per_tick": 1, "tick_interval_s": 3600})
    glitch_with_newcomers(cdn_site, 3)
    started = time.monotonic()
    daemon = spawn(config)
    wait_for(lambda: sum(t.startswith("cdnreq-") for t in entries(cdn_site)) == CUSTOMERS + 3,
             "the newcomers requested", timeout=60, daemon=daemon)
    ticks = daemon.wait_logged("tick done", count=3)
    elapsed = time.monotonic() - started
    after = entries(cdn_site)
    changed = sorted(t for t in before if after.get(t) != before[t])
    assert not changed, (
        f"{len(changed)} live entries updated by a mass change {elapsed:.1f} s after the glitch began,"
        f" in {len(ticks)} ticks ({[t.get('results') for t in ticks]}), with tick_interval_s = 3600"
    )
    assert daemon.stop() == 0


def test_control_without_a_limit_one_once_holds_the_mass_change(cdn_site: CdnSite, tmp_path: Path) -> None:
    before = live_fleet(cdn_site, tmp_path)
    config = config_for(cdn_site, tmp_path, name="attack.toml", daemon={"admit_per_tick": 0})
    glitch_with_newcomers(cdn_site, 3)
    result = once(config)
    assert result.returncode == 0, result.stderr
    after = entries(cdn_site)
    assert all(after.get(t) == before[t] for t in before)
