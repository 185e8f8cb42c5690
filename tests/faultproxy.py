"""A fault-injecting HTTP proxy between cdnreq and a real master (slapproxy).

cdnreq only ever POSTs JSON to ``<master url>/<call name>``. :class:`FaultProxy`
listens on 127.0.0.1 (a free port), forwards every POST to the upstream master
and answers with the master's answer, unless a rule of its script says
otherwise for that call::

    with FaultProxy(site.proxy.url) as proxy:
        proxy.inject(LIST, status(503), times=None)           # every listing fails
        proxy.inject(REQUEST, drop_after_ok, times=1,          # the next request of one title
                     match=lambda body: body.get("title") == title)
        ...
        proxy.clear()

It runs in a background thread with its own event loop, so synchronous tests
and ``cdnreq`` subprocesses can both use it. Rules are tried in the order they
were injected; the first one whose call name (or ``"*"``) and ``match``
predicate fit the call is applied and its ``times`` is decremented (``None``:
always). Every call is appended to :attr:`FaultProxy.log` with the fault
applied (or ``None``) and the status the proxy answered (``None`` when it
did not answer).

Faults (each a :class:`Fault`):

=================  ==========================================================
``status(code)``   answer ``code`` with a JSON error body; not forwarded
``reset``          close the connection without answering (transport abort);
                   not forwarded
``hang``           never answer until the proxy stops or the rule is cleared
                   (then the connection is aborted); not forwarded
``trickle(bps)``   forward, then send the real answer at ``bps`` bytes/s
``truncate``       forward, then send the first half of the real answer
``html200``        200 with an HTML error page; not forwarded
``half_list``      forward, then drop every other entry of ``result_list``
                   (entries 0, 2, 4...)
``empty_list``     forward, then answer an empty ``result_list``
``duplicate``      forward, then list every entry of ``result_list`` twice
``other_instance`` forward, then replace the answer's ``instance_guid`` with
                   another instance's (``other_instance(guid)`` picks which)
``drop_after_ok``  answer like a successful shared-instance request, built
                   from the request, WITHOUT forwarding it: the master
                   "acknowledged" a request it never kept
=================  ==========================================================
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import aiohttp
from aiohttp import web

__all__ = [
    "ERROR",
    "GET",
    "LIST",
    "PUBLISH",
    "REQUEST",
    "Call",
    "Fault",
    "FaultProxy",
    "Rule",
    "drop_after_ok",
    "duplicate",
    "empty_list",
    "half_list",
    "hang",
    "html200",
    "other_instance",
    "reset",
    "status",
    "trickle",
    "truncate",
]

LIST = "slapos.allDocs.v0.instance_node_instance_list"
REQUEST = "slapos.post.v0.software_instance"
GET = "slapos.get.v0.software_instance"
PUBLISH = "slapos.put.v0.software_instance_connection_parameter"
ERROR = "slapos.put.v0.software_instance_error"

Match = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Fault:
    """What to do to one call. ``kind`` selects the behaviour; ``arg`` its parameter."""

    kind: str
    arg: Any = None
    body: Any = None

    @property
    def name(self) -> str:
        return f"{self.kind}({self.arg})" if self.arg is not None else self.kind

    @property
    def forwards(self) -> bool:
        """Whether the upstream master sees the call."""
        return self.kind not in ("status", "reset", "hang", "html200", "drop_after_ok")

    def __repr__(self) -> str:
        return self.name


def status(code: int, body: Any = None) -> Fault:
    """Answer HTTP ``code``; the body defaults to the master's JSON error shape."""
    if body is None:
        body = {"status": code, "type": "InjectedFault", "title": f"injected HTTP {code}"}
    return Fault("status", code, body)


def trickle(bytes_per_s: float) -> Fault:
    return Fault("trickle", bytes_per_s)


def other_instance(guid: str | None = None) -> Fault:
    """``guid``: whose guid the answer carries; by default one no master knows."""
    return Fault("other_instance", guid)


