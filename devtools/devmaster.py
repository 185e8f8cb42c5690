"""A real SlapOS master on loopback, for the integration tests and the local demo.

cdnreq talks to the SlapOS master's JSON API. Rather than mocking that API,
the integration tests and the demo run *slapproxy* (``slapos proxy start``,
the development master shipped with slapos.core) on 127.0.0.1 and drive it
through this module: :class:`devtools.slapproxy.Slapproxy` (re-exported
here) starts and stops the process and makes plain synchronous API calls;
:func:`setup_cdn` formats a computer, supplies a requester and a technical
CDN software release and requests one instance of each; the returned :class:`CdnSite` plays the other parties (the
customers, who order shared instances hosted by the requester, and the
technical CDN, which publishes connection parameters to the shared instances
the requester ordered from it); :func:`write_config` writes a cdnreq
configuration pointing at that site.

It deliberately does not import :mod:`cdnreq.master`: tests use it as an
independent second client to check what cdnreq did.

Every call is made one at a time, and callers must keep it that way:
slapproxy answers 200 to concurrent shared-instance requests but keeps only
some of them (a read-modify-write race on the hosting partition's list).
For the same reason :func:`write_config` sets ``concurrency = 1``.

Other slapproxy behaviour this module works around or that tests rely on:

* guids are ``<title>___<requested_by>___<0|1>`` and slapproxy splits them
  from the left, so its JSON API answers 403 "not handled" to get/publish on
  a shared instance whose title contains ``___``. cdnreq never produces such
  titles (:mod:`cdnreq.decide.titles` turns an unsafe guid into a slug
  plus a hash), so this module simply calls the JSON API;
* requesting a shared instance with ``state = "destroyed"`` removes it from
  its host's list (the answer still says ``started``); ``get`` on its guid
  then fails with 500, and the row and its connection parameters survive:
  requested again, it comes back with the connection parameters it had.

Synchronous; standard library plus tomli-w.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from devtools.slapproxy import COMPUTER_ID, DevMasterError, Slapproxy, find_slapos, free_port

__all__ = [
    "MasterLog",
    "COMPUTER_ID", "REQUESTER_SR", "CDN_SR", "DevMasterError", "Slapproxy", "CdnSite",
    "free_port", "find_slapos", "setup_cdn", "split_guid", "write_config",
]

REQUESTER_SR = "http://sr.invalid/cdn-requester/software.cfg"
CDN_SR = "http://sr.invalid/rapid-cdn/software.cfg"
REQUESTER_TITLE = "cdn-requester"
CDN_TITLE = "cdn-tech"


def split_guid(instance_guid: str) -> tuple[str, str, bool]:
    """(title, requested_by, shared) of a slapproxy guid ``<title>___<requested_by>___<0|1>``.

    Split from the right, so it also works for titles containing ``___``.
    """
    parts = instance_guid.rsplit("___", 2)
    if len(parts) != 3 or parts[2] not in ("0", "1"):
        raise ValueError(f"not a slapproxy instance guid: {instance_guid!r}")
    return parts[0], parts[1], parts[2] == "1"


@dataclass
class CdnSite:
    """A formatted slapproxy with a requester instance and a technical CDN host."""

    proxy: Slapproxy
    requester_guid: str
    requester_partition: str
    cdn_guid: str
    cdn_partition: str
    requester_sr: str = REQUESTER_SR
    cdn_sr: str = CDN_SR

    def add_customer(self, name: str, parameters: dict, state: str = "started") -> str:
        """A customer orders a shared instance of the requester SR; returns its instance_guid."""
        answer = self.proxy.request(name, self.requester_sr, parameters=parameters,
                                    shared=True, state=state)
        return answer["instance_guid"]

    def remove_customer(self, name: str) -> None:
        """The customer destroys its shared instance (same title, state destroyed)."""
        self.proxy.request(name, self.requester_sr, shared=True, state="destroyed")

    def customers(self) -> list[dict]:
        """The shared instances hosted by the requester."""
        return self.proxy.hosted(self.requester_guid)

    def technical_entries(self) -> list[dict]:
        """The shared instances hosted by the technical CDN host."""
        return self.proxy.hosted(self.cdn_guid)

    def publish_as_cdn(self, tech_guid: str, params: dict) -> None:
        """Publish connection parameters to a technical shared instance, as the CDN partition."""
        self.proxy.publish(tech_guid, params, partition=self.cdn_partition)

    def customer(self, guid: str) -> dict:
        return self.proxy.get(guid)


class MasterLog:
    """slapproxy's own access log: the calls a client really made since mark()."""

    def __init__(self, site: CdnSite):
        self.path = site.proxy.log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def calls(self) -> list[str]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode("utf-8", "replace")
        return re.findall(r'"POST /(slapos\.[a-zA-Z0-9_.]+) HTTP', text)


def setup_cdn(proxy: Slapproxy) -> CdnSite:
    """Format, supply both SRs, request the requester and the technical CDN host."""
    proxy.format()
    proxy.supply(REQUESTER_SR)
    proxy.supply(CDN_SR)
    requester = proxy.request(REQUESTER_TITLE, REQUESTER_SR)
    cdn = proxy.request(CDN_TITLE, CDN_SR)
    return CdnSite(proxy, requester["instance_guid"], requester["compute_partition_id"],
                   cdn["instance_guid"], cdn["compute_partition_id"])


def write_config(
    path: Path, site: CdnSite, *, database: Path | str, request_prefix: str = "cdnreq-",
    **sections: dict,
) -> Path:
    """Write a cdnreq TOML configuration (docs/config-spec.md) for ``site``.

    ``sections`` override or add keys per section, e.g. ``daemon={"allow_empty": True}``;
    a new section name adds a table. A value of ``None`` removes that key.
    """
    path = Path(path)
    tables: dict[str, dict[str, Any]] = {
        "master": {
            "url": site.proxy.url, "instance_guid": site.requester_guid,
            "computer_id": site.proxy.computer_id, "partition_id": site.requester_partition,
            "timeout_s": 10.0,
        },
        "technical_cdn": {
            "software_release_uri": site.cdn_sr, "software_type": "default",
            "request_prefix": request_prefix,
        },
        "daemon": {
            "database": os.fspath(database),
            "concurrency": 1,  # slapproxy drops concurrent shared-instance requests
            "tick_interval_s": 2.0, "listen": f"127.0.0.1:{free_port()}",
        },
        # Never the system resolver from a test or the demo: a dead loopback
        # port unless the caller passes its own DNS server.
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout_s": 0.5, "tries": 1},
        "logging": {"format": "json"},
    }
    for section, overrides in sections.items():
        if isinstance(overrides, list):  # an array of tables ([[consumer]])
            tables[section] = overrides
            continue
        merged = {**tables.get(section, {}), **(overrides or {})}
        tables[section] = {key: value for key, value in merged.items() if value is not None}
    tables = json.loads(json.dumps(tables, default=os.fspath))  # paths (even nested) to str
    header = "# cdnreq configuration written by devtools.devmaster.write_config\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(tables), encoding="utf-8")
    return path
