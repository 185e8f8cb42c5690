"""Issue 11 #1/#2, attacked: a configured file that is a FIFO (a careless
`token_file`, `key_file` or secret) would block check-config, and a SIGHUP
reload would block the daemon's event loop with it: it is refused at once
as not a regular file, naming the key."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from test_service import config_for, offline_site

from cdnreq.configfile import load_config
from cdnreq.preflight import problems


def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(tmp_path: Path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    config = load_config(config_for(offline_site(tmp_path), tmp_path, daemon={"token_file": str(fifo)}))
    found: list[list[str]] = []
    worker = threading.Thread(target=lambda: found.append(problems(config)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # unblock the old code's open() so the test process can end
        with open(fifo, "wb"):
            pass
    assert found, "check-config blocked reading a FIFO"
    assert any(p.startswith("[daemon].token_file:") and "not a regular file" in p for p in found[0]), found


def test_a_unix_socket_in_a_missing_directory_is_refused_by_check_config(tmp_path: Path):
    """`run` binds the socket and creates no directory: it would fail at start."""
    socket_path = tmp_path / "no-such-dir" / "cdnreq.sock"
    config = load_config(config_for(offline_site(tmp_path), tmp_path, daemon={"listen": str(socket_path)}))
    found = problems(config)
    assert any(p.startswith("[daemon].listen:") and "does not exist" in p for p in found), found
    fine = load_config(config_for(offline_site(tmp_path), tmp_path, daemon={"listen": str(tmp_path / "s.sock")}))
    assert not [p for p in problems(fine) if p.startswith("[daemon].listen")]
