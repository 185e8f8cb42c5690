"""Unit tests of bench/double/, the master double used by the benchmarks only.

The double is served in-process on a free 127.0.0.1 port. Every answer of
the API is checked against slapos.core's OpenAPI description
(slapos/proxy/json_rpc.json): a 200 against the call's 200 response schema
(jsonschema Draft 7), a 4xx against the real master's error shape
``{status, type, title}``. cdnreq's own MasterClient is run against it too,
since it is the client the benchmark measures.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft7Validator

from bench.double import (
    ERROR,
    GET,
    LIST_HOSTED,
    PUBLISH,
    REQUEST,
    REQUESTER_GUID,
    TECHNICAL_GUID,
    Double,
    DoubleProcess,
    DoubleServer,
    customer_guid,
    customer_parameters,
    serve,
)
from bench.baselines import ceiling
from cdnreq.master import MasterClient, MasterRejected

SR = "http://sr.invalid/rapid-cdn/software.cfg"


def _spec() -> dict[str, Any]:
    spec = importlib.util.find_spec("slapos.proxy")
    assert spec is not None and spec.submodule_search_locations, "slapos.core is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "json_rpc.json"
    return json.loads(path.read_text(encoding="utf-8"))


SPEC = _spec()
ANSWER_SCHEMAS = {
    name: SPEC["paths"]["/" + name]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    for name in (LIST_HOSTED, REQUEST, GET, PUBLISH, ERROR)
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "type", "title"],
    "additionalProperties": False,
    "properties": {
        "status": {"type": "integer", "minimum": 400, "maximum": 499},
        "type": {"type": "string", "minLength": 1},
        "title": {"type": "string", "minLength": 1},
    },
}
INSTANCE_KEYS = {
    "computer_guid", "instance_guid", "root_instance_title", "title", "state",
    "compute_partition_id", "software_release_uri", "software_type", "shared",
    "processing_timestamp", "access_status_message", "parameters", "sla_parameters",
    "connection_parameters", "ip_list", "full_ip_list",
}


def _check(name: str, status: int, answer: Any) -> None:
    """Every answer: the 200 schema of the call, or the master's error shape."""
    if status == 200:
        Draft7Validator(ANSWER_SCHEMAS[name]).validate(answer)
    else:
        Draft7Validator(ERROR_SCHEMA).validate(answer)
        assert answer["status"] == status


class Api:
    """A raw JSON client that checks each answer against the spec."""

    def __init__(self, server: DoubleServer, session: aiohttp.ClientSession):
        self.server, self.session = server, session

    async def raw(self, name: str, data: bytes) -> tuple[int, Any]:
        async with self.session.post(f"{self.server.url}/{name}", data=data,
                                     headers={"Content-Type": "application/json"}) as response:
            assert response.content_type == "application/json"
            return response.status, json.loads(await response.read())

    async def call(self, name: str, body: Any, expect: int = 200) -> Any:
        status, answer = await self.raw(name, json.dumps(body).encode())
        assert status == expect, answer
        if name in ANSWER_SCHEMAS:
            _check(name, status, answer)
        else:
            Draft7Validator(ERROR_SCHEMA).validate(answer)
        return answer

    async def control(self, op: str, body: dict | None = None, method: str = "POST") -> Any:
        async with self.session.request(method, f"{self.server.url}/_bench/{op}",
                                        json=body if method == "POST" else None) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    # shortcuts
    async def listing(self, guid: str = REQUESTER_GUID) -> list[dict]:
        return (await self.call(LIST_HOSTED, {"instance_guid": guid}))["result_list"]

    async def request(self, title: str, parameters: dict | None = None, state: str = "started",
                      **extra: Any) -> dict:
        body = {"title": title, "software_release_uri": SR, "software_type": "default",
                "shared": True, "state": state, "sla_parameters": {}, **extra}
        if parameters is not None:
            body["parameters"] = parameters
        answer = await self.call(REQUEST, body)
        assert set(answer) == INSTANCE_KEYS
        return answer

    async def get(self, guid: str, expect: int = 200) -> dict:
        return await self.call(GET, {"instance_guid": guid}, expect)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _api(session: aiohttp.ClientSession, **options: Any) -> AsyncIterator[Api]:
    double = Double(**options)
    double.populate(5)
    async with serve(double) as server:
        yield Api(server, session)


