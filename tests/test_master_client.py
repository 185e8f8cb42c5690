"""Unit tests of cdnreq.master.MasterClient against small aiohttp servers on loopback.

Each test starts its own fake master on 127.0.0.1 (a free port). The fake
master validates every request body against the OpenAPI description shipped
with slapos.core (slapos/proxy/json_rpc.json) and the test's own success
answers are validated against the 200 response schemas before being served,
so both sides of the conversation stay honest to the published API.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from jsonschema import Draft7Validator

from cdnreq.master import (
    ERROR,
    GET,
    LIST_HOSTED,
    PUBLISH,
    REQUEST,
    Listing,
    MasterClient,
    MasterError,
    MasterMalformed,
    MasterRejected,
    MasterUnavailable,
    TlsFiles,
)
from cdnreq.model import RequestedState

# --------------------------------------------------------------------------
# The API description shipped with slapos.core
# --------------------------------------------------------------------------


def _spec_path() -> Path:
    """slapos/proxy/json_rpc.json, found without importing slapos.proxy (Flask & co)."""
    spec = importlib.util.find_spec("slapos.proxy")
    assert spec is not None and spec.submodule_search_locations, "slapos.core is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "json_rpc.json"


SPEC: dict[str, Any] = json.loads(_spec_path().read_text(encoding="utf-8"))


def _operation(name: str) -> dict[str, Any]:
    return SPEC["paths"][f"/{name}"]["post"]


def request_schema(name: str) -> dict[str, Any]:
    return _operation(name)["requestBody"]["content"]["application/json"]["schema"]


def response_schema(name: str) -> dict[str, Any]:
    return _operation(name)["responses"]["200"]["content"]["application/json"]["schema"]


CALLS = (LIST_HOSTED, REQUEST, GET, PUBLISH, ERROR)
for _name in CALLS:
    Draft7Validator.check_schema(request_schema(_name))
    Draft7Validator.check_schema(response_schema(_name))
REQUEST_VALIDATORS = {name: Draft7Validator(request_schema(name)) for name in CALLS}
RESPONSE_VALIDATORS = {name: Draft7Validator(response_schema(name)) for name in CALLS}


def valid_answer(name: str, doc: Any) -> Any:
    """The test's own answer, checked against the 200 schema before it is served."""
    RESPONSE_VALIDATORS[name].validate(doc)
    return doc


SR_REQUESTER = "https://lab.example.org/software/cdn-requester/software.cfg"
SR_CDN = "https://lab.example.org/software/rapid-cdn/software.cfg"
REQUESTER_GUID = "SOFTINST-100"
CDN_HOST_GUID = "SOFTINST-200"
PARTITION_HEADER = "X-SlapPartition computer_id=COMP-1, computer_partition_id=slappart0"


