"""The master's state and the five calls, independent of HTTP (see bench/double/__init__.py)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from bench.double.customers import Customers
from bench.double.wire import (
    CALLS, COMPUTER_GUID, ERROR, GET, LIST_HOSTED, PUBLISH, PUBLISH_MODES, REQUEST, REQUESTER_GUID,
    REQUESTER_PARTITION, REQUESTER_TITLE, TECHNICAL_GUID, TECHNICAL_PARTITION, Refused, dumps,
    error_body, loads, quick_check, schemas,
)

__all__ = ["Double"]


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
        self.requester_guid = requester_guid
        self.technical_guid = technical_guid
        self.clock = clock
        self.book = Customers(with_domains=with_domains, parameter_bytes=parameter_bytes,
                              parameter_piece=parameter_piece)
        self.customers = self.book.entries  # guid -> listing entry (the same dict)
        self.technical: dict[str, dict[str, Any]] = {}
        self.published: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}
        self.destroyed: Counter = Counter()  # technical title -> destroy requests
        self.calls: Counter = Counter()
        self._tech_by_guid: dict[str, str] = {}
        self._undeployed: set[str] = set()  # titles waiting for a read (next_read)
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
            request, answer = schemas(name)
            self._validators[name] = (Draft7Validator(request), Draft7Validator(answer))

    def set_publish_after(self, mode: str) -> None:
        if mode not in PUBLISH_MODES:
            raise ValueError(f"publish_after must be one of {PUBLISH_MODES}, not {mode!r}")
        self.publish_after = mode

    # -- customers (kept, with the listing's cached body, by bench/double/customers.py) --------

    @property
    def next_index(self) -> int:
        return self.book.next_index

    def add(self, guid: str, parameters: Mapping[str, Any], **entry: str | None) -> None:
        """A customer orders a shared instance hosted by the requester (replaces one with that guid)."""
        self.book.add(guid, parameters, **entry)

    def change(
        self, guid: str, parameters: Mapping[str, Any] | None = None, *, state: str | None = None
    ) -> None:
        """New parameters and/or requested state for a customer (KeyError if unknown)."""
        self.book.change(guid, parameters, state=state)

    def remove(self, guid: str) -> bool:
        """The customer's instance is gone from the master (with what was published to it)."""
        if not self.book.remove(guid):
            return False
        self.published.pop(guid, None)
        self.errors.pop(guid, None)
        return True

    def populate(self, count: int, start: int | None = None, with_domains: bool | None = None) -> list[str]:
        """Add `count` deterministic customers SOFTINST-<start>..; returns their guids."""
        return self.book.populate(count, start, with_domains)

    def bump(self, guid: str) -> dict[str, Any]:
        """Change a customer's backend URL to a new revision; returns the new parameters."""
        return self.book.bump(guid)

    def pick(self, fraction: float | None = None, guids: Iterable[str] | None = None) -> list[str]:
        """Known guids among `guids`, or round(fraction * N) customers spread evenly."""
        return self.book.pick(fraction, guids)

    def invalidate(self) -> None:
        """Forget every cached serialisation (after mutating `customers` directly)."""
        self.book.invalidate()

    def list_body(self) -> bytes:
        """The serialised answer listing the customers (rebuilt only after a change)."""
        return self.book.body()

    def reset_counts(self) -> None:
        self.calls.clear()

    # -- cached bodies ----------------------------------------------------------------------

    def technical_list_body(self) -> bytes:
        if self._technical_body is None:
            self._technical_body = dumps({"result_list": [
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
            body = loads(raw) if raw else None
        except ValueError:
            return 400, error_body(400, "Failed to decode JSON object")
        if not isinstance(body, dict):
            return 400, error_body(400, f"{body!r} is not of type 'object'")
        try:
            if self._validators is None:
                quick_check(name, body)
                return handler(body)
            request_validator, answer_validator = self._validators[name]
            if (error := best_match(request_validator.iter_errors(body))) is not None:
                raise Refused(400, error.message)
            status, answer = handler(body)
            errors = answer_validator.iter_errors(json.loads(answer)) if status == 200 else ()
            if (error := best_match(errors)) is not None:
                raise Refused(500, error.message)  # as slapproxy: a wrong answer is a 500
            return status, answer
        except Refused as refused:
            return refused.status, error_body(refused.status, refused.title)

    def _list_hosted(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        if guid == self.requester_guid:
            return 200, self.list_body()
        if guid == self.technical_guid:
            return 200, self.technical_list_body()
        raise Refused(403, f"No software instance {guid} found.")

    def _request(self, body: dict[str, Any]) -> tuple[int, bytes]:
        if not body.get("shared", False):
            raise Refused(403, "The master double only hosts shared instances.")
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
            return 200, dumps(doc)
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
        return 200, dumps(doc)

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

    def clear_technical(self) -> int:
        """Forget every technical entry (between two baselines); returns how many there were."""
        cleared = len(self.technical)
        self.technical.clear()
        self._tech_by_guid.clear()
        self._undeployed.clear()
        self.destroyed.clear()
        self._technical_body = None
        return cleared

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
            return 200, dumps(doc)
        entry = self.customers.get(guid)
        if entry is not None:
            return 200, dumps({
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
        raise Refused(403, f"No software instance {guid} found.")

    def _publish(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        parameters = body["connection_parameter_dict"]
        if guid in self.customers:
            self.published[guid] = parameters
        elif (title := self._tech_by_guid.get(guid)) is not None:  # the CDN publishing
            self.technical[title]["connection_parameters"] = parameters
            self._undeployed.discard(title)
        else:
            raise Refused(403, f"No software instance {guid} found.")
        return 200, b'{"type":"success","title":"Updated"}'

    def _error(self, body: dict[str, Any]) -> tuple[int, bytes]:
        guid = body["instance_guid"]
        if guid not in self.customers and guid not in self._tech_by_guid:
            raise Refused(403, f"No software instance {guid} found.")
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