@pytest.fixture(params=[False, True], ids=["quick-checks", "validate"])
async def api(request, session) -> AsyncIterator[Api]:
    async for api in _api(session, validate=request.param):
        yield api


@pytest.fixture
async def api_next_read(session) -> AsyncIterator[Api]:
    async for api in _api(session, publish_after="next_read", validate=True):
        yield api


@pytest.fixture
async def api_never(session) -> AsyncIterator[Api]:
    async for api in _api(session, publish_after="never", validate=True):
        yield api


# -- the listing ---------------------------------------------------------------------------


async def test_lists_the_hosted_customers(api: Api) -> None:
    entries = await api.listing()
    assert [e["instance_guid"] for e in entries] == [customer_guid(i) for i in range(5)]
    assert entries[3] == {
        "title": "cdn-entry-3", "instance_guid": "SOFTINST-3", "software_type": "default",
        "state": "started", "parameters": {"url": "https://backend-3.example"},
        "compute_partition_id": "slappart0",
    }
    assert await api.listing(TECHNICAL_GUID) == []
    answer = await api.call(LIST_HOSTED, {"instance_guid": "SOFTINST-404"}, expect=403)
    assert answer["type"] == "Forbidden" and "SOFTINST-404" in answer["title"]


async def test_customer_changes_show_in_the_listing(api: Api) -> None:
    double: Double = api.server.double
    await api.listing()  # cache the body, then change under it
    double.add("SOFTINST-99", {"url": "https://new.example", "custom_domain": "new.example"})
    double.change("SOFTINST-1", {"url": "https://changed.example"})
    double.change("SOFTINST-2", state="stopped")
    assert double.remove("SOFTINST-0") and not double.remove("SOFTINST-0")
    entries = {e["instance_guid"]: e for e in await api.listing()}
    assert list(entries) == ["SOFTINST-1", "SOFTINST-2", "SOFTINST-3", "SOFTINST-4", "SOFTINST-99"]
    assert entries["SOFTINST-99"]["parameters"]["custom_domain"] == "new.example"
    assert entries["SOFTINST-1"]["parameters"] == {"url": "https://changed.example"}
    assert entries["SOFTINST-2"]["state"] == "stopped"
    with pytest.raises(KeyError):
        double.change("SOFTINST-0", {})
    # Mutating the dict directly needs invalidate().
    double.customers["SOFTINST-3"]["parameters"] = {"url": "https://direct.example"}
    double.invalidate()
    entries = {e["instance_guid"]: e for e in await api.listing()}
    assert entries["SOFTINST-3"]["parameters"] == {"url": "https://direct.example"}


def test_populate_is_deterministic() -> None:
    double = Double(with_domains=True)
    assert double.populate(3) == ["SOFTINST-0", "SOFTINST-1", "SOFTINST-2"]
    assert double.populate(2) == ["SOFTINST-3", "SOFTINST-4"]
    assert double.customers["SOFTINST-4"]["parameters"] == {
        "url": "https://backend-4.example", "custom_domain": "www.d4.example"}
    assert customer_parameters(7) == {"url": "https://backend-7.example"}
    assert double.pick(0.4) == ["SOFTINST-0", "SOFTINST-2"]
    assert double.pick(guids=["SOFTINST-1", "nope"]) == ["SOFTINST-1"]
    with pytest.raises(ValueError):
        Double(publish_after="later")


# -- requests of technical entries --------------------------------------------------------------


