"""The customers of the double: deterministic guids and parameters, and the listing they make."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from bench.double.wire import REQUESTER_PARTITION, STATES, dumps

__all__ = ["Customers", "customer_guid", "customer_parameters", "index_of", "padded"]


def customer_guid(index: int) -> str:
    return f"SOFTINST-{index}"


def customer_parameters(index: int, with_domains: bool = False, revision: int = 0) -> dict[str, str]:
    """The deterministic parameters of customer `index` (a `revision` changes the backend URL)."""
    url = f"https://backend-{index}.example" + (f"/r{revision}" if revision else "")
    parameters = {"url": url}
    if with_domains:
        parameters["custom_domain"] = f"www.d{index}.example"
    return parameters


def padded(parameters: dict[str, str], size: int, index: int, piece: int = 4000) -> dict[str, str]:
    """`parameters` grown to about `size` bytes of JSON (never more) with
    unknown keys of `piece` characters each (4,000: a certificate chain's
    worth of text; a few: the many small keys that cost the most as Python
    objects), distinct per customer."""
    pieces = max(0, size - len(dumps(parameters))) // (piece + 20)  # a key and its quotes: 20 bytes
    for n in range(pieces):
        parameters[f"x-pad-{n:05d}"] = (f"{index:08d}-{n:05d}-" * (piece // 15 + 1))[:piece]
    return parameters


def index_of(guid: str) -> str:
    return guid.removeprefix("SOFTINST-")


class Customers:
    """The customers' shared instances hosted by the requester, and the listing's body.

    ``entries``: guid -> the listing entry (``title, instance_guid,
    software_type, state, parameters, compute_partition_id``), in order.
    Each entry is serialised once and kept; a change re-serialises only the
    entries it touched, and the body (a join of the fragments) is rebuilt at
    the next :meth:`body`. After mutating ``entries`` directly, call
    :meth:`invalidate`.
    """

    def __init__(self, *, with_domains: bool = False, parameter_bytes: int = 0, parameter_piece: int = 4000):
        self.entries: dict[str, dict[str, Any]] = {}
        self.with_domains = with_domains
        self.next_index = 0  # the next index `populate` uses by default
        self.parameter_bytes = parameter_bytes  # pad each populated customer's parameters to about this
        self.parameter_piece = parameter_piece  # with unknown keys of this many characters
        self._revisions: Counter = Counter()
        self._fragments: dict[str, bytes] = {}  # guid -> serialised listing entry
        self._stale: set[str] = set()  # guids whose fragment must be rebuilt
        self._body: bytes | None = None

    def add(
        self,
        guid: str,
        parameters: Mapping[str, Any],
        *,
        title: str | None = None,
        state: str = "started",
        software_type: str = "default",
    ) -> None:
        """A customer orders a shared instance hosted by the requester (replaces one with that guid)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, not {state!r}")
        self.entries[guid] = {
            "title": title if title is not None else f"cdn-entry-{index_of(guid)}",
            "instance_guid": guid,
            "software_type": software_type,
            "state": state,
            "parameters": dict(parameters),
            "compute_partition_id": REQUESTER_PARTITION,
        }
        self._touch(guid)

    def change(
        self, guid: str, parameters: Mapping[str, Any] | None = None, *, state: str | None = None
    ) -> None:
        """New parameters and/or requested state for a customer (KeyError if unknown)."""
        entry = self.entries[guid]
        if parameters is not None:
            entry["parameters"] = dict(parameters)
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state must be one of {STATES}, not {state!r}")
            entry["state"] = state
        self._touch(guid)

    def remove(self, guid: str) -> bool:
        """The customer's instance is gone (False if it was not there)."""
        if self.entries.pop(guid, None) is None:
            return False
        self._fragments.pop(guid, None)
        self._stale.discard(guid)
        self._body = None
        return True

    def populate(
        self, count: int, start: int | None = None, with_domains: bool | None = None
    ) -> list[str]:
        """Add `count` deterministic customers SOFTINST-<start>..; returns their guids."""
        start = self.next_index if start is None else start
        domains = self.with_domains if with_domains is None else with_domains
        guids = []
        for index in range(start, start + count):
            guid = customer_guid(index)
            self.add(guid, padded(customer_parameters(index, domains), self.parameter_bytes, index, self.parameter_piece))
            guids.append(guid)
        self.next_index = max(self.next_index, start + count)
        return guids

    def bump(self, guid: str) -> dict[str, Any]:
        """Change a customer's backend URL to a new revision; returns the new parameters."""
        self._revisions[guid] += 1
        revision = self._revisions[guid]
        parameters = dict(self.entries[guid]["parameters"])
        base = parameters.get("url", f"https://backend-{index_of(guid)}.example").split("/r")[0]
        parameters["url"] = f"{base}/r{revision}"
        self.change(guid, parameters)
        return parameters

    def pick(self, fraction: float | None = None, guids: Iterable[str] | None = None) -> list[str]:
        """Known guids among `guids`, or round(fraction * N) customers spread evenly."""
        if guids is not None:
            return [guid for guid in guids if guid in self.entries]
        if fraction is None or not 0 <= fraction <= 1:
            raise ValueError("give guids, or a fraction between 0 and 1")
        keys = list(self.entries)
        count = round(len(keys) * fraction)
        if count == 0:
            return []
        step = len(keys) / count
        return [keys[int(i * step)] for i in range(count)]

    def invalidate(self) -> None:
        """Forget every cached serialisation (after mutating `entries` directly)."""
        self._fragments.clear()
        self._stale.clear()
        self._body = None

    def _touch(self, guid: str) -> None:
        self._stale.add(guid)
        self._body = None

    def body(self) -> bytes:
        """The serialised answer listing the customers (rebuilt only after a change)."""
        if self._body is None:
            fragments = self._fragments
            if not fragments:  # first build (or after invalidate): every entry, no bookkeeping
                fragments.update((guid, dumps(entry)) for guid, entry in self.entries.items())
            else:
                for guid in self._stale:
                    if (entry := self.entries.get(guid)) is not None:
                        fragments[guid] = dumps(entry)
            self._stale.clear()
            # In the customers' order; `remove` drops a fragment with its customer.
            self._body = b'{"result_list":[' + b",".join(
                [fragments[guid] for guid in self.entries]
            ) + b"]}"
        return self._body