reset = Fault("reset")
hang = Fault("hang")
truncate = Fault("truncate")
html200 = Fault("html200")
half_list = Fault("half_list")
empty_list = Fault("empty_list")
duplicate = Fault("duplicate")
drop_after_ok = Fault("drop_after_ok")

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is being restarted."
    b" Please try again later.</p></body></html>\n"
)


@dataclass
class Rule:
    call: str  # a call name, or "*"
    fault: Fault
    times: int | None  # None: always
    match: Match | None = None
    applied: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends a hang

    def fits(self, name: str, body: dict[str, Any]) -> bool:
        if self.times is not None and self.applied >= self.times:
            return False
        if self.call != "*" and self.call != name:
            return False
        if self.match is None:
            return True
        try:
            return bool(self.match(body))
        except Exception:  # noqa: BLE001 -- a predicate that does not fit this body's shape
            return False


@dataclass
class Call:
    """One call the proxy received."""

    name: str
    body: dict[str, Any]
    fault: str | None  # the fault applied, None when forwarded untouched
    forwarded: bool = True  # whether the upstream master saw it
    status: int | None = None  # what the proxy answered; None: no answer
    at: float = field(default_factory=time.time)


class FaultProxy:
    """An aiohttp proxy on 127.0.0.1 with a script of faults; see the module doc."""

    def __init__(
        self,
        upstream_url: str,
        *,
        requester: str = "cdn-requester",
        host_partition: str = "slappart1",
        forward_timeout_s: float = 30.0,
    ):
        assert upstream_url.startswith(("http://127.0.0.1:", "http://localhost:")), upstream_url
        self.upstream = upstream_url.rstrip("/")
        self.requester = requester  # title of the requesting instance, for drop_after_ok
        self.host_partition = host_partition
        self.forward_timeout_s = forward_timeout_s
        self.log: list[Call] = []
        self.url = ""
        self.port = 0
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- script ----------------------------------------------------------------

    def inject(
        self, call: str, fault: Fault, times: int | None = 1, match: Match | None = None
    ) -> Rule:
        """Apply ``fault`` to the next ``times`` calls named ``call`` (``"*"``: any)
        whose JSON body satisfies ``match``; ``times=None``: to every one."""
        assert isinstance(fault, Fault), fault
        rule = Rule(call, fault, times, match)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Forget every rule; calls hanging on one are released (and aborted)."""
        with self._lock:
            rules, self._rules = self._rules, []
        self._release(rules)

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        self._release([rule])

    @property
    def injected(self) -> int:
        """How many calls got a fault."""
        return sum(1 for c in self.log if c.fault is not None)

    def calls(self, since: int = 0, name: str | None = None) -> list[Call]:
        return [c for c in self.log[since:] if name is None or c.name == name]

    def _pick(self, name: str, body: dict[str, Any]) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.fits(name, body):
                    rule.applied += 1
                    return rule
        return None

    def _release(self, rules: list[Rule]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            for rule in rules:
                try:
                    self._loop.call_soon_threadsafe(rule.released.set)
                except RuntimeError:  # the loop just closed
                    pass

    # -- life --------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._main, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.clear()
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as error:  # noqa: BLE001 -- reported by start()
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{name:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))  # the kernel's free port, no race
        site = web.SockSite(self._runner, listener)
        await site.start()
        self.port = listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.forward_timeout_s), trust_env=False
        )

    async def _shutdown(self) -> None:
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            rule.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- one call --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        rule = self._pick(name, body)
        fault = rule.fault if rule is not None else None
        entry = Call(name, body, fault.name if fault is not None else None, fault is None or fault.forwards)
        self.log.append(entry)
        if fault is None:
            upstream = await self._forward(request, name, raw)
            entry.status = upstream.status
            return upstream
        assert rule is not None
        response = await self._apply(rule, request, name, raw, body)
        entry.status = response.status if response is not None else None
        if response is None:  # the transport is aborted: aiohttp cannot send this
            return web.Response(status=499)
        return response

    async def _forward(self, request: web.Request, name: str, raw: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        try:
            async with self._session.post(f"{self.upstream}/{name}", data=raw, headers=headers) as answer:
                payload = await answer.read()
                return web.Response(
                    status=answer.status,
                    body=payload,
                    headers={"Content-Type": answer.headers.get("Content-Type", "application/json")},
                )
        except (TimeoutError, aiohttp.ClientError) as error:
            return _json(502, {"status": 502, "type": "ProxyError", "title": f"upstream: {error!r}"})

    async def _apply(
        self, rule: Rule, request: web.Request, name: str, raw: bytes, body: dict[str, Any]
    ) -> web.StreamResponse | None:
        fault = rule.fault
        kind = fault.kind
        if kind == "status":
            return _json(int(fault.arg), fault.body)
        if kind == "html200":
            return web.Response(status=200, body=HTML_PAGE, content_type="text/html")
        if kind == "reset":
            _abort(request)
            return None
        if kind == "hang":
            await rule.released.wait()
            _abort(request)
            return None
        if kind == "drop_after_ok":
            return _json(200, self._acknowledgement(body))
        answer = await self._forward(request, name, raw)
        payload = answer.body if isinstance(answer.body, bytes) else b""
        if kind == "truncate":
            return web.Response(
                status=answer.status, body=payload[: len(payload) // 2],
                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")},
            )
        if kind == "trickle":
            return await _trickle(request, answer.status, payload, float(fault.arg), rule)
        if answer.status >= 400:  # nothing to rewrite in an error
            return answer
        try:
            data = json.loads(payload)
        except ValueError:
            return answer
        if kind in ("half_list", "empty_list", "duplicate") and isinstance(data.get("result_list"), list):
            entries = data["result_list"]
            if kind == "half_list":
                data["result_list"] = entries[1::2]
            elif kind == "empty_list":
                data["result_list"] = []
            else:
                data["result_list"] = [e for e in entries for _ in (0, 1)]
        elif kind == "other_instance" and "instance_guid" in data:
            data["instance_guid"] = fault.arg or f"someone-else___{self.requester}___1"
        return _json(answer.status, data)

    def _acknowledgement(self, body: dict[str, Any]) -> dict[str, Any]:
        """What slapproxy answers to a shared-instance request it kept, from the request alone."""
        title = str(body.get("title", ""))
        return {
            "title": title,
            "instance_guid": f"{title}___{self.requester}___1",
            "software_release_uri": body.get("software_release_uri", ""),
            "software_type": body.get("software_type", "default"),
            "state": body.get("state", "started") if body.get("state") != "destroyed" else "started",
            "connection_parameters": {},
            "parameters": body.get("parameters", {}),
            "shared": bool(body.get("shared", True)),
            "root_instance_title": self.requester,
            "ip_list": [],
            "full_ip_list": [],
            "sla_parameters": body.get("sla_parameters", {}),
            "computer_guid": "local_computer",
            "compute_partition_id": self.host_partition,
            "processing_timestamp": 0,
            "access_status_message": "",
        }


_FORWARDED = {"authorization", "content-type", "accept"}


def _json(code: int, data: Any) -> web.Response:
    return web.Response(
        status=code, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _trickle(
    request: web.Request, code: int, payload: bytes, bytes_per_s: float, rule: Rule
) -> web.StreamResponse | None:
    response = web.StreamResponse(status=code, headers={"Content-Type": "application/json"})
    response.content_length = len(payload)
    chunk = max(1, int(bytes_per_s / 20))
    try:
        await response.prepare(request)
        for start in range(0, len(payload), chunk):
            if rule.released.is_set() or request.transport is None or request.transport.is_closing():
                _abort(request)
                return response
            await response.write(payload[start : start + chunk])
            await asyncio.sleep(chunk / bytes_per_s)  # the fault itself: a slow link
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass  # the client gave up
    return response