async def test_request_update_get_destroy(api: Api) -> None:
    double: Double = api.server.double
    first = await api.request("cdnreq-SOFTINST-1", {"url": "https://backend-1.example"},
                              sla_parameters={"computer_guid": "COMP-9"})
    assert first["shared"] is True and first["state"] == "started"
    assert first["title"] == "cdnreq-SOFTINST-1"
    assert first["sla_parameters"] == {"computer_guid": "COMP-9"}
    assert first["connection_parameters"] == {  # publish_after="immediately"
        "domain": "cdnreq-softinst-1.cdn.example", "url": "https://cdnreq-softinst-1.cdn.example",
        "secure_access": "https://cdnreq-softinst-1.cdn.example"}
    guid = first["instance_guid"]
    assert await api.get(guid) == first
    listed = await api.listing(TECHNICAL_GUID)
    assert [(e["title"], e["instance_guid"]) for e in listed] == [("cdnreq-SOFTINST-1", guid)]

    # Same title: an update of the same entry, same guid.
    update = await api.request("cdnreq-SOFTINST-1",
                               {"url": "https://b.example", "custom_domain": "www.shop.example"})
    assert update["instance_guid"] == guid
    assert update["connection_parameters"]["domain"] == "www.shop.example"
    assert (await api.listing(TECHNICAL_GUID))[0]["parameters"]["custom_domain"] == "www.shop.example"
    stopped = await api.request("cdnreq-SOFTINST-1", {"url": "https://b.example"}, state="stopped")
    assert stopped["state"] == "stopped" and double.technical["cdnreq-SOFTINST-1"]["state"] == "stopped"

    # Destroy: gone from the host's list, unknown to get.
    gone = await api.request("cdnreq-SOFTINST-1", {"url": "https://b.example"}, state="destroyed")
    assert gone["state"] == "destroyed" and gone["instance_guid"] == guid
    assert await api.listing(TECHNICAL_GUID) == []
    answer = await api.get(guid, expect=403)
    assert answer["type"] == "Forbidden"
    assert double.destroyed["cdnreq-SOFTINST-1"] == 1 and "cdnreq-SOFTINST-1" not in double.technical
    # Destroying again (or something never requested) is accepted.
    assert (await api.request("cdnreq-SOFTINST-1", None, state="destroyed"))["state"] == "destroyed"
    # A request without parameters is an empty parameter dict.
    assert (await api.request("cdnreq-bare"))["parameters"] == {}
    assert double.calls[REQUEST] == 6 and double.calls[GET] == 2


async def test_only_shared_instances(api: Api) -> None:
    body = {"title": "x", "software_release_uri": SR, "software_type": "default", "shared": False}
    answer = await api.call(REQUEST, body, expect=403)
    assert answer["status"] == 403


async def test_publish_after_next_read(api_next_read: Api) -> None:
    api = api_next_read
    answer = await api.request("t1", {"url": "https://b.example"})
    assert answer["connection_parameters"] == {}
    # Requested again before anyone read it: still nothing.
    assert (await api.request("t1", {"url": "https://b.example"}))["connection_parameters"] == {}
    read = await api.get(answer["instance_guid"])
    assert read["connection_parameters"]["domain"] == "t1.cdn.example"
    # An update keeps the old answer until the next read, which has the new one.
    update = await api.request("t1", {"url": "https://b.example", "custom_domain": "c.example"})
    assert update["connection_parameters"]["domain"] == "t1.cdn.example"
    assert (await api.get(answer["instance_guid"]))["connection_parameters"]["domain"] == "c.example"
    # deploy_pending publishes without a read.
    await api.request("t2", {"url": "https://b.example"})
    assert api.server.double.deploy_pending() == 1
    assert api.server.double.technical["t2"]["connection_parameters"]["domain"] == "t2.cdn.example"


async def test_publish_after_never(api_never: Api) -> None:
    api = api_never
    answer = await api.request("t1", {"url": "https://b.example"})
    assert answer["connection_parameters"] == {}
    assert (await api.get(answer["instance_guid"]))["connection_parameters"] == {}
    # The technical CDN publishing by hand is what fills it.
    await api.call(PUBLISH, {"instance_guid": answer["instance_guid"],
                             "connection_parameter_dict": {"domain": "x"}})
    assert (await api.get(answer["instance_guid"]))["connection_parameters"] == {"domain": "x"}


# -- publications to the customers ------------------------------------------------------


