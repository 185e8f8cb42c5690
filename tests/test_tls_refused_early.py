"""Issue 11 #1, attacked: the commands that create nothing (`cdnreq plan`, a
`cdnreq forget` with no daemon) talk to the master too; a certificate that
`run` refuses must be refused by them the same way (exit 2, the key named),
not found by the first call as an SSLError with a traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
from test_service import config_for, offline_site

from cdnreq import cli
from cdnreq.service.exits import EXIT_CONFIG
from cdnreq.model import InstanceGuid, Phase, Record
from cdnreq.store import Store



@pytest.fixture(autouse=True)
def _logging_restored():
    """cli.main configures structlog on the captured stderr: put it back."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)

def _config(tmp_path: Path) -> Path:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    master = {"cert_file": str(tmp_path / "cert.pem"), "key_file": str(tmp_path / "key.pem")}
    return config_for(offline_site(tmp_path, url="https://127.0.0.1:9/"), tmp_path, master=master)


async def _seed(database: Path) -> None:
    store = await Store.open(database)
    try:
        gone = Record(guid=InstanceGuid("gone"), title="cdn-gone", phase=Phase.REMOVING, created_at=1.0,
                      updated_at=2.0, tech_guid="T-1")  # fmt: skip
        await store.commit(upserts=[gone])
    finally:
        await store.close()


def test_plan_and_a_local_forget_refuse_a_bad_certificate_naming_the_key(tmp_path, capsys):
    config = _config(tmp_path)
    database = tmp_path / "state" / "cdnreq.db"
    asyncio.run(_seed(database))
    for argv in (["plan"], ["plan", "--json"], ["forget", "gone"]):
        code = cli.main([*argv, "--config", str(config)])
        captured = capsys.readouterr()
        assert code == EXIT_CONFIG, (argv, captured)
        assert "[master].cert_file:" in captured.err and "no PEM certificate" in captured.err, argv
        assert "Traceback" not in captured.err + captured.out and "SSLError" not in captured.err, argv


def test_run_on_a_listen_address_in_use_names_the_key_without_a_traceback(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = config_for(offline_site(tmp_path), tmp_path, daemon={"listen": address})
        code = cli.main(["run", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "[daemon].listen" in err and address in err and "Traceback" not in err, err
