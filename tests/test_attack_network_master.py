"""The master's HTTP on a hostile network: redirects, 3xx answers, gzip bombs.

Real aiohttp servers on loopback (the fake master of test_master_client,
which checks every body against the API description), real MasterClient.

The master's API never redirects. A client that follows a redirect turns a
write into something else: a 301/302/303 turns the POST into a GET of
another URL, whose answer would be taken for the write's (a publication
never made recorded as made); a 307/308 sends the body again, customers'
parameters included, to whatever host the Location names, over http:// if it
says so. And any answer below 400 was taken for a success, a 3xx included.
"""

from __future__ import annotations

import gzip
import resource
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cdnreq.master import MasterClient, MasterMalformed, MasterTooLarge, MasterUnavailable
from test_master_client import (  # noqa: F401  (fixtures)
    PUBLISH,
    REQUEST,
    REQUESTER_GUID,
    SR_CDN,
    StartMaster,
    hosted_entry,
    release,
    start_master,
    valid_answer,
)

SUCCESS = {"type": "success", "title": "Connection parameters updated"}


class Elsewhere:
    """Another server on loopback that answers anything with 200 `{...}`."""

    def __init__(self, answer: Any):
        self.answer = answer
        self.hits: list[tuple[str, str, bytes]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.method, request.path, await request.read()))
        return web.json_response(self.answer)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def elsewhere():
    servers: list[Elsewhere] = []

    async def start(answer: Any) -> Elsewhere:
        server = Elsewhere(answer)
        await server.server.start_server()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.server.close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirected_publication_is_not_taken_for_one(start_master: StartMaster, elsewhere, status: int):
    other = await elsewhere(SUCCESS)
    master = await start_master(
        lambda name, body: web.Response(status=status, headers={"Location": other.url("/" + name)})
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.publish_connection("SOFTINST-1", {"password": "customer-secret"})
    assert caught.value.status == status
    assert str(status) in caught.value.detail
    assert other.hits == []  # nothing sent anywhere else: not the customer's parameters, not a GET
    assert len(master.received) == 1


async def test_a_redirect_to_plain_http_does_not_carry_the_request(start_master: StartMaster, elsewhere):
    """A request for an entry carries the customer's parameters (private keys):
    a 307 must not send them to another host."""
    other = await elsewhere({})
    master = await start_master(
        lambda name, body: web.Response(status=307, headers={"Location": other.url("/steal")})
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable):
            await client.request_instance(
                title="cdn-SOFTINST-1", software_release_uri=SR_CDN, software_type="default",
                parameters={"ssl_key": "-----BEGIN PRIVATE KEY-----"}, state="started", sla_parameters={},
            )
    assert other.hits == []


@pytest.mark.parametrize("status", [300, 304, 399])
async def test_a_3xx_with_a_body_is_no_listing(start_master: StartMaster, status: int):
    """A 3xx without a Location is not followed: its body is not the answer."""
    body = {"result_list": [hosted_entry("SOFTINST-1", "c1", {"url": "https://x.example"})]}
    master = await start_master(lambda name, body_: web.json_response(body, status=status))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterUnavailable) as caught:
            await client.list_hosted(REQUESTER_GUID)
    assert caught.value.status == status


async def test_a_gzip_bomb_is_cut_at_the_cap_after_decompression(start_master: StartMaster):
    """1 MiB on the wire, 1 GiB decompressed: the instance answer's cap
    (16 MiB) applies to what is decompressed, and memory stays bounded."""
    bomb = gzip.compress(b'{"instance_guid": "SOFTINST-1", "x": "' + b" " * (1 << 30), compresslevel=9)
    assert len(bomb) < 2 << 20

    def respond(name: str, body: Any) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    master = await start_master(respond)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with MasterClient(url=master.url, timeout_s=20) as client:
        started = time.monotonic()
        with pytest.raises(MasterTooLarge):
            await client.get_instance("SOFTINST-1")
        assert time.monotonic() - started < 10
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, grown_mib


async def test_a_2xx_that_is_not_json_utf8_is_malformed(start_master: StartMaster):
    master = await start_master(
        lambda name, body: web.Response(
            body=b'{"instance_guid": "SOFTINST-1", "connection_parameters": {"x": "\xff\xfe"}}',
            content_type="application/json")
    )
    async with MasterClient(url=master.url, timeout_s=5) as client:
        with pytest.raises(MasterMalformed):
            await client.get_instance("SOFTINST-1")


async def test_the_master_answering_200_to_publish_still_works(start_master: StartMaster):
    master = await start_master(lambda name, body: web.json_response(valid_answer(PUBLISH, SUCCESS)))
    async with MasterClient(url=master.url, timeout_s=5) as client:
        await client.publish_connection("SOFTINST-1", {"a": "b"})
    assert [r.name for r in master.received] == [PUBLISH]
    assert REQUEST  # imported for the request test's title
