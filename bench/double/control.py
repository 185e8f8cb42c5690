"""The control API, ``/_bench/<op>``: how the benchmark runner changes the double between ticks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from bench.double.master import Double
from bench.double.wire import dumps, error_body, loads

__all__ = ["control_routes"]


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type="application/json")

def control_routes(double: Double) -> list[web.RouteDef]:
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
        body = await request.json(loads=loads)
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
