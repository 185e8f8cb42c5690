"""The control API, ``/_bench/<op>``: how the benchmark runner changes the double between ticks.

JSON bodies in and out; the read-only operations answer GET too:

* ``add``: ``{count, start?, with_domains?}`` -> ``{added, first, customers}``
* ``change``: ``{guids} | {fraction}``, optional ``parameters`` (else the
  backend URL gets a new revision), optional ``state`` -> ``{changed, guids}``
* ``remove``: ``{guids} | {fraction}`` -> ``{removed, guids}``
* ``counts``: ``{calls: {name: n}, total}``; ``reset_counts``
* ``published_count``: ``{published, errors}``;
  ``technical_count``: ``{technical, deployed, destroyed}``
* ``state``: the whole summary; ``config``: ``{publish_after?}``;
  ``deploy``: publish the entries waiting for a read; ``clear_technical``

A body that does not fit (a ValueError, KeyError or TypeError) is a 400 in
the master's error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from bench.double.master import Double
from bench.double.wire import dumps, error_body, loads

__all__ = ["OPERATIONS", "READABLE", "control_routes"]

Body = dict[str, Any]


def _add(double: Double, body: Body) -> Body:
    guids = double.populate(int(body.get("count", 1)), body.get("start"), body.get("with_domains"))
    return {"added": len(guids), "first": guids[0] if guids else None,
            "customers": len(double.customers)}


def _change(double: Double, body: Body) -> Body:
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


def _remove(double: Double, body: Body) -> Body:
    guids = double.pick(body.get("fraction"), body.get("guids"))
    for guid in guids:
        double.remove(guid)
    return {"removed": len(guids), "guids": guids, "customers": len(double.customers)}


def _counts(double: Double, _: Body) -> Body:
    return {"calls": dict(double.calls), "total": sum(double.calls.values())}


def _reset_counts(double: Double, _: Body) -> Body:
    double.reset_counts()
    return {"reset": True}


def _published_count(double: Double, _: Body) -> Body:
    return {"published": len(double.published), "errors": len(double.errors)}


def _technical_count(double: Double, _: Body) -> Body:
    summary = double.summary()
    return {key: summary[key] for key in ("technical", "deployed", "destroyed")}


def _config(double: Double, body: Body) -> Body:
    if "publish_after" in body:
        double.set_publish_after(body["publish_after"])
    return double.summary()


OPERATIONS: dict[str, Callable[[Double, Body], Body]] = {
    "add": _add,
    "change": _change,
    "remove": _remove,
    "counts": _counts,
    "reset_counts": _reset_counts,
    "published_count": _published_count,
    "technical_count": _technical_count,
    "state": lambda double, _: double.summary(),
    "config": _config,
    "deploy": lambda double, _: {"deployed": double.deploy_pending()},
    "clear_technical": lambda double, _: {"cleared": double.clear_technical()},
}
READABLE = frozenset({"counts", "published_count", "technical_count", "state"})


async def _body_of(request: web.Request) -> Body:
    if not request.can_read_body:
        return {}
    body = await request.json(loads=loads)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _route(double: Double, operation: Callable[[Double, Body], Body]):
    async def route(request: web.Request) -> web.Response:
        try:
            answer = dumps(operation(double, await _body_of(request)))
        except (ValueError, KeyError, TypeError) as exc:
            return web.Response(body=error_body(400, f"{type(exc).__name__}: {exc}"), status=400,
                                content_type="application/json")
        return web.Response(body=answer, content_type="application/json")
    return route


def control_routes(double: Double) -> list[web.RouteDef]:
    """``POST /_bench/<op>`` for every operation, and ``GET`` for the read-only ones."""
    routes = []
    for op, operation in OPERATIONS.items():
        routes.append(web.post(f"/_bench/{op}", _route(double, operation)))
        if op in READABLE:
            routes.append(web.get(f"/_bench/{op}", _route(double, operation)))
    return routes
