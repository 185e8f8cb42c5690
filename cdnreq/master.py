"""Client for the SlapOS master's JSON API.

I/O only: every answer becomes a typed value or a typed error, and deciding
what an error means is left to the caller. Every call has a timeout, because
a hung master must fail a tick, not freeze the daemon.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
import orjson

from cdnreq.entries import EntriesMalformed, read_entries
from cdnreq.listing import ListingMalformed, read_listing
from cdnreq.model import Entries, InstanceAnswer, Listing
from cdnreq.resources import local_errno, shortage
from cdnreq.scrub import scrub
from cdnreq.validate.encoding import encoding_problems

__all__ = ["MasterClient", "MasterError", "MasterMalformed", "MasterRejected",
           "MasterTooLarge", "MasterUnavailable", "MasterUnencodable", "TlsFiles"]

LIST_HOSTED = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
GET = "slapos.get.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
ERROR = "slapos.put.v0.software_instance_error"


UNBOUNDED = 1 << 62  # an answer's size is bounded by [master].max_listing_bytes
# An answer about one instance holds its parameters (what was requested, at most
# [validation].max_parameters_bytes, ESCAPED) and the CDN's answer: this much at
# least, never the listing's 1 GiB (read, parsed, stored and published whole,
# as many at once as calls in flight)
INSTANCE_ANSWER_BYTES = 16 << 20
ESCAPED_TWICE = 12  # a master may spell a byte of the parameters as six; twice that
DETAIL_LIMIT = 240  # room for "HTTP 400: " before a title cut at scrub.LIMIT
# 4xx that say "not now" (timeout, too early, too many requests: a gateway, a
# rate limit), not "no": retried like a 5xx, never told to a customer as a refusal
NOT_NOW = frozenset({408, 425, 429})


class MasterError(Exception):
    """A call to the master did not give a usable answer."""

    def __init__(
        self, call: str, detail: str, *, status: int | None = None, title: str | None = None, typed: bool = False
    ):
        self.call = call
        self.typed = typed  # the title is the master's JSON error document's ({status, type, title}), not a body's start
        # scrubbed here, where the master's words enter: they are stored, logged,
        # shown and relayed to customers from here on
        self.detail = scrub(detail, DETAIL_LIMIT)
        self.status = status
        self.title = None if title is None else scrub(title)  # the master's own words, when it gave some
        super().__init__(f"{call}: {self.detail}")


class MasterUnavailable(MasterError):
    """Transport failure, timeout, 5xx or NOT_NOW: worth retrying later, unchanged."""


class LocalResourceError(MasterUnavailable):
    """The call failed on this host: out of file descriptors, buffers,
    memory or ephemeral ports. Says nothing about the master."""

    def __init__(self, call: str, detail: str, *, errno: int):
        super().__init__(call, detail)
        self.errno = errno
        self.shortage = shortage(errno)


class NotSent(MasterUnavailable):
    """The call was not sent: this node may not call the master now (it does not lead)."""


class MasterRejected(MasterError):
    """4xx but NOT_NOW: the master understood and said no; `title` is its reason."""

    @property
    def not_found(self) -> bool:
        return self.status in (403, 404)


class MasterMalformed(MasterError):
    """2xx, but not the JSON shape the API promises."""


class MasterTooLarge(MasterMalformed):
    """An answer longer than the cap set for it."""


class MasterUnencodable(MasterError):
    """The call's body cannot be encoded as JSON: nothing was sent. Validation
    keeps unencodable values from every request; this is the last line."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None


CallObserver = Callable[[str, str, float], None]
"""(call name, status label, duration in seconds)."""


