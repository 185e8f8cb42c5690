"""A fast SlapOS master double, for benchmarks ONLY.

cdnreq's own tests run against a real slapproxy (devtools/devmaster.py). That
is the right master for correctness, but it is far too slow to measure cdnreq
with 100,000 customers: it answers a few dozen requests a second and its
per-request cost grows with what it holds. This module is a stand-in that is
cheap enough to measure cdnreq rather than the master.

It implements exactly the five calls cdnreq makes (cdnreq/master.py), with the
request and answer shapes of the real master's OpenAPI description
(slapos.core's ``slapos/proxy/json_rpc.json``):

* ``slapos.allDocs.v0.instance_node_instance_list``: for the requester's
  guid, the hosted customer shared instances; for the technical host's guid,
  the technical entries requested so far;
* ``slapos.post.v0.software_instance`` (``shared: true`` only): records,
  updates or destroys a technical entry keyed by its title, and answers the
  full instance document;
* ``slapos.get.v0.software_instance``: the technical entry (or a customer's
  instance), 403 when unknown;
* ``slapos.put.v0.software_instance_connection_parameter`` and
  ``slapos.put.v0.software_instance_error``: record what was published per
  customer guid.

Errors are ``{status, type, title}`` with a 4xx status, as the real master
sends them: 400 for an unknown call or a body that does not match the spec,
403 for an unknown instance. Request bodies are fully validated against the
spec (jsonschema Draft 7) only with ``validate=True``; by default only the
required keys and their types are checked, for speed. With ``validate=True``
the answers are validated too (a mismatch is a 500, as in slapproxy).

When the "technical CDN" publishes is ``publish_after``:

* ``"immediately"``: the request's answer already carries the connection
  parameters;
* ``"next_read"``: the request's answer has none (for a new entry, or the old
  ones for an update); they are filled when the entry is read back with get;
* ``"never"``: nothing is ever published.

Speed: the list of hosted instances is served from a cached body. Each
customer's entry is serialised once and kept; a change re-serialises only the
entries it touched, and the body (a join of the fragments) is rebuilt at the
next list. ``orjson`` is used when it is installed (it is not a dependency).

Run it in its own process for benchmarks, so that its CPU is not counted as
cdnreq's::

    python -m bench.double --port 0 --customers 100000 --domains

prints ``READY <port>`` once it listens. A small control API on the same
server, under ``/_bench/``, lets the benchmark runner change the customers
between ticks and read counters (see :func:`_control_routes`).
:class:`DoubleProcess` starts and drives such a process; :func:`serve` runs a
double in the current event loop (tests); ``bench.baselines.ceiling`` measures
the double's own request rate with a bare aiohttp client.

State is in memory only. The benchmark changes customers through
:meth:`Double.add`, :meth:`Double.change` and :meth:`Double.remove` (or the
control API), which keep the cached list up to date; after mutating
``Double.customers`` directly, call :meth:`Double.invalidate`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from bench.child import ReadyChild

try:  # optional, not a dependency
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

__all__ = [
    "CALLS",
    "ERROR",
    "GET",
    "LIST_HOSTED",
    "PUBLISH",
    "PUBLISH_MODES",
    "REQUEST",
    "REQUESTER_GUID",
    "TECHNICAL_GUID",
    "Double",
    "DoubleProcess",
    "DoubleServer",
    "customer_guid",
    "customer_parameters",
    "load_spec",
    "main",
    "serve",
    "spec_path",
]

REQUESTER_GUID = "cdn-requester______0"
TECHNICAL_GUID = "cdn-tech______0"
REQUESTER_TITLE = "cdn-requester"
REQUESTER_PARTITION = "slappart0"
TECHNICAL_PARTITION = "slappart1"
COMPUTER_GUID = "COMP-0"

LIST_HOSTED = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
GET = "slapos.get.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
ERROR = "slapos.put.v0.software_instance_error"
CALLS = (LIST_HOSTED, REQUEST, GET, PUBLISH, ERROR)

PUBLISH_MODES = ("immediately", "next_read", "never")
STATES = ("started", "stopped", "destroyed")

# -- JSON ------------------------------------------------------------------------

if _orjson is not None:  # pragma: no cover - depends on the environment
    _loads: Callable[[bytes], Any] = _orjson.loads

    def _dumps(value: Any) -> bytes:
        return _orjson.dumps(value)
else:
    _loads = json.loads
    _encode = json.JSONEncoder(separators=(",", ":")).encode

    def _dumps(value: Any) -> bytes:
        return _encode(value).encode()


# -- the spec ----------------------------------------------------------------------


def spec_path() -> Path:
    """slapos/proxy/json_rpc.json, found without importing slapos.proxy (Flask & co)."""
    spec = importlib.util.find_spec("slapos.proxy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("slapos.core is not installed: cannot find slapos/proxy/json_rpc.json")
    return Path(next(iter(spec.submodule_search_locations))) / "json_rpc.json"


_SPEC: dict[str, Any] | None = None


def load_spec() -> dict[str, Any]:
    global _SPEC
    if _SPEC is None:
        _SPEC = json.loads(spec_path().read_text(encoding="utf-8"))
    return _SPEC


def _schemas(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request body schema, 200 answer schema) of one call."""
    operation = load_spec()["paths"]["/" + name]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return request, answer


