"""Which hosts our own technical entries may still serve, by instance.

The planner holds a request back while another instance's entry (requested,
or destroyed but not yet read back gone) still names one of its hosts, so
two technical entries never serve one host. Built from the records only
when a tick has a request naming hosts: an idle tick pays nothing.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from cdnreq.model import Record
from cdnreq.decide.transitions import may_serve as serving
from cdnreq.validate.hosts import overlaps


def _base(host: str) -> str:
    return host[2:] if host.startswith("*.") else host


def _parents(name: str) -> Iterable[str]:
    while "." in name:
        name = name.split(".", 1)[1]
        yield name


class ServedHosts:
    """Lazy index of served hosts: by a host's base (without `*.`), and by
    each parent of it (to find what a requested wildcard would cover)."""

    def __init__(self, records: Mapping[str, Record], sleepers: Mapping[str, Any] | None = None):
        self._records = records
        self._sleepers = sleepers or {}  # decide/dormancy.Dormant by guid: their `served` counts too
        self._by_base: dict[str, list[tuple[str, str]]] | None = None
        self._under: dict[str, list[tuple[str, str]]] = {}

    def _build(self) -> dict[str, list[tuple[str, str]]]:
        by_base: dict[str, list[tuple[str, str]]] = {}
        served = [(r.guid, r.served) for r in self._records.values() if serving(r)]
        served += [(guid, d.served) for guid, d in self._sleepers.items() if d.served]
        for guid, hosts in served:
            for host in hosts or ():
                base = _base(host)
                by_base.setdefault(base, []).append((host, guid))
                for parent in _parents(base):
                    self._under.setdefault(parent, []).append((host, guid))
        return by_base

    def others(self, hosts: Iterable[str], guid: str) -> tuple[str, ...]:
        """The hosts among `hosts` that another instance's entry serves."""
        hosts = tuple(hosts)
        if not hosts:
            return ()
        if self._by_base is None:
            self._by_base = self._build()
        busy = [h for h in hosts if any(g != guid and overlaps(h, s) for s, g in self._candidates(h))]
        return tuple(busy)

    def _candidates(self, host: str) -> Iterable[tuple[str, str]]:
        assert self._by_base is not None
        base = _base(host)
        yield from self._by_base.get(base, ())
        for parent in _parents(base):  # served wildcards above it
            yield from self._by_base.get(parent, ())
        if host.startswith("*."):  # served hosts below a requested wildcard
            yield from self._under.get(base, ())