def instance_doc(
    guid: str,
    *,
    title: str,
    software_release_uri: str = SR_CDN,
    software_type: str = "default",
    shared: bool = True,
    state: str = "started",
    parameters: dict[str, Any] | None = None,
    connection: dict[str, Any] | None = None,
    sla: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An instance as slapos.{post,get}.v0.software_instance answers it."""
    return {
        "computer_guid": "COMP-1",
        "instance_guid": guid,
        "root_instance_title": title,
        "title": title,
        "state": state,
        "compute_partition_id": "slappart1",
        "software_release_uri": software_release_uri,
        "software_type": software_type,
        "shared": shared,
        "processing_timestamp": 1_700_000_000,
        "access_status_message": "#access Instance correctly started",
        "parameters": parameters or {},
        "sla_parameters": sla or {},
        "connection_parameters": connection or {},
        "ip_list": [["slaptap0", "10.0.30.2"]],
        "full_ip_list": [["slaptap0", "10.0.30.2", "10.0.30.1", "255.255.255.0"]],
    }


def hosted_entry(
    guid: str,
    title: str,
    parameters: Any,
    *,
    state: Any = "started",
    software_type: str = "default",
) -> dict[str, Any]:
    return {
        "title": title,
        "instance_guid": guid,
        "software_type": software_type,
        "state": state,
        "parameters": parameters,
        "compute_partition_id": "slappart0",
        "software_release_uri": SR_REQUESTER,
    }


def error_body(status: int, title: str) -> dict[str, Any]:
    """An error the way the master answers it: {status, type, title}."""
    return {"status": status, "type": "error", "title": title}


# --------------------------------------------------------------------------
# A fake master on loopback
# --------------------------------------------------------------------------

Responder = Callable[[str, Any], "web.StreamResponse | Awaitable[web.StreamResponse]"]


@dataclass
class Received:
    name: str
    body: Any
    headers: dict[str, str]
    peercert: dict[str, Any] | None


class FakeMaster:
    """Accepts `POST /<call>`, checks the body against the spec, asks `respond`."""

    def __init__(self, respond: Responder):
        self.respond = respond
        self.received: list[Received] = []
        self.violations: list[str] = []
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        raw = await request.read()
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        self.received.append(Received(name, body, dict(request.headers), peercert))
        if request.content_type != "application/json":
            self.violations.append(f"{name}: content type {request.content_type!r}")
        validator = REQUEST_VALIDATORS.get(name)
        if validator is None:
            self.violations.append(f"{name}: not a call this client should make")
            return web.json_response(error_body(404, f"{name} not found"), status=404)
        errors = sorted(validator.iter_errors(body), key=str)
        if errors:
            self.violations.append(f"{name}: " + "; ".join(e.message for e in errors))
            # like the real master: 400 when the body does not match the spec
            return web.json_response(error_body(400, errors[0].message), status=400)
        result = self.respond(name, body)
        if inspect.isawaitable(result):
            result = await result
        return result


StartMaster = Callable[..., Awaitable[FakeMaster]]


@pytest.fixture
def release() -> asyncio.Event:
    """Set at teardown to free handlers that never answer."""
    return asyncio.Event()


@pytest.fixture
async def start_master(release: asyncio.Event):
    masters: list[FakeMaster] = []

    async def start(respond: Responder, *, ssl_context: ssl.SSLContext | None = None) -> FakeMaster:
        master = FakeMaster(respond)
        await master.server.start_server(ssl=ssl_context)
        masters.append(master)
        return master

    try:
        yield start
    finally:
        release.set()
        for master in masters:
            await master.server.close()


def answering(answers: dict[str, Any]) -> Responder:
    """Answer each call name with a fixed (already validated) JSON document."""

    def respond(name: str, body: Any) -> web.StreamResponse:
        return web.json_response(answers[name])

    return respond


def replying(response: Callable[[], web.StreamResponse]) -> Responder:
    """Answer every call with a fresh response from `response()`."""

    return lambda name, body: response()


@pytest.fixture
def refused_url():
    """A loopback port that is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------
# 1. Request bodies conform to the API description
# --------------------------------------------------------------------------


def test_spec_validators_catch_bad_bodies():
    """Guard for the checks below: the schemas do reject what they should."""
    assert not REQUEST_VALIDATORS[LIST_HOSTED].is_valid({"instance_guid": 1})
    assert not REQUEST_VALIDATORS[LIST_HOSTED].is_valid({"guid": "x"})
    assert not REQUEST_VALIDATORS[REQUEST].is_valid(
        {"title": "t", "software_release_uri": "u", "software_type": "d", "state": "gone"}
    )
    assert not REQUEST_VALIDATORS[REQUEST].is_valid(
        {"title": "t", "software_release_uri": "u", "software_type": "d", "sla_parameters": {"x": 1}}
    )
    assert not REQUEST_VALIDATORS[PUBLISH].is_valid(
        {"instance_guid": "x", "connection_parameters": {}}
    )
    assert not RESPONSE_VALIDATORS[PUBLISH].is_valid({"type": "failure", "title": "x"})


async def test_request_bodies_conform_to_spec(start_master: StartMaster):
    customer = "SOFTINST-301"
    title = f"cdnreq-{customer}"
    customer_params = {"custom_domain": "a.example.com", "url": "https://backend.example.com"}
    tech_connection = {
        "domain": "a.example.com",
        "replication_number": "1",
        "url": "https://a.example.com",
        "site_url": "https://a.example.com",
        "secure_access": "https://a.example.com",
        "backend-client-caucase-url": "http://[fd46::1]:8990",
    }
    answers = {
        LIST_HOSTED: valid_answer(
            LIST_HOSTED,
            {
                "result_list": [
                    hosted_entry(customer, "customer-a", customer_params),
                    hosted_entry("SOFTINST-302", "customer-b", {}, state="stopped"),
                ]
            },
        ),
        REQUEST: valid_answer(
            REQUEST,
            instance_doc(
                "SOFTINST-401",
                title=title,
                parameters=customer_params,
                connection=tech_connection,
                sla={"instance_guid": CDN_HOST_GUID},
            ),
        ),
        GET: valid_answer(
            GET,
            instance_doc(
                customer,
                title="customer-a",
                software_release_uri=SR_REQUESTER,
                parameters=customer_params,
                connection={"domain": "a.example.com"},
            ),
        ),
        PUBLISH: valid_answer(PUBLISH, {"type": "success", "title": "Connection parameters updated"}),
        ERROR: valid_answer(ERROR, {"type": "success", "title": "Error reported"}),
    }
    master = await start_master(answering(answers))

    async with MasterClient(url=master.url, timeout_s=5, partition_header=PARTITION_HEADER) as client:
        listing = await client.list_hosted(REQUESTER_GUID)
        started = await client.request_instance(
            title=title,
            software_release_uri=SR_CDN,
            software_type="default",
            parameters=customer_params,
            state="started",
            sla_parameters={"instance_guid": CDN_HOST_GUID},
        )
        destroyed = await client.request_instance(
            title=title,
            software_release_uri=SR_CDN,
            software_type="default",
            parameters=None,
            state="destroyed",
            sla_parameters={"instance_guid": CDN_HOST_GUID},
        )
        got = await client.get_instance(customer)
        assert await client.publish_connection(customer, {"url": "https://a.example.com"}) is None
        assert await client.publish_error(customer, "custom_domain is not allowed") is None

    assert master.violations == []
    assert [r.name for r in master.received] == [LIST_HOSTED, REQUEST, REQUEST, GET, PUBLISH, ERROR]
    bodies = [r.body for r in master.received]
    assert bodies[0] == {"instance_guid": REQUESTER_GUID}
    assert bodies[1] == {
        "title": title,
        "software_release_uri": SR_CDN,
        "software_type": "default",
        "shared": True,
        "state": "started",
        "sla_parameters": {"instance_guid": CDN_HOST_GUID},
        "parameters": customer_params,
    }
    assert bodies[2] == {
        "title": title,
        "software_release_uri": SR_CDN,
        "software_type": "default",
        "shared": True,
        "state": "destroyed",
        "sla_parameters": {"instance_guid": CDN_HOST_GUID},
    }
    assert bodies[3] == {"instance_guid": customer}
    assert bodies[4] == {
        "instance_guid": customer,
        "connection_parameter_dict": {"url": "https://a.example.com"},
    }
    assert bodies[5] == {"instance_guid": customer, "message": "custom_domain is not allowed"}
    for r in master.received:
        assert r.headers.get("Accept") == "application/json"

    # and the answers were read back as typed values
    assert isinstance(listing, Listing)
    assert [(i.guid, i.state, dict(i.parameters)) for i in listing.instances] == [
        (customer, RequestedState.STARTED, customer_params),
        ("SOFTINST-302", RequestedState.STOPPED, {}),
    ]
    assert listing.unusable == {} and listing.anonymous == 0
    assert (started.guid, started.connection_parameters, started.state) == ("SOFTINST-401", tech_connection, "started")
    assert destroyed == started  # the fake answers every request alike
    assert (got.guid, got.connection_parameters, got.state) == (customer, {"domain": "a.example.com"}, "started")


async def test_request_instance_non_shared_and_stopped_conforms(start_master: StartMaster):
    answer = valid_answer(
        REQUEST,
        instance_doc("SOFTINST-500", title="tech", shared=False, state="stopped"),
    )
    master = await start_master(answering({REQUEST: answer}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        got = await client.request_instance(
            title="tech",
            software_release_uri=SR_CDN,
            software_type="default",
            parameters={},
            state="stopped",
            sla_parameters={},
            shared=False,
        )
    assert master.violations == []
    assert master.received[0].body["shared"] is False
    assert master.received[0].body["parameters"] == {}
    assert (got.guid, got.connection_parameters, got.state) == ("SOFTINST-500", {}, "stopped")


async def test_instance_answer_without_guid_is_malformed(start_master: StartMaster):
    doc = instance_doc("SOFTINST-1", title="x")
    del doc["instance_guid"]
    assert not RESPONSE_VALIDATORS[GET].is_valid(doc)  # deliberately off-spec
    master = await start_master(answering({GET: doc}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed):
            await client.get_instance("SOFTINST-1")


async def test_instance_answer_with_non_dict_connection_is_malformed(start_master: StartMaster):
    doc = instance_doc("SOFTINST-1", title="x")
    doc["connection_parameters"] = "<xml/>"
    assert not RESPONSE_VALIDATORS[GET].is_valid(doc)
    master = await start_master(answering({GET: doc}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed):
            await client.get_instance("SOFTINST-1")


@pytest.mark.parametrize("value, named", [
    ("a.cdn.example\ud800", "lone surrogate"),
    (2**70, "64-bit"),  # orjson reads it as a float
    (float("nan"), "NaN"),
    ({"deep": 1e400}, "Infinity"),
])
async def test_instance_answer_whose_connection_cannot_be_published_is_malformed(
    start_master: StartMaster, value: Any, named: str
):
    """Issue 10 #1 #18 (attack): the technical CDN's connection parameters
    are published to the customer as they are; one that cannot be encoded
    (or that orjson would silently turn into null) made every publication
    fail with an error naming no field, or showed the customer null. The
    answer is malformed, naming the key and the value's problem."""
    doc = instance_doc("SOFTINST-1", title="x")
    doc["connection_parameters"] = {"domain": "ok.cdn.example", "site_url": value}
    master = await start_master(answering({GET: doc}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed) as caught:
            await client.get_instance("SOFTINST-1")
    assert "connection_parameters: site_url" in caught.value.detail
    assert named in caught.value.detail


# --------------------------------------------------------------------------
# 2. list_hosted parsing
# --------------------------------------------------------------------------


async def _list(start_master: StartMaster, answer: Any) -> Listing:
    master = await start_master(answering({LIST_HOSTED: answer}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        try:
            return await client.list_hosted(REQUESTER_GUID)
        finally:
            assert master.violations == []


async def test_list_hosted_sorts_out_unusable_and_anonymous(start_master: StartMaster):
    good = hosted_entry("SOFTINST-1", "good", {"url": "https://g.example"})
    no_state = {k: v for k, v in hosted_entry("SOFTINST-7", "no-state", {}).items() if k != "state"}
    no_params = {
        k: v for k, v in hosted_entry("SOFTINST-8", "no-params", {}).items() if k != "parameters"
    }
    entries = [
        good,
        hosted_entry("SOFTINST-2", "string-params", "<?xml version='1.0'?><instance/>"),
        hosted_entry("SOFTINST-3", "list-params", [["url", "https://x.example"]]),
        hosted_entry("SOFTINST-4", "null-params", None),
        hosted_entry("SOFTINST-5", "unknown-state", {}, state="start_requested"),
        hosted_entry("SOFTINST-6", "null-state", {}, state=None),
        no_state,
        no_params,
        {k: v for k, v in hosted_entry("x", "no-guid", {}).items() if k != "instance_guid"},
        hosted_entry("", "empty-guid", {}),
        hosted_entry(42, "int-guid", {}),  # type: ignore[arg-type]
        "not-an-entry",
    ]
    answer = {"result_list": entries}
    assert not RESPONSE_VALIDATORS[LIST_HOSTED].is_valid(answer)  # deliberately off-spec

    listing = await _list(start_master, answer)

    assert [(i.guid, i.state, dict(i.parameters)) for i in listing.instances] == [
        ("SOFTINST-1", RequestedState.STARTED, {"url": "https://g.example"}),
    ]
    # a missing state or parameters is unusable, not "started" or {} (issue 10, item 11)
    assert listing.unusable == {
        "SOFTINST-2": "parameters: not a JSON object (got a string)",
        "SOFTINST-3": "parameters: not a JSON object (got an array)",
        "SOFTINST-4": "parameters: not a JSON object (got null)",
        "SOFTINST-5": 'state: "start_requested" is not one of started, stopped, destroyed',
        "SOFTINST-6": "state: null is not one of started, stopped, destroyed",
        "SOFTINST-7": "state: missing from the listing",
        "SOFTINST-8": "parameters: missing from the listing",
    }
    assert listing.anonymous == 4


async def test_list_hosted_empty(start_master: StartMaster):
    listing = await _list(start_master, valid_answer(LIST_HOSTED, {"result_list": []}))
    assert listing == Listing(())


async def test_list_hosted_unhashable_state_is_unusable(start_master: StartMaster):
    answer = {
        "result_list": [
            hosted_entry("SOFTINST-1", "good", {}),
            hosted_entry("SOFTINST-2", "list-state", {}, state=["started"]),
            hosted_entry("SOFTINST-3", "dict-state", {}, state={"value": "started"}),
        ]
    }
    listing = await _list(start_master, answer)
    assert [i.guid for i in listing.instances] == ["SOFTINST-1"]
    assert list(listing.unusable) == ["SOFTINST-2", "SOFTINST-3"]


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"result": []},
        {"result_list": {"SOFTINST-1": {}}},
        {"result_list": None},
        {"result_list": "[]"},
    ],
    ids=["empty", "other-key", "dict", "null", "string"],
)
async def test_list_hosted_without_result_list_is_malformed(start_master: StartMaster, answer):
    with pytest.raises(MasterMalformed) as caught:
        await _list(start_master, answer)
    assert caught.value.call == LIST_HOSTED


# --------------------------------------------------------------------------
# 3. Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "title", "not_found"),
    [
        (400, "'parameters' is not of type 'object'", False),
        (401, "Unauthorized", False),
        (403, "Instance SOFTINST-9 not found", True),
        (404, "No such call", True),
        (409, "Conflict", False),
    ],
)
async def test_4xx_is_rejected_with_master_title(
    start_master: StartMaster, status: int, title: str, not_found: bool
):
    master = await start_master(
        replying(lambda: web.json_response(error_body(status, title), status=status))
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterRejected) as caught:
            await client.get_instance("SOFTINST-9")
    err = caught.value
    assert type(err) is MasterRejected
    assert err.status == status
    assert err.title == title
    assert err.not_found is not_found
    assert err.call == GET
    assert str(status) in str(err) and title in str(err)


async def test_4xx_without_json_keeps_an_excerpt(start_master: StartMaster):
    master = await start_master(
        replying(lambda: web.Response(status=400, text="<html><body>  Bad\n  request </body></html>"))
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterRejected) as caught:
            await client.get_instance("SOFTINST-9")
    assert caught.value.status == 400
    assert caught.value.title == "<html><body> Bad request </body></html>"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_unavailable_with_status(start_master: StartMaster, status: int):
    master = await start_master(
        replying(lambda: web.json_response(error_body(status, "Site error"), status=status))
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.list_hosted(REQUESTER_GUID)
    assert type(caught.value) is MasterUnavailable
    assert caught.value.status == status
    assert caught.value.title == "Site error"


async def test_200_html_is_malformed_with_excerpt(start_master: StartMaster):
    html = (
        "<!DOCTYPE html>\n<html>\n  <head><title>Login</title></head>\n"
        "  <body><form action='/login'>" + "x" * 500 + "</form></body>\n</html>\n"
    )
    master = await start_master(replying(lambda: web.Response(text=html, content_type="text/html")))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed) as caught:
            await client.get_instance("SOFTINST-1")
    err = caught.value
    assert err.status == 200
    assert "<!DOCTYPE html> <html> <head><title>Login</title></head>" in err.detail
    assert err.detail.endswith("...")
    assert len(err.detail) < 300  # an excerpt, not the page


async def test_200_json_array_is_malformed(start_master: StartMaster):
    master = await start_master(
        replying(lambda: web.json_response([{"instance_guid": "SOFTINST-1"}]))
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed) as caught:
            await client.list_hosted(REQUESTER_GUID)
    assert "not a JSON object" in caught.value.detail
    assert "SOFTINST-1" in caught.value.detail


async def test_master_that_never_answers_is_unavailable_within_timeout(
    start_master: StartMaster, release: asyncio.Event
):
    async def hang(name: str, body: Any) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    master = await start_master(hang)
    async with MasterClient(url=master.url, timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(MasterUnavailable) as caught:
            await client.get_instance("SOFTINST-1")
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0, elapsed
    assert caught.value.status is None
    assert "0.3 s" in caught.value.detail
    assert len(master.received) == 1  # it did reach the master


async def test_master_that_stalls_mid_body_is_unavailable(
    start_master: StartMaster, release: asyncio.Event
):
    async def stall(name: str, body: Any) -> web.StreamResponse:
        return _StallingResponse(release)

    master = await start_master(stall)
    async with MasterClient(url=master.url, timeout_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(MasterUnavailable):
            await client.get_instance("SOFTINST-1")
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0, elapsed


class _StallingResponse(web.StreamResponse):
    """Sends the status line, headers and half a body, then waits for teardown."""

    def __init__(self, release: asyncio.Event):
        super().__init__(status=200, headers={"Content-Type": "application/json"})
        self.content_length = 1000
        self._release = release

    async def prepare(self, request):  # type: ignore[override]
        writer = await super().prepare(request)
        await self.write(b'{"instance_guid": "SOFTINST-1", ')
        await self._release.wait()
        return writer


async def test_refused_connection_is_unavailable(refused_url: str):
    async with MasterClient(url=refused_url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.list_hosted(REQUESTER_GUID)
    assert caught.value.status is None
    assert caught.value.call == LIST_HOSTED


def test_error_hierarchy():
    for cls in (MasterUnavailable, MasterRejected, MasterMalformed):
        assert issubclass(cls, MasterError)


# --------------------------------------------------------------------------
# 4. The partition header
# --------------------------------------------------------------------------


@pytest.mark.parametrize("header", [PARTITION_HEADER, None], ids=["given", "absent"])
async def test_partition_header(start_master: StartMaster, header: str | None):
    answers = {
        LIST_HOSTED: valid_answer(LIST_HOSTED, {"result_list": []}),
        PUBLISH: valid_answer(PUBLISH, {"type": "success", "title": "Connection parameters updated"}),
    }
    master = await start_master(answering(answers))
    async with MasterClient(url=master.url, timeout_s=5, partition_header=header) as client:
        await client.list_hosted(REQUESTER_GUID)
        await client.publish_connection("SOFTINST-1", {"url": "https://a.example.com"})
    assert master.violations == []
    assert len(master.received) == 2
    for received in master.received:
        assert received.headers.get("Authorization") == header


# --------------------------------------------------------------------------
# 5. TLS with client certificates
# --------------------------------------------------------------------------


@dataclass
class TlsSetup:
    server_context: ssl.SSLContext
    files: TlsFiles  # client cert, key and the CA that signed the server
    other_ca_file: str  # a CA that signed nothing here


@pytest.fixture
def tls(tmp_path: Path) -> TlsSetup:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("slappart0.comp-1.example.org", common_name="SOFTINST-100")
    other_ca = trustme.CA()

    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED

    ca_file = tmp_path / "ca.crt"
    cert_file = tmp_path / "partition.crt"
    key_file = tmp_path / "partition.key"
    other_ca_file = tmp_path / "other-ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    other_ca.cert_pem.write_to_path(str(other_ca_file))
    return TlsSetup(
        server_context, TlsFiles(str(cert_file), str(key_file), str(ca_file)), str(other_ca_file)
    )


def _https(master: FakeMaster) -> str:
    url = master.url
    assert url.startswith("https://127.0.0.1:")
    return url


async def test_tls_with_client_certificate(start_master: StartMaster, tls: TlsSetup):
    answer = valid_answer(LIST_HOSTED, {"result_list": [hosted_entry("SOFTINST-1", "a", {})]})
    master = await start_master(answering({LIST_HOSTED: answer}), ssl_context=tls.server_context)
    async with MasterClient(url=_https(master), timeout_s=5, tls=tls.files) as client:
        listing = await client.list_hosted(REQUESTER_GUID)
    assert [i.guid for i in listing.instances] == ["SOFTINST-1"]
    assert master.violations == []
    (received,) = master.received
    assert received.peercert is not None
    assert ("DNS", "slappart0.comp-1.example.org") in received.peercert["subjectAltName"]
    subject = dict(pair for rdn in received.peercert["subject"] for pair in rdn)
    assert subject["commonName"] == "SOFTINST-100"


async def test_tls_without_client_certificate_is_unavailable(
    start_master: StartMaster, tls: TlsSetup
):
    answer = valid_answer(LIST_HOSTED, {"result_list": []})
    master = await start_master(answering({LIST_HOSTED: answer}), ssl_context=tls.server_context)
    no_cert = TlsFiles(ca_file=tls.files.ca_file)
    async with MasterClient(url=_https(master), timeout_s=5, tls=no_cert) as client:
        with pytest.raises(MasterUnavailable):
            await client.list_hosted(REQUESTER_GUID)
    assert master.received == []


async def test_tls_with_untrusted_server_is_unavailable(start_master: StartMaster, tls: TlsSetup):
    answer = valid_answer(LIST_HOSTED, {"result_list": []})
    master = await start_master(answering({LIST_HOSTED: answer}), ssl_context=tls.server_context)
    wrong_ca = TlsFiles(tls.files.cert_file, tls.files.key_file, tls.other_ca_file)
    async with MasterClient(url=_https(master), timeout_s=5, tls=wrong_ca) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.list_hosted(REQUESTER_GUID)
    assert "certificate" in caught.value.detail.lower()
    assert master.received == []


# --------------------------------------------------------------------------
# 6. observer and calls
# --------------------------------------------------------------------------


async def test_observer_and_calls(
    start_master: StartMaster, release: asyncio.Event, refused_url: str
):
    listing = valid_answer(LIST_HOSTED, {"result_list": []})

    async def respond(name: str, body: Any) -> web.StreamResponse:
        if name == LIST_HOSTED:
            return web.json_response(listing)
        if name == GET:
            return web.json_response(error_body(403, "not found"), status=403)
        if name == ERROR:
            return web.json_response(error_body(503, "busy"), status=503)
        await release.wait()  # PUBLISH never answers
        return web.json_response({})

    seen: list[tuple[str, str, float]] = []
    master = await start_master(respond)
    async with MasterClient(url=master.url, timeout_s=0.3, observer=lambda *a: seen.append(a)) as client:
        await client.list_hosted(REQUESTER_GUID)
        await client.list_hosted(REQUESTER_GUID)
        with pytest.raises(MasterRejected):
            await client.get_instance("SOFTINST-9")
        with pytest.raises(MasterUnavailable):
            await client.publish_error("SOFTINST-9", "boom")
        with pytest.raises(MasterUnavailable):
            await client.publish_connection("SOFTINST-9", {})
        calls = client.calls

    assert [(name, label) for name, label, _ in seen] == [
        (LIST_HOSTED, "200"),
        (LIST_HOSTED, "200"),
        (GET, "403"),
        (ERROR, "503"),
        (PUBLISH, "timeout"),
    ]
    for _, _, seconds in seen:
        assert isinstance(seconds, float) and 0 <= seconds < 2.0
    assert seen[-1][2] >= 0.25
    assert calls == {LIST_HOSTED: 2, GET: 1, ERROR: 1, PUBLISH: 1}

    # a transport failure is observed too, with its own label
    seen.clear()
    async with MasterClient(url=refused_url, timeout_s=5, observer=lambda *a: seen.append(a)) as client:
        with pytest.raises(MasterUnavailable):
            await client.get_instance("SOFTINST-1")
        assert client.calls == {GET: 1}
    assert [(n, label) for n, label, _ in seen] == [(GET, "error")]


# --------------------------------------------------------------------------
# Issue 10, items 1 and 2: hostile listings, the listing cap, unencodable bodies
# --------------------------------------------------------------------------


async def test_a_listing_orjson_refuses_is_read_entry_by_entry(start_master: StartMaster):
    body = (
        b'{"result_list":[' + json.dumps(hosted_entry("SOFTINST-1", "good", {"url": "https://g.example"})).encode()
        + b',{"instance_guid":"SOFTINST-2","parameters":{"x":"\xff"},"state":"started"}'
        + b',{"instance_guid":"SOFTINST-3","parameters":{"x":NaN},"state":"started"}]}'
    )
    master = await start_master(replying(lambda: web.Response(body=body, content_type="application/json")))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        listing = await client.list_hosted(REQUESTER_GUID)
    assert [i.guid for i in listing.instances] == ["SOFTINST-1", "SOFTINST-3"]
    assert listing.unusable == {"SOFTINST-2": "parameters: not valid UTF-8 at byte 6"}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_listing_larger_than_the_cap_fails_naming_cap_and_size(start_master: StartMaster, chunked: bool):
    entries = [hosted_entry(f"SOFTINST-{n}", f"c{n}", {"url": "https://x.example/" + "a" * 1000}) for n in range(300)]
    body = json.dumps({"result_list": entries}).encode()

    async def pieces():  # an async iterable body goes out chunked, without a Content-Length
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    def respond() -> web.StreamResponse:
        payload = pieces() if chunked else body
        return web.Response(body=payload, content_type="application/json")

    master = await start_master(replying(respond))
    async with MasterClient(url=master.url, timeout_s=5, max_listing_bytes=100_000) as client:
        with pytest.raises(MasterMalformed) as caught:
            await client.list_hosted(REQUESTER_GUID)
    detail = caught.value.detail
    assert "more than the 100000 allowed ([master].max_listing_bytes)" in detail
    if chunked:
        assert "read so far" in detail and int(detail.split(" bytes")[0].split()[-1]) > 100_000
    else:
        assert f"answer is too large: {len(body)} bytes announced" in detail


async def test_an_unencodable_body_is_a_typed_error_and_nothing_is_sent(start_master: StartMaster):
    from cdnreq.master import MasterUnencodable

    master = await start_master(answering({}))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        for value in ("\ud800", 2**70, [[[]]]):
            params = {"x": value} if not isinstance(value, list) else {"x": value}
            if isinstance(value, list):
                for _ in range(300):
                    params = {"x": params}
            with pytest.raises(MasterUnencodable) as caught:
                await client.request_instance(
                    title="t", software_release_uri=SR_CDN, software_type="default",
                    parameters=params, state="started", sla_parameters={},
                )
            assert isinstance(caught.value, MasterError) and "cannot be encoded as JSON" in caught.value.detail
    assert master.received == []