# -- customers -------------------------------------------------------------------------


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
    pieces = max(0, size - len(_dumps(parameters))) // (piece + 20)  # a key and its quotes: 20 bytes
    for n in range(pieces):
        parameters[f"x-pad-{n:05d}"] = (f"{index:08d}-{n:05d}-" * (piece // 15 + 1))[:piece]
    return parameters


def _index_of(guid: str) -> str:
    return guid.removeprefix("SOFTINST-")


# -- errors --------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, title: str):
        super().__init__(title)
        self.status = status
        self.title = title


def error_body(status: int, title: str) -> bytes:
    """`{status, type, title}`, as the real master (werkzeug's reason phrases)."""
    return _dumps({"status": status, "type": HTTPStatus(status).phrase, "title": title})


# Cheap checks of the bodies, used when full validation is off: the required
# keys and their types, so a bad body is a 400 and never a crash.
_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    LIST_HOSTED: (("instance_guid", str),),
    REQUEST: (("title", str), ("software_release_uri", str), ("software_type", str)),
    GET: (("instance_guid", str),),
    PUBLISH: (("instance_guid", str), ("connection_parameter_dict", dict)),
    ERROR: (("instance_guid", str), ("message", str)),
}
_TYPE_NAMES = {str: "string", dict: "object", bool: "boolean"}


def _quick_check(name: str, body: dict[str, Any]) -> None:
    for key, kind in _REQUIRED[name]:
        if key not in body:
            raise _Refused(400, f"'{key}' is a required property")
        if not isinstance(body[key], kind):
            raise _Refused(400, f"{body[key]!r} is not of type '{_TYPE_NAMES[kind]}'")
    if name == REQUEST:
        if not isinstance(body.get("parameters", {}), dict):
            raise _Refused(400, f"{body['parameters']!r} is not of type 'object'")
        if not isinstance(body.get("sla_parameters", {}), dict):
            raise _Refused(400, f"{body['sla_parameters']!r} is not of type 'object'")
        if not isinstance(body.get("shared", False), bool):
            raise _Refused(400, f"{body['shared']!r} is not of type 'boolean'")
        if body.get("state", "started") not in STATES:
            raise _Refused(400, f"{body['state']!r} is not one of {list(STATES)!r}")
        if len(body["title"]) > 200:
            raise _Refused(400, f"{body['title']!r} is too long")


# -- the double ------------------------------------------------------------------------------


class Double:
    """The master's state and the five calls, independent of HTTP.

    ``customers``: guid -> the listing entry (``title, instance_guid,
    software_type, state, parameters, compute_partition_id``).
    ``technical``: title -> the technical entry's instance document.
    ``published`` / ``errors``: guid -> what was last published to it.
    ``calls``: Counter of calls per name (the control API is not counted).
    """

    def __init__(
        self,
        *,
        publish_after: str = "immediately",
        validate: bool = False,
        with_domains: bool = False,
        parameter_bytes: int = 0,
        parameter_piece: int = 4000,
        requester_guid: str = REQUESTER_GUID,
        technical_guid: str = TECHNICAL_GUID,
        clock: Callable[[], float] = time.time,
    ):
        if publish_after not in PUBLISH_MODES:
            raise ValueError(f"publish_after must be one of {PUBLISH_MODES}, not {publish_after!r}")
        self.publish_after = publish_after
        self.with_domains = with_domains
        self.requester_guid = requester_guid
        self.technical_guid = technical_guid
        self.clock = clock
        self.customers: dict[str, dict[str, Any]] = {}
        self.technical: dict[str, dict[str, Any]] = {}
        self.published: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.destroyed: Counter = Counter()  # technical title -> destroy requests
        self.calls: Counter = Counter()
        self.next_index = 0  # the next index `populate` uses by default
        self.parameter_bytes = parameter_bytes  # pad each populated customer's parameters to about this
        self.parameter_piece = parameter_piece  # with unknown keys of this many characters
        self._revisions: Counter = Counter()
        self._tech_by_guid: dict[str, str] = {}
        self._undeployed: set[str] = set()  # titles waiting for a read (next_read)
        self._fragments: dict[str, bytes] = {}  # guid -> serialised listing entry
        self._stale: set[str] = set()  # guids whose fragment must be rebuilt
        self._list_body: bytes | None = None
        self._technical_body: bytes | None = None
        self._validators: dict[str, tuple[Any, Any]] | None = None
        if validate:
            self._load_validators()
        self._handlers: dict[str, Callable[[dict[str, Any]], tuple[int, bytes]]] = {
            LIST_HOSTED: self._list_hosted,
            REQUEST: self._request,
            GET: self._get,
            PUBLISH: self._publish,
            ERROR: self._error,
        }

    # -- configuration ----------------------------------------------------------------

    @property
    def validate(self) -> bool:
        return self._validators is not None

    def _load_validators(self) -> None:
        self._validators = {}
        for name in CALLS:
            request, answer = _schemas(name)
            self._validators[name] = (Draft7Validator(request), Draft7Validator(answer))

    def set_publish_after(self, mode: str) -> None:
        if mode not in PUBLISH_MODES:
            raise ValueError(f"publish_after must be one of {PUBLISH_MODES}, not {mode!r}")
        self.publish_after = mode

    # -- customers ---------------------------------------------------------------------

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
        self.customers[guid] = {
            "title": title if title is not None else f"cdn-entry-{_index_of(guid)}",
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
        entry = self.customers[guid]
        if parameters is not None:
            entry["parameters"] = dict(parameters)
        if state is not None:
            if state not in STATES:
                raise ValueError(f"state must be one of {STATES}, not {state!r}")
            entry["state"] = state
        self._touch(guid)

    def remove(self, guid: str) -> bool:
        """The customer's instance is gone from the master (with what was published to it)."""
        if self.customers.pop(guid, None) is None:
            return False
        self.published.pop(guid, None)
        self.errors.pop(guid, None)
        self._fragments.pop(guid, None)
        self._stale.discard(guid)
        self._list_body = None
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
        parameters = dict(self.customers[guid]["parameters"])
        base = parameters.get("url", f"https://backend-{_index_of(guid)}.example").split("/r")[0]
        parameters["url"] = f"{base}/r{revision}"
        self.change(guid, parameters)
        return parameters

    def pick(self, fraction: float | None = None, guids: Iterable[str] | None = None) -> list[str]:
        """Known guids among `guids`, or round(fraction * N) customers spread evenly."""
        if guids is not None:
            return [guid for guid in guids if guid in self.customers]
        if fraction is None or not 0 <= fraction <= 1:
            raise ValueError("give guids, or a fraction between 0 and 1")
        keys = list(self.customers)
        count = round(len(keys) * fraction)
        if count == 0:
            return []
        step = len(keys) / count
        return [keys[int(i * step)] for i in range(count)]

    def invalidate(self) -> None:
        """Forget every cached serialisation (after mutating `customers` directly)."""
        self._fragments.clear()
        self._stale.clear()
        self._list_body = None

    def reset_counts(self) -> None:
        self.calls.clear()

    def _touch(self, guid: str) -> None:
        self._stale.add(guid)
        self._list_body = None

    # -- cached bodies ----------------------------------------------------------------------

    def list_body(self) -> bytes:
        """The serialised answer listing the customers (rebuilt only after a change)."""
        if self._list_body is None:
            fragments = self._fragments
            if not fragments:  # first build (or after invalidate): every entry, no bookkeeping
                fragments.update((guid, _dumps(entry)) for guid, entry in self.customers.items())
            else:
                for guid in self._stale:
                    if (entry := self.customers.get(guid)) is not None:
                        fragments[guid] = _dumps(entry)
            self._stale.clear()
            # In the customers' order; `remove` drops a fragment with its customer.
            self._list_body = b'{"result_list":[' + b",".join(
                [fragments[guid] for guid in self.customers]
            ) + b"]}"
        return self._list_body

    def technical_list_body(self) -> bytes:
        if self._technical_body is None:
            self._technical_body = _dumps({"result_list": [
                {
                    "title": doc["title"],
                    "instance_guid": doc["instance_guid"],
                    "software_type": doc["software_type"],
                    "state": doc["state"],
                    "parameters": doc["parameters"],
                    "compute_partition_id": doc["compute_partition_id"],
                }
                for doc in self.technical.values()
            ]})
        return self._technical_body

    # -- the API -----------------------------------------------------------------------------

    def handle(self, name: str, raw: bytes) -> tuple[int, bytes]:
        """Answer one call: (HTTP status, JSON body)."""
        self.calls[name] += 1
        handler = self._handlers.get(name)
        if handler is None:
            return 400, error_body(400, f"/{name} is not part of the open api definition")
        try:
            body = _loads(raw) if raw else None
        except ValueError:
            return 400, error_body(400, "Failed to decode JSON object")
        if not isinstance(body, dict):
            return 400, error_body(400, f"{body!r} is not of type 'object'")
        try:
            if self._validators is None:
                _quick_check(name, body)
                return handler(body)
            request_validator, answer_validator = self._validators[name]
            if (error := best_match(request_validator.iter_errors(body))) is not None:
                raise _Refused(400, error.message)
            status, answer = handler(body)
            errors = answer_validator.iter_errors(json.loads(answer)) if status == 200 else ()
            if (error := best_match(errors)) is not None:
                raise _Refused(500, error.message)  # as slapproxy: a wrong answer is a 500
            return status, answer
        except _Refused as refused:
            return refused.status, error_body(refused.status, refused.title)

    def _list_hosted(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        if guid == self.requester_guid:
            return 200, self.list_body()
        if guid == self.technical_guid:
            return 200, self.technical_list_body()
        raise _Refused(403, f"No software instance {guid} found.")

    def _request(self, body: dict[str, Any]) -> tuple[int, bytes]:
        if not body.get("shared", False):
            raise _Refused(403, "The master double only hosts shared instances.")
        title = body["title"]
        state = body.get("state", "started")
        parameters = body.get("parameters", {})
        doc = self.technical.get(title)
        now = int(self.clock())
        if state == "destroyed":
            self.destroyed[title] += 1
            if doc is None:
                doc = self._new_doc(body, title)
            else:
                del self.technical[title]
                del self._tech_by_guid[doc["instance_guid"]]
                self._undeployed.discard(title)
                self._technical_body = None
            doc = {**doc, "state": "destroyed", "processing_timestamp": now}
            return 200, _dumps(doc)
        if doc is None:
            doc = self._new_doc(body, title)
            self.technical[title] = doc
            self._tech_by_guid[doc["instance_guid"]] = title
            changed = True
        else:
            changed = (
                doc["parameters"] != parameters
                or doc["software_release_uri"] != body["software_release_uri"]
                or doc["software_type"] != body["software_type"]
            )
            doc["parameters"] = parameters
            doc["software_release_uri"] = body["software_release_uri"]
            doc["software_type"] = body["software_type"]
            doc["sla_parameters"] = body.get("sla_parameters", {})
            changed = changed or doc["state"] != state
            doc["state"] = state
        if changed:
            doc["processing_timestamp"] = now
            self._technical_body = None
            if self.publish_after == "immediately":
                self._deploy(doc)
            elif self.publish_after == "next_read":
                self._undeployed.add(title)
        return 200, _dumps(doc)

    def _new_doc(self, body: dict[str, Any], title: str) -> dict[str, Any]:
        return {
            "computer_guid": COMPUTER_GUID,
            "instance_guid": f"{title}___{REQUESTER_TITLE}___1",
            "root_instance_title": REQUESTER_TITLE,
            "title": title,
            "state": body.get("state", "started"),
            "compute_partition_id": TECHNICAL_PARTITION,
            "software_release_uri": body["software_release_uri"],
            "software_type": body["software_type"],
            "shared": True,
            "processing_timestamp": int(self.clock()),
            "access_status_message": "",
            "parameters": body.get("parameters", {}),
            "sla_parameters": body.get("sla_parameters", {}),
            "connection_parameters": {},
            "ip_list": [],
            "full_ip_list": [],
        }

    @staticmethod
    def _deploy(doc: dict[str, Any]) -> None:
        """What the technical CDN publishes once an entry is deployed."""
        host = doc["parameters"].get("custom_domain")
        if not isinstance(host, str) or not host:
            host = f"{doc['title'].lower()}.cdn.example"
        doc["connection_parameters"] = {
            "domain": host,
            "url": f"https://{host}",
            "secure_access": f"https://{host}",
        }

    def deploy_pending(self) -> int:
        """Publish every entry waiting for a read (next_read); returns how many."""
        count = 0
        for title in self._undeployed:
            doc = self.technical.get(title)
            if doc is not None:
                self._deploy(doc)
                count += 1
        self._undeployed.clear()
        return count

    def _get(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        title = self._tech_by_guid.get(guid)
        if title is not None:
            doc = self.technical[title]
            if title in self._undeployed:
                self._undeployed.discard(title)
                self._deploy(doc)
            return 200, _dumps(doc)
        entry = self.customers.get(guid)
        if entry is not None:
            return 200, _dumps({
                "computer_guid": COMPUTER_GUID,
                "instance_guid": guid,
                "root_instance_title": entry["title"],
                "title": entry["title"],
                "state": entry["state"],
                "compute_partition_id": REQUESTER_PARTITION,
                "software_release_uri": "http://sr.invalid/cdn-requester/software.cfg",
                "software_type": entry["software_type"],
                "shared": True,
                "processing_timestamp": 0,
                "access_status_message": self.errors.get(guid, ""),
                "parameters": entry["parameters"],
                "sla_parameters": {},
                "connection_parameters": self.published.get(guid, {}),
                "ip_list": [],
                "full_ip_list": [],
            })
        raise _Refused(403, f"No software instance {guid} found.")

    def _publish(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        parameters = body["connection_parameter_dict"]
        if guid in self.customers:
            self.published[guid] = parameters
        elif (title := self._tech_by_guid.get(guid)) is not None:  # the CDN publishing
            self.technical[title]["connection_parameters"] = parameters
            self._undeployed.discard(title)
        else:
            raise _Refused(403, f"No software instance {guid} found.")
        return 200, b'{"type":"success","title":"Updated"}'

    def _error(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        if guid not in self.customers and guid not in self._tech_by_guid:
            raise _Refused(403, f"No software instance {guid} found.")
        self.errors[guid] = body["message"]
        return 200, b'{"type":"success","title":"Recorded"}'

    # -- the control API's answers -----------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "customers": len(self.customers),
            "technical": len(self.technical),
            "deployed": sum(1 for doc in self.technical.values() if doc["connection_parameters"]),
            "destroyed": sum(self.destroyed.values()),
            "published": len(self.published),
            "errors": len(self.errors),
            "publish_after": self.publish_after,
            "validate": self.validate,
            "next_index": self.next_index,
        }


# -- HTTP ----------------------------------------------------------------------------------------


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(value), status=status, content_type="application/json")


def _control_routes(double: Double) -> list[web.RouteDef]:
    """`/_bench/<op>` for the benchmark runner (JSON bodies; counts and *_count also GET).

    * ``add``: ``{count, start?, with_domains?}`` -> ``{added, first, customers}``
    * ``change``: ``{guids} | {fraction}``, optional ``parameters`` (else the
      backend URL gets a new revision), optional ``state`` -> ``{changed, guids}``
    * ``remove``: ``{guids} | {fraction}`` -> ``{removed, guids}``
    * ``counts``: ``{calls: {name: n}, total}``; ``reset_counts``
    * ``published_count``: ``{published, errors}``;
      ``technical_count``: ``{technical, deployed, destroyed}``
    * ``state``: the whole summary; ``config``: ``{publish_after?}``;
      ``deploy``: publish the entries waiting for a read; ``clear_technical``
    """

    async def body_of(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        body = await request.json(loads=_loads)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    def guarded(handler: Callable[[dict[str, Any]], Any]):
        async def route(request: web.Request) -> web.Response:
            try:
                return _json_response(handler(await body_of(request)))
            except (ValueError, KeyError, TypeError) as exc:
                return web.Response(
                    body=error_body(400, f"{type(exc).__name__}: {exc}"), status=400,
                    content_type="application/json",
                )
        return route

    def add(body: dict[str, Any]) -> dict[str, Any]:
        guids = double.populate(int(body.get("count", 1)), body.get("start"), body.get("with_domains"))
        return {"added": len(guids), "first": guids[0] if guids else None,
                "customers": len(double.customers)}

    def change(body: dict[str, Any]) -> dict[str, Any]:
        guids = double.pick(body.get("fraction"), body.get("guids"))
        parameters, state = body.get("parameters"), body.get("state")
        for guid in guids:
            if parameters is None and state is None:
                double.bump(guid)
            else:
                merged = None
                if parameters is not None:
                    merged = {**double.customers[guid]["parameters"], **parameters}
                double.change(guid, merged, state=state)
        return {"changed": len(guids), "guids": guids}

    def remove(body: dict[str, Any]) -> dict[str, Any]:
        guids = double.pick(body.get("fraction"), body.get("guids"))
        for guid in guids:
            double.remove(guid)
        return {"removed": len(guids), "guids": guids, "customers": len(double.customers)}

    def counts(_: dict[str, Any]) -> dict[str, Any]:
        return {"calls": dict(double.calls), "total": sum(double.calls.values())}

    def reset_counts(_: dict[str, Any]) -> dict[str, Any]:
        double.reset_counts()
        return {"reset": True}

    def published_count(_: dict[str, Any]) -> dict[str, Any]:
        return {"published": len(double.published), "errors": len(double.errors)}

    def technical_count(_: dict[str, Any]) -> dict[str, Any]:
        summary = double.summary()
        return {key: summary[key] for key in ("technical", "deployed", "destroyed")}

    def state(_: dict[str, Any]) -> dict[str, Any]:
        return double.summary()

    def config(body: dict[str, Any]) -> dict[str, Any]:
        if "publish_after" in body:
            double.set_publish_after(body["publish_after"])
        return double.summary()

    def deploy(_: dict[str, Any]) -> dict[str, Any]:
        return {"deployed": double.deploy_pending()}

    def clear_technical(_: dict[str, Any]) -> dict[str, Any]:
        cleared = len(double.technical)
        double.technical.clear()
        double._tech_by_guid.clear()
        double._undeployed.clear()
        double.destroyed.clear()
        double._technical_body = None
        return {"cleared": cleared}

    ops: dict[str, Callable[[dict[str, Any]], Any]] = {
        "add": add, "change": change, "remove": remove, "counts": counts,
        "reset_counts": reset_counts, "published_count": published_count,
        "technical_count": technical_count, "state": state, "config": config,
        "deploy": deploy, "clear_technical": clear_technical,
    }
    readable = {"counts", "published_count", "technical_count", "state"}
    routes = []
    for op, handler in ops.items():
        routes.append(web.post(f"/_bench/{op}", guarded(handler)))
        if op in readable:
            routes.append(web.get(f"/_bench/{op}", guarded(handler)))
    return routes


def make_app(double: Double) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.method != "POST":
            return web.Response(body=error_body(405, "The method is not allowed for the requested URL."),
                                status=405, content_type="application/json")
        status, body = double.handle(name, await request.read())
        return web.Response(body=body, status=status, content_type="application/json")

    async def elsewhere(request: web.Request) -> web.Response:
        return web.Response(body=error_body(400, f"{request.path} is not part of the open api definition"),
                            status=400, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(_control_routes(double))
    app.router.add_route("*", "/{name}", call)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


@dataclass
class DoubleServer:
    double: Double
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(double: Double, host: str = "127.0.0.1", port: int = 0) -> DoubleServer:
    """Serve `double` in the running event loop; port 0 picks a free one."""
    runner = web.AppRunner(make_app(double), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    return DoubleServer(double, runner, host, bound)


@contextlib.asynccontextmanager
async def serve(double: Double | None = None, host: str = "127.0.0.1", port: int = 0,
                **options: Any) -> AsyncIterator[DoubleServer]:
    """``async with serve(Double(...)) as server: server.url`` (in-process, for tests)."""
    server = await start(double if double is not None else Double(**options), host, port)
    try:
        yield server
    finally:
        await server.close()


# -- its own process ---------------------------------------------------------------------------


class DoubleProcess(ReadyChild):
    """``python -m bench.double`` in a child process, and a small client for its control API."""

    module = "bench.double"
    what = "the master double"

    def __init__(self, *, customers: int = 0, domains: bool = False,
                 publish_after: str = "immediately", port: int = 0, validate: bool = False,
                 host: str = "127.0.0.1", parameter_bytes: int = 0, parameter_piece: int = 4000):
        super().__init__([
            "--host", host, "--port", str(port), "--customers", str(customers),
            "--publish-after", publish_after, "--parameter-bytes", str(parameter_bytes),
            "--parameter-piece", str(parameter_piece),
        ] + (["--domains"] if domains else []) + (["--validate"] if validate else []))
        self.host = host
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120) -> Self:
        self.port = int(self.spawn(timeout_s)[0])
        return self

    def control(self, op: str, body: Mapping[str, Any] | None = None, *, method: str = "POST",
                timeout_s: float = 60) -> dict[str, Any]:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(
            f"{self.url}/_bench/{op}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())


async def _run(args: argparse.Namespace) -> None:
    double = Double(publish_after=args.publish_after, validate=args.validate, parameter_bytes=args.parameter_bytes,
                    parameter_piece=args.parameter_piece, with_domains=args.domains)
    double.populate(args.customers)
    double.list_body()  # serialise once before READY, so no list pays for it
    server = await start(double, args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.double", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--customers", type=int, default=0)
    parser.add_argument("--domains", action="store_true", help="give customers a custom_domain")
    parser.add_argument("--parameter-bytes", type=int, default=0,
                        help="pad each customer's parameters to about this many bytes of JSON")
    parser.add_argument("--parameter-piece", type=int, default=4000,
                        help="with unknown keys of this many characters each")
    parser.add_argument("--publish-after", choices=PUBLISH_MODES, default="immediately")
    parser.add_argument("--validate", action="store_true",
                        help="validate bodies against slapos.core's json_rpc.json (slower)")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