@dataclass
class MasterClient:
    """One aiohttp session to one master; safe to share between tasks."""

    url: str
    timeout_s: float = 30.0
    partition_header: str | None = None
    tls: TlsFiles = field(default_factory=TlsFiles)
    ssl_context: ssl.SSLContext | None = None  # built at start-up (cdnreq.mastertls); wins over `tls`
    max_connections: int = 16
    max_listing_bytes: int = 1 << 30
    max_parameters_bytes: int | None = None  # an entry far larger is not read (see listing.read_listing)
    observer: CallObserver | None = None
    may_call: Callable[[], str | None] | None = None  # why not, when this node may not call (cdnreq.service.leader)
    before_call: Callable[[], Awaitable[None]] | None = None  # awaited first: a late lease renewed (ibid.)
    calls: Counter = field(default_factory=Counter)
    in_flight: int = 0
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "MasterClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.lower().startswith("https:"):
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        if self.tls.cert_file:
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return context

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.partition_header:
                headers["Authorization"] = self.partition_header
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, ssl=self._ssl() or True
            )
            self._session = aiohttp.ClientSession(
                base_url=self.url.rstrip("/") + "/",
                headers=headers,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A call about one instance: its answer is capped by instance_answer_bytes."""
        status, raw = await self._post(name, body, self.instance_answer_bytes)
        try:
            answer = _loads(raw)
        except (ValueError, RecursionError):
            raise MasterMalformed(name, f"answer is not JSON: {_excerpt(raw)}", status=status) from None
        if not isinstance(answer, dict):
            raise MasterMalformed(name, f"answer is not a JSON object: {_excerpt(raw)}")
        return answer

    @property
    def instance_answer_bytes(self) -> int:
        bound = max(INSTANCE_ANSWER_BYTES, (self.max_parameters_bytes or 0) * ESCAPED_TWICE)
        return min(bound, self.max_listing_bytes)

    async def _post(self, name: str, body: Mapping[str, Any], limit: int | None = None) -> tuple[int, bytearray]:
        """The 2xx answer's status and body (at most `limit`, else
        max_listing_bytes, the largest answer a master gives); typed errors otherwise."""
        try:
            data = orjson.dumps(body)
        except TypeError as error:  # orjson.JSONEncodeError: a lone surrogate, a huge integer...
            raise MasterUnencodable(name, f"the request cannot be encoded as JSON ({error})") from None
        if self.before_call is not None:
            await self.before_call()
        if self.may_call is not None and (why := self.may_call()) is not None:
            raise NotSent(name, f"not sent: {why}")
        session = self._open()
        self.calls[name] += 1
        self.in_flight += 1
        started = time.monotonic()
        status = "error"
        try:
            # the API never redirects: following one would turn a write into a
            # GET of another URL, or send its body (customers' keys) to another host
            async with session.post(name, data=data, headers=_JSON, allow_redirects=False) as response:
                status = str(response.status)
                raw = await _read(response, name, limit or self.max_listing_bytes)
        except asyncio.TimeoutError:
            status = "timeout"
            raise MasterUnavailable(name, f"no answer within {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            code = local_errno(exc)
            if code is not None:
                raise LocalResourceError(name, f"{type(exc).__name__}: {exc}", errno=code) from None
            raise MasterUnavailable(name, f"{type(exc).__name__}: {exc}") from None
        finally:
            self.in_flight -= 1
            if self.observer is not None:
                self.observer(name, status, time.monotonic() - started)
        if response.status < 200 or 300 <= response.status < 400:
            # never an answer: an answer only a 2xx gives; retried like a 5xx
            where = response.headers.get("Location")
            raise MasterUnavailable(
                name, f"HTTP {response.status}" + (f": redirect to {where} not followed" if where else ": not an answer"),
                status=response.status,
            )
        if response.status >= 400:
            error = MasterUnavailable if response.status >= 500 or response.status in NOT_NOW else MasterRejected
            title, typed = _error_title(raw.decode("utf-8", "replace"))
            raise error(
                name, f"HTTP {response.status}: {title}", status=response.status, title=title, typed=typed
            )
        return response.status, raw

    async def list_hosted(self, instance_guid: str) -> Listing:
        status, raw = await self._post(LIST_HOSTED, {"instance_guid": instance_guid})
        try:
            return read_listing(raw, self.max_parameters_bytes)
        except ListingMalformed as error:
            detail = f"{error.problem}: {_excerpt(raw)}" if error.excerpt else error.problem
            raise MasterMalformed(LIST_HOSTED, detail, status=status) from None

    async def list_entries(self, host_guid: str) -> Entries:
        """The entries the technical CDN's instance `host_guid` hosts, with
        their titles (for `orphans` and `import-legacy`, never the tick)."""
        status, raw = await self._post(LIST_HOSTED, {"instance_guid": host_guid})
        try:
            return read_entries(raw)
        except EntriesMalformed as error:
            raise MasterMalformed(LIST_HOSTED, f"{error}: {_excerpt(raw)}", status=status) from None

    async def request_instance(
        self,
        *,
        title: str,
        software_release_uri: str,
        software_type: str,
        parameters: Mapping[str, Any] | None,
        state: str,
        sla_parameters: Mapping[str, str],
        shared: bool = True,
    ) -> InstanceAnswer:
        body: dict[str, Any] = {
            "title": title,
            "software_release_uri": software_release_uri,
            "software_type": software_type,
            "shared": shared,
            "state": state,
            "sla_parameters": dict(sla_parameters),
        }
        if parameters is not None:
            body["parameters"] = dict(parameters.items())  # a FrozenJson parses once
        answer = _instance_answer(REQUEST, await self.call(REQUEST, body))
        if answer.title != title:
            # never take another entry's answer for this one's (the API's answer always names its title)
            raise MasterMalformed(REQUEST, f"answer is for title {answer.title!r}, not {title!r}")
        return answer

    async def get_instance(self, instance_guid: str) -> InstanceAnswer:
        answer = _instance_answer(GET, await self.call(GET, {"instance_guid": instance_guid}))
        if answer.guid != instance_guid:
            raise MasterMalformed(GET, f"answer is for {answer.guid!r}, not {instance_guid!r}")
        return answer

    async def publish_connection(self, instance_guid: str, parameters: Mapping[str, Any]) -> None:
        await self.call(
            PUBLISH,
            {"instance_guid": instance_guid, "connection_parameter_dict": dict(parameters)},
        )

    async def publish_error(self, instance_guid: str, message: str) -> None:
        await self.call(ERROR, {"instance_guid": instance_guid, "message": message})


_JSON = {"Content-Type": "application/json"}


async def _read(response: aiohttp.ClientResponse, name: str, limit: int | None) -> bytearray:
    """The body, read in chunks into one buffer (orjson reads a bytearray
    as it is: no second copy of a listing of hundreds of megabytes)."""
    declared = response.content_length
    if limit is not None and declared is not None and declared > limit:
        raise MasterTooLarge(name, _too_large(declared, limit, "announced", name), status=response.status)
    raw = bytearray()
    async for chunk in response.content.iter_chunked(1 << 20):
        raw += chunk
        if limit is not None and len(raw) > limit:
            raise MasterTooLarge(name, _too_large(len(raw), limit, "read so far", name), status=response.status)
    return raw


def _too_large(size: int, limit: int, how: str, name: str) -> str:
    cap = "([master].max_listing_bytes)" if name == LIST_HOSTED else "for one instance"
    return f"answer is too large: {size} bytes {how}, more than the {limit} allowed {cap}"


def _loads(raw: bytes | bytearray) -> Any:
    """orjson, or the standard library for what orjson refuses but masters
    send (a bare `Infinity` that one customer's parameter became)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _instance_answer(call: str, answer: dict[str, Any]) -> InstanceAnswer:
    guid = answer.get("instance_guid")
    connection = answer.get("connection_parameters", {})
    if not isinstance(guid, str) or not isinstance(connection, dict):
        raise MasterMalformed(call, "answer lacks instance_guid or connection_parameters")
    # the technical CDN's answer is published to the customer as it is: what
    # cannot be encoded (or that orjson would write as null) is no answer
    if problems := encoding_problems(connection, max_bytes=UNBOUNDED):
        raise MasterMalformed(call, "connection_parameters: " + "; ".join(problems[:3]))
    state = answer.get("state")
    title = answer.get("title")
    parameters = answer.get("parameters")
    return InstanceAnswer(
        guid=guid,
        connection_parameters=connection,
        state=state,
        title=title if isinstance(title, str) else None,
        parameters=parameters if isinstance(parameters, dict) else None,
    )


def _error_title(text: str) -> tuple[str, bool]:
    """The error's title, and whether the master's JSON error document gave it."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("title"), str):
        return body["title"], True
    return _excerpt(text) or "no body", False


def _excerpt(text: str | bytes | bytearray, limit: int = 200) -> str:
    """The start of a body, scrubbed (see cdnreq/scrub.py)."""
    if not isinstance(text, str):  # only the start of a body can be shown
        text = bytes(text[: 8 * limit]).decode("utf-8", "replace")
    return scrub(text)
