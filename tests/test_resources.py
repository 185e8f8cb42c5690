"""Local resources (issue 10, property 20): what a shortage is, the tick it
spoils, and how the descriptor limit is shared out at start."""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from cdnreq.config import Config
from cdnreq.fdlimit import fit_config, limits_of, raise_fd_limit
from cdnreq.master import LocalResourceError, MasterUnavailable
from cdnreq.model import InstanceAnswer, SharedInstance
from cdnreq.resources import fit_fds, local_errno, starved
from cdnreq.store import Store
from test_tick_stages import Dns, Master, config, customer, opened, reconciler, title  # noqa: F401

KEY = ConnectionKey("127.0.0.1", 9, False, True, None, None, None)
EMFILE = OSError(errno.EMFILE, "Too many open files")


@pytest.mark.parametrize(
    "error, expected",
    [
        (aiohttp.ClientConnectorError(KEY, EMFILE), errno.EMFILE),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.EADDRNOTAVAIL, "no port")), errno.EADDRNOTAVAIL),
        (aiohttp.ClientOSError(errno.ENOBUFS, "No buffer space available"), errno.ENOBUFS),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.ECONNREFUSED, "refused")), None),
        (aiohttp.ServerDisconnectedError(), None),
        (TimeoutError(), None),
        (None, None),
    ],
)
def test_local_errno_tells_a_shortage_here_from_a_failure_there(error: BaseException | None, expected: int | None) -> None:
    assert local_errno(error) == expected


def test_local_errno_follows_causes() -> None:
    try:
        try:
            raise OSError(errno.ENFILE, "Too many open files in system")
        except OSError as inner:
            raise aiohttp.ClientPayloadError("cut") from inner
    except aiohttp.ClientError as outer:
        assert local_errno(outer) == errno.ENFILE


@pytest.mark.parametrize(
    "failed, actions, ok",
    [(0, 0, True), (1, 10, True), (2, 10, False), (10, 100, True), (11, 100, False), (5, 5, False), (1, 1, False)],
)
def test_a_tick_is_not_ok_above_a_tenth_of_its_actions_failed_for_local_resources(failed: int, actions: int, ok: bool) -> None:
    reason = starved({"too many open files": failed} if failed else {}, actions)
    assert (reason is None) is ok
    if not ok:
        assert reason == f"{failed} of {actions} actions failed for lack of local resources (too many open files)"


def test_the_reason_names_the_commonest_shortage() -> None:
    reason = starved({"no buffer space available": 1, "too many open files": 3}, 10)
    assert reason == "4 of 10 actions failed for lack of local resources (too many open files)"


@pytest.mark.parametrize(
    "limit, concurrency, http, expected",
    [
        (65536, 1024, 256, (1024, 256)),
        (4096, 8, 256, (8, 256)),
        (1024, 1024, 256, (702, 256)),
        (1024, 8, 256, (8, 256)),
        (512, 1024, 256, (223, 223)),
        (100, 8, 256, (8, 17)),
        (10, 8, 256, (1, 1)),
    ],
)
def test_concurrency_and_the_connection_cap_fit_under_the_descriptor_limit(
    limit: int, concurrency: int, http: int, expected: tuple[int, int]
) -> None:
    fit = fit_fds(limit, concurrency, http)
    assert (fit.concurrency, fit.http_connections) == expected
    assert fit.concurrency + fit.http_connections + 2 + 64 <= max(limit, 66 + 2)
    lowered = [name for name, before, after in (
        ("[daemon].concurrency", concurrency, fit.concurrency),
        ("[daemon].http_max_connections", http, fit.http_connections),
    ) if after < before]
    assert [c.split(" lowered")[0] for c in fit.capped] == lowered
    for line in fit.capped:
        assert f"RLIMIT_NOFILE is {limit}" in line


