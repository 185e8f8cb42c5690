"""The master's wire: the five calls, their names and bodies, the spec, the errors.

Names, guids and shapes are those of slapos.core's ``slapos/proxy/json_rpc.json``;
errors are ``{status, type, title}`` as the real master sends them. The
cheap body checks (:func:`quick_check`) stand in for full validation when it
is off, so a bad body is a 400 and never a crash.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

try:  # optional, not a dependency
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

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
    loads: Callable[[bytes], Any] = _orjson.loads

    def dumps(value: Any) -> bytes:
        return _orjson.dumps(value)
else:
    loads = json.loads
    _encode = json.JSONEncoder(separators=(",", ":")).encode

    def dumps(value: Any) -> bytes:
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


def schemas(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request body schema, 200 answer schema) of one call."""
    operation = load_spec()["paths"]["/" + name]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return request, answer

# -- errors --------------------------------------------------------------------------------


class Refused(Exception):
    def __init__(self, status: int, title: str):
        super().__init__(title)
        self.status = status
        self.title = title


def error_body(status: int, title: str) -> bytes:
    """`{status, type, title}`, as the real master (werkzeug's reason phrases)."""
    return dumps({"status": status, "type": HTTPStatus(status).phrase, "title": title})


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


def quick_check(name: str, body: dict[str, Any]) -> None:
    for key, kind in _REQUIRED[name]:
        if key not in body:
            raise Refused(400, f"'{key}' is a required property")
        if not isinstance(body[key], kind):
            raise Refused(400, f"{body[key]!r} is not of type '{_TYPE_NAMES[kind]}'")
    if name == REQUEST:
        if not isinstance(body.get("parameters", {}), dict):
            raise Refused(400, f"{body['parameters']!r} is not of type 'object'")
        if not isinstance(body.get("sla_parameters", {}), dict):
            raise Refused(400, f"{body['sla_parameters']!r} is not of type 'object'")
        if not isinstance(body.get("shared", False), bool):
            raise Refused(400, f"{body['shared']!r} is not of type 'boolean'")
        if body.get("state", "started") not in STATES:
            raise Refused(400, f"{body['state']!r} is not one of {list(STATES)!r}")
        if len(body["title"]) > 200:
            raise Refused(400, f"{body['title']!r} is too long")