async def test_publish_and_error_are_recorded(api: Api) -> None:
    double: Double = api.server.double
    answer = await api.call(PUBLISH, {"instance_guid": "SOFTINST-2",
                                      "connection_parameter_dict": {"message": "deploying"}})
    assert answer["type"] == "success"
    answer = await api.call(ERROR, {"instance_guid": "SOFTINST-3", "message": "bad url"})
    assert answer["type"] == "success"
    assert double.published == {"SOFTINST-2": {"message": "deploying"}}
    assert double.errors == {"SOFTINST-3": "bad url"}
    # The customer's instance, read back, carries what was published.
    customer = await api.get("SOFTINST-2")
    assert customer["connection_parameters"] == {"message": "deploying"}
    assert (await api.get("SOFTINST-3"))["access_status_message"] == "bad url"
    # Unknown instances are refused like on the master.
    await api.call(PUBLISH, {"instance_guid": "SOFTINST-404", "connection_parameter_dict": {}},
                   expect=403)
    await api.call(ERROR, {"instance_guid": "SOFTINST-404", "message": "x"}, expect=403)
    # A removed customer takes its publications with it.
    double.remove("SOFTINST-2")
    assert double.published == {}


# -- bad calls ------------------------------------------------------------------------


async def test_bad_calls_are_400(api: Api) -> None:
    for name, body in [
        (LIST_HOSTED, {}),
        (GET, {"instance_guid": 12}),
        (PUBLISH, {"instance_guid": "SOFTINST-1"}),
        (PUBLISH, {"instance_guid": "SOFTINST-1", "connection_parameter_dict": []}),
        (ERROR, {"instance_guid": "SOFTINST-1"}),
        (REQUEST, {"title": "t", "software_release_uri": SR}),
        (REQUEST, {"title": "t", "software_release_uri": SR, "software_type": "d", "state": "gone"}),
        (REQUEST, {"title": "t", "software_release_uri": SR, "software_type": "d", "shared": "yes"}),
        (REQUEST, {"title": "t" * 201, "software_release_uri": SR, "software_type": "d"}),
        (REQUEST, {"title": "t", "software_release_uri": SR, "software_type": "d",
                   "parameters": "url=x"}),
        (LIST_HOSTED, ["not", "an", "object"]),
    ]:
        answer = await api.call(name, body, expect=400)
        assert answer["type"] == "Bad Request", (name, body)
    status, answer = await api.raw(GET, b"{not json")
    assert status == 400
    _check(GET, status, answer)
    for name in ("slapos.put.v0.software_instance_bang", "nothing", "_bench/unknown"):
        answer = await api.call(name, {"instance_guid": "x"}, expect=400)
        assert "open api" in answer["title"]
    assert api.server.double.technical == {}


async def test_full_validation_is_opt_in(session) -> None:
    extra = {"instance_guid": REQUESTER_GUID, "unexpected": 1}
    async for api in _api(session, validate=True):
        answer = await api.call(LIST_HOSTED, extra, expect=400)
        assert "unexpected" in answer["title"]
        body = {"title": "t", "software_release_uri": SR, "software_type": "d", "shared": True,
                "sla_parameters": {"retention_delay": "soon"}}
        await api.call(REQUEST, body, expect=400)
    async for api in _api(session):  # default: cheap checks only
        assert not api.server.double.validate
        assert len((await api.call(LIST_HOSTED, extra))["result_list"]) == 5


# -- control API --------------------------------------------------------------------------------