def test_fit_config_lowers_the_daemon_keys_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path).model_copy(deep=True)
    cfg = Config.model_validate({**cfg.model_dump(mode="json"), "daemon": {**cfg.daemon.model_dump(mode="json"), "concurrency": 1024}})
    fitted = fit_config(cfg, 512)
    assert (fitted.daemon.concurrency, fitted.daemon.http_max_connections) == (223, 223)
    assert limits_of(fitted).max_connections == 223
    assert fit_config(cfg, 65536) is cfg
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "[daemon].concurrency lowered from 1024 to 223: RLIMIT_NOFILE is 512" in logged
    assert "[daemon].http_max_connections lowered from 256 to 223: RLIMIT_NOFILE is 512" in logged


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        raised = raise_fd_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == now
        assert now == (hard if hard != resource.RLIM_INFINITY else 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, resource
    from cdnreq.master import MasterClient, MasterError
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    loop = asyncio.new_event_loop()
    async def call():
        client = MasterClient(url="http://127.0.0.1:9/", timeout_s=5)
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        try:
            await client.list_hosted("x")
        except MasterError as error:
            return {"class": type(error).__name__, "shortage": getattr(error, "shortage", None), "text": str(error)}
        finally:
            for fd in held:
                os.close(fd)
            await client.close()
    print(json.dumps(loop.run_until_complete(call())))
    """
)


def test_a_master_call_without_descriptors_left_is_a_local_resource_error() -> None:
    """For real: a process out of descriptors calls the master (a dead
    loopback port it never reaches)."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["class"] == "LocalResourceError", seen
    assert seen["shortage"] == "too many open files" and "Too many open files" in seen["text"]


class Starving(Master):
    """Requests of the titles in `starve` fail for lack of descriptors, of
    those in `down` for a master that is down."""

    def __init__(self, store: Store, instances: list[SharedInstance], starve: set[str], down: set[str] = set()):
        super().__init__(store, instances)
        self.starve, self.down = starve, down

    async def request_instance(self, *, title: str, state: str, **kw: Any) -> InstanceAnswer:
        if title in self.starve:
            raise LocalResourceError("request", "ClientConnectorError: Too many open files", errno=errno.EMFILE)
        if title in self.down:
            raise MasterUnavailable("request", "HTTP 503: down", status=503)
        return await super().request_instance(title=title, state=state, **kw)


async def tick_with(tmp_path: Path, opened: list[Store], starve: int, down: int = 0) -> Any:
    instances = [customer(f"C{n}") for n in range(10)]
    r, _ = await reconciler(opened, config(tmp_path), instances, Dns({}))
    titles = [title(i.guid) for i in instances]
    r.master = Starving(r.store, instances, set(titles[:starve]), set(titles[starve:starve + down]))
    return await r.tick(), r


async def test_a_tick_with_two_of_ten_actions_out_of_descriptors_is_not_ok(tmp_path: Path, opened: list[Store]) -> None:
    report, r = await tick_with(tmp_path, opened, starve=2)
    assert not report.ok
    assert report.error == "2 of 10 actions failed for lack of local resources (too many open files)"
    assert report.shortages == {"too many open files": 2}
    assert report.results == {"request:ok": 8, "request:failed": 2}
    # the instances still carry their own error and backoff, the others went on
    failing = [rec for rec in r.known.values() if rec.failures]
    assert len(failing) == 2 and all("Too many open files" in rec.last_error for rec in failing)


async def test_one_of_ten_out_of_descriptors_or_a_master_down_for_half_is_still_ok(tmp_path: Path, opened: list[Store]) -> None:
    report, _ = await tick_with(tmp_path, opened, starve=1, down=5)
    assert report.ok, report.error
    assert report.results == {"request:ok": 4, "request:failed": 6}


class StarvedListing(Master):
    async def list_hosted(self, guid: str) -> Any:
        raise LocalResourceError("list", "ClientConnectorError: Too many open files", errno=errno.EMFILE)


async def test_a_listing_out_of_descriptors_fails_the_tick_without_blaming_the_master(tmp_path: Path, opened: list[Store]) -> None:
    r, _ = await reconciler(opened, config(tmp_path), [customer("C0")], Dns({}))
    r.master = StarvedListing(r.store, [])
    report = await r.tick()
    assert not report.ok
    assert report.error == "local resources: list: ClientConnectorError: Too many open files"
