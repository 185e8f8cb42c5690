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
from typing import Any, Callable, Mapping

import aiohttp
import orjson

from cdnreq.scrub import scrub
from cdnreq.model import InstanceAnswer, RequestedState, SharedInstance, digest, fast_maker
from cdnreq.resources import local_errno, shortage

LIST_HOSTED = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
GET = "slapos.get.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
ERROR = "slapos.put.v0.software_instance_error"


DETAIL_LIMIT = 240  # room for "HTTP 400: " before a title cut at scrub.LIMIT


class MasterError(Exception):
    """A call to the master did not give a usable answer."""

    def __init__(
        self, call: str, detail: str, *, status: int | None = None, title: str | None = None
    ):
        self.call = call
        # scrubbed here, where the master's words enter: they are stored, logged,
        # shown and relayed to customers from here on
        self.detail = scrub(detail, DETAIL_LIMIT)
        self.status = status
        self.title = None if title is None else scrub(title)  # the master's own words, when it gave some
        super().__init__(f"{call}: {self.detail}")


class MasterUnavailable(MasterError):
    """Transport failure, timeout or 5xx: worth retrying later, unchanged."""


class LocalResourceError(MasterUnavailable):
    """The call failed on this host: out of file descriptors, buffers,
    memory or ephemeral ports. Says nothing about the master."""

    def __init__(self, call: str, detail: str, *, errno: int):
        super().__init__(call, detail)
        self.errno = errno
        self.shortage = shortage(errno)


class MasterRejected(MasterError):
    """4xx: the master understood and said no; `title` is its reason."""

    @property
    def not_found(self) -> bool:
        return self.status in (403, 404)


class MasterMalformed(MasterError):
    """2xx, but not the JSON shape the API promises."""


@dataclass(frozen=True, slots=True)
class Listing:
    """The shared instances hosted by the requester.

    `unusable` are guids whose entry could not be read (they must be neither
    requested nor destroyed); `anonymous` counts entries without a guid, which
    means some known instance may be missing from `instances` for no reason of
    its own.
    """

    instances: tuple[SharedInstance, ...]
    unusable: tuple[str, ...] = ()
    anonymous: int = 0


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
    max_connections: int = 16
    observer: CallObserver | None = None
    calls: Counter = field(default_factory=Counter)
    in_flight: int = 0
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "MasterClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
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
        session = self._open()
        self.calls[name] += 1
        self.in_flight += 1
        started = time.monotonic()
        status = "error"
        try:
            async with session.post(name, data=orjson.dumps(body), headers=_JSON) as response:
                status = str(response.status)
                raw = await response.read()
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
        if response.status >= 400:
            error = MasterRejected if response.status < 500 else MasterUnavailable
            title = _error_title(raw.decode("utf-8", "replace"))
            raise error(
                name, f"HTTP {response.status}: {title}", status=response.status, title=title
            )
        try:
            answer = _loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace")
            raise MasterMalformed(
                name, f"answer is not JSON: {_excerpt(text)}", status=response.status
            ) from None
        if not isinstance(answer, dict):
            text = raw.decode("utf-8", "replace")
            raise MasterMalformed(name, f"answer is not a JSON object: {_excerpt(text)}")
        return answer

    async def list_hosted(self, instance_guid: str) -> Listing:
        answer = await self.call(LIST_HOSTED, {"instance_guid": instance_guid})
        entries = answer.get("result_list")
        if not isinstance(entries, list):
            raise MasterMalformed(LIST_HOSTED, "answer has no result_list array")
        return parse_listing(entries)

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
            body["parameters"] = dict(parameters)
        answer = _instance_answer(REQUEST, await self.call(REQUEST, body))
        if answer.title is not None and answer.title != title:
            # never take another entry's answer for this one's
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


def parse_listing(entries: list[Any]) -> Listing:
    """The listing's entries as SharedInstances.

    Each entry is released from `entries` once read, so the parsed JSON and
    the instances built from it are never both whole in memory (at 100,000
    instances each is about 80 MB).
    """
    instances: list[SharedInstance] = []
    unusable: list[str] = []
    anonymous = 0
    make, states, started = _make_instance, _STATES, RequestedState.STARTED
    for index, entry in enumerate(entries):
        entries[index] = None
        guid = entry.get("instance_guid") if isinstance(entry, dict) else None
        if not isinstance(guid, str) or not guid:
            anonymous += 1
            continue
        parameters = entry.get("parameters", {})
        raw_state = entry.get("state", started)
        state = raw_state if raw_state is started else states.get(raw_state) if isinstance(raw_state, str) else None
        if not isinstance(parameters, dict) or state is None:
            unusable.append(guid)
            continue
        instances.append(make(guid, state, parameters, digest(parameters)))
    return Listing(tuple(instances), tuple(unusable), anonymous)


_make_instance = fast_maker(SharedInstance)
_STATES = {s.value: s for s in RequestedState}
_JSON = {"Content-Type": "application/json"}


def _loads(raw: bytes) -> Any:
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


def _error_title(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("title"), str):
        return body["title"]
    return _excerpt(text) or "no body"


def _excerpt(text: str) -> str:
    return scrub(text)
