"""Admission end to end against slapproxy: a burst bigger than
[daemon].admit_per_tick is taken on over ticks that follow each other at
once (the daemon), or in one `cdnreq once`; each customer requested once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import storeread
from devtools.devmaster import CdnSite
from cdnreq.decide.titles import technical_title

from test_service import PREFIX, REQUESTS_OK, add_customers, cdnreq, config_for, metric_families, sample, spawn, wait_for  # noqa: F401


def test_the_daemon_takes_a_burst_on_at_once_over_ticks(cdn_site: CdnSite, tmp_path: Path, spawn) -> None:
    customers = add_customers(cdn_site, 5)
    # an hour between ticks: only admission's "next tick at once" can take on the rest
    config = config_for(cdn_site, tmp_path, daemon={"tick_interval_s": 3600, "admit_per_tick": 2})
    daemon = spawn(config)
    wanted = sorted(technical_title(PREFIX, g) for g in customers)
    wait_for(lambda: sorted(e["title"] for e in cdn_site.technical_entries()) == wanted,
             "every customer requested", timeout=60, daemon=daemon)
    ticks = sorted(daemon.wait_logged("tick done", count=3), key=lambda e: e["tick"])
    assert [t.get("waiting_admission") for t in ticks[:3]] == [3, 1, None]
    assert [t["results"].get("request:ok") for t in ticks[:3]] == [2, 2, 1]
    families = metric_families(daemon.get("/metrics").body.decode())
    assert sample(families, "cdnreq_instances_waiting_admission") == 0
    requests = Counter(g for (g,) in storeread.query(config, REQUESTS_OK))
    assert requests == Counter({g: 1 for g in customers})
    assert daemon.stop() == 0


def test_once_takes_every_customer_on_in_one_pass(cdn_site: CdnSite, tmp_path: Path) -> None:
    customers = add_customers(cdn_site, 5)
    config = config_for(cdn_site, tmp_path, daemon={"admit_per_tick": 2})
    result = cdnreq("once", "--config", config, timeout=120)
    assert result.returncode == 0, result.stderr
    titles = [e["title"] for e in cdn_site.technical_entries()]
    assert sorted(titles) == sorted(technical_title(PREFIX, g) for g in customers)
    ticks = [r for (r,) in storeread.query(config, "SELECT result FROM ticks ORDER BY id")]
    assert ticks == ["ok", "ok", "ok"]
