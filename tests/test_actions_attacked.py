"""Issue 11 #4, attacked: an operator action sent to a daemon that takes the
request but does not answer in time (a tick longer than the wait, a daemon
stuck) must not be applied a second time by the command itself: the
daemon's handler still waits for its tick and applies it afterwards."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import structlog
from test_service import config_for, offline_site

from cdnreq import cli
from cdnreq.commands import actions
from cdnreq.model import InstanceGuid, Phase, Record
from cdnreq.store import Store
from tests.storeread import events_since

GUID = "backing-off"



@pytest.fixture(autouse=True)
def _logging_restored():
    """cli.main configures structlog on the captured stderr: put it back."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)

async def _seed(database: Path) -> None:
    store = await Store.open(database)
    try:
        record = Record(guid=InstanceGuid(GUID), title="cdn-x", phase=Phase.NEW, created_at=1.0,
                        updated_at=2.0, failures=3, retry_at=4e9, last_error="master: down")  # fmt: skip
        await store.commit(upserts=[record])
    finally:
        await store.close()


async def _stored(database: Path) -> tuple[Record | None, list]:
    store = await Store.open(database, lock=False)
    try:
        return await store.get(GUID), [e for _, e in await events_since(store, 0, 1000) if e.action == "operator"]
    finally:
        await store.close()


def test_an_action_the_daemon_took_but_did_not_answer_is_not_applied_locally(tmp_path, monkeypatch, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:  # connects, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        config = config_for(offline_site(tmp_path), tmp_path, daemon={"listen": f"127.0.0.1:{port}"})
        database = tmp_path / "state" / "cdnreq.db"
        asyncio.run(_seed(database))
        monkeypatch.setattr(actions, "ANSWER_TIMEOUT_S", 1.0)
        code = cli.main(["retry", GUID, "--config", str(config)])
    err = capsys.readouterr().err
    record, events = asyncio.run(_stored(database))
    assert events == [] and record is not None and record.retry_at == 4e9  # nothing applied in its place
    assert code == actions.EXIT_REFUSED, err
    assert "gave no answer" in err and "may still be applied" in err


def test_messages_naming_a_listed_guid_are_shown_escaped(tmp_path, capsys):
    """A listed guid may hold an escape sequence (ASCII is all the listing
    asks); refused or done, the command prints it escaped."""
    evil = "evil\x1b]0;owned\x07\x1b[2J"

    async def seed() -> None:
        store = await Store.open(database)
        try:
            await store.commit(upserts=[Record(guid=InstanceGuid(evil), title="cdn-e", phase=Phase.LIVE,
                                               created_at=1.0, updated_at=2.0)])  # fmt: skip
        finally:
            await store.close()

    database = tmp_path / "state" / "cdnreq.db"
    config = config_for(offline_site(tmp_path), tmp_path)  # its listen answers nothing: applied locally
    asyncio.run(seed())
    for argv in (["retry", evil], ["forget", evil]):
        code = cli.main([*argv, "--config", str(config)])
        captured = capsys.readouterr()
        assert code == actions.EXIT_REFUSED, captured
        assert "\x1b" not in captured.err + captured.out and "\x07" not in captured.err, captured
        assert "evil\\x1b]0;owned\\x07\\x1b[2J" in captured.err


def test_status_refused_by_the_daemon_is_not_shown_as_its_state(tmp_path, capsys):
    """`cdnreq status` run by a user who cannot read the token: the daemon's
    401 is not a status ('cdnreq None (pid None): NOT READY: None')."""
    import http.server
    import json
    import threading

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps({"error": "unauthorized"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        config = config_for(offline_site(tmp_path), tmp_path, daemon={"listen": f"127.0.0.1:{port}"})
        asyncio.run(_seed(tmp_path / "state" / "cdnreq.db"))
        code = cli.main(["status", "--config", str(config)])
        out = capsys.readouterr().out
        assert code == 1
        assert "NOT READY: None" not in out, out
        assert "answered HTTP 401 (unauthorized)" in out and "token_file" in out, out
        assert cli.main(["status", "--json", "--config", str(config)]) == 1
        assert json.loads(capsys.readouterr().out)["daemon"] is None
    finally:
        server.shutdown()
        server.server_close()