async def test_control_api(api: Api) -> None:
    double: Double = api.server.double
    assert (await api.control("add", {"count": 5, "with_domains": True}))["customers"] == 10
    assert double.customers["SOFTINST-9"]["parameters"]["custom_domain"] == "www.d9.example"
    added = await api.control("add", {"count": 2, "start": 1000})
    assert added == {"added": 2, "first": "SOFTINST-1000", "customers": 12}

    before = {e["instance_guid"]: e for e in await api.listing()}
    changed = await api.control("change", {"fraction": 0.25})
    assert changed["changed"] == 3
    after = {e["instance_guid"]: e for e in await api.listing()}
    assert {g for g in after if after[g] != before[g]} == set(changed["guids"])
    assert after[changed["guids"][0]]["parameters"]["url"].endswith("/r1")
    await api.control("change", {"guids": [changed["guids"][0]]})
    assert double.customers[changed["guids"][0]]["parameters"]["url"].endswith("/r2")
    await api.control("change", {"guids": ["SOFTINST-5"], "parameters": {"enable_cache": "true"},
                                 "state": "stopped"})
    assert double.customers["SOFTINST-5"]["state"] == "stopped"
    assert double.customers["SOFTINST-5"]["parameters"]["enable_cache"] == "true"

    removed = await api.control("remove", {"guids": ["SOFTINST-0", "SOFTINST-nope"]})
    assert removed["removed"] == 1 and removed["customers"] == 11
    removed = await api.control("remove", {"fraction": 0.5})
    assert removed["removed"] == 6 and len(await api.listing()) == 5

    await api.request("t1", {"url": "https://b.example"})
    await api.request("t2", {"url": "https://b.example"})
    await api.request("t2", None, state="destroyed")
    await api.call(PUBLISH, {"instance_guid": next(iter(double.customers)),
                             "connection_parameter_dict": {"a": "b"}})
    counts = await api.control("counts", method="GET")
    assert counts["calls"][REQUEST] == 3 and counts["calls"][PUBLISH] == 1
    assert counts["total"] == sum(counts["calls"].values())
    assert await api.control("published_count", method="GET") == {"published": 1, "errors": 0}
    assert await api.control("technical_count") == {"technical": 1, "deployed": 1, "destroyed": 1}
    assert await api.control("reset_counts") == {"reset": True}
    assert (await api.control("counts"))["calls"] == {}
    config = await api.control("config", {"publish_after": "never"})
    assert config["publish_after"] == "never" and double.publish_after == "never"
    assert (await api.control("clear_technical"))["cleared"] == 1
    assert await api.listing(TECHNICAL_GUID) == []
    async with api.session.post(f"{api.server.url}/_bench/change", json={"fraction": 2}) as r:
        assert r.status == 400
        Draft7Validator(ERROR_SCHEMA).validate(await r.json())


# -- the ceiling, and cdnreq's client -------------------------------------------------------


async def test_ceiling_rate(api: Api) -> None:
    result = await ceiling(api.server.url, 50, 8)
    assert result["requests"] == 50 and result["seconds"] > 0 and result["rate"] > 0
    assert len(api.server.double.technical) == 50
    assert api.server.double.calls[REQUEST] == 50


async def test_master_client_against_the_double(api: Api) -> None:
    double: Double = api.server.double
    async with MasterClient(api.server.url, timeout_s=5) as client:
        listing = await client.list_hosted(REQUESTER_GUID)
        assert [i.guid for i in listing.instances] == [customer_guid(i) for i in range(5)]
        assert listing.unusable == {} and listing.anonymous == 0
        answer = await client.request_instance(
            title="cdnreq-SOFTINST-0", software_release_uri=SR, software_type="default",
            parameters={"url": "https://backend-0.example"}, state="started",
            sla_parameters={},
        )
        assert answer.connection_parameters["url"] == "https://cdnreq-softinst-0.cdn.example"
        again = await client.get_instance(answer.guid)
        assert again.guid == answer.guid
        assert again.connection_parameters == answer.connection_parameters
        await client.publish_connection("SOFTINST-0", {"url": "https://x.example"})
        await client.publish_error("SOFTINST-1", "refused")
        with pytest.raises(MasterRejected) as rejected:
            await client.get_instance("unknown___x___1")
        assert rejected.value.not_found and "unknown___x___1" in rejected.value.title
        assert client.calls[REQUEST] == 1
    assert double.published == {"SOFTINST-0": {"url": "https://x.example"}}
    assert double.errors == {"SOFTINST-1": "refused"}
    assert len(await api.listing(TECHNICAL_GUID)) == 1


# -- its own process ----------------------------------------------------------------------------


def test_runs_in_its_own_process() -> None:
    with DoubleProcess(customers=20, domains=True, publish_after="next_read") as process:
        assert process.port
        state = process.control("state", method="GET")
        assert state["customers"] == 20 and state["publish_after"] == "next_read"
        process.control("remove", {"fraction": 0.5})
        assert process.control("state")["customers"] == 10
    assert process.process is None
