"""check-config refuses what run refuses (issue 11, item 1).

Each refusal is shown three times: `check-config`, `once` and `run` all exit 2
with the same words on stderr, naming the key and the value, with no
traceback and nothing written. The master is a real HTTPS server on loopback
that requires a client certificate (CA, server and client certificates from
trustme, which builds them with cryptography). When the tests run as root,
cdnreq runs as nobody (setpriv), so that file modes mean what they mean for
a real service user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import tomli_w
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

REPO = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0
RUNNER = 65534 if ROOT else os.geteuid()  # nobody, when root
LIST_HOSTED = "slapos.allDocs.v0.instance_node_instance_list"
HEADER = "cdnreq: configuration refused:"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Site:
    home: Path
    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_key: Path  # the key of another certificate from the same CA
    ca: trustme.CA
    calls: list[tuple[str, dict | None]] = field(default_factory=list)

    def config(self, **sections: dict[str, Any]) -> Path:
        """A working configuration, with `sections` merged over it."""
        data: dict[str, Any] = {
            "master": {"url": self.url, "instance_guid": "SOFTINST-100", "timeout_s": 10.0,
                       "ca_file": str(self.ca_file), "cert_file": str(self.cert_file),
                       "key_file": str(self.key_file)},
            "technical_cdn": {"software_release_uri": "https://lab.example/rapid-cdn.cfg"},
            "daemon": {"database": str(self.home / "state" / "cdnreq.db"), "tick_interval_s": 0.3,
                       "listen": f"127.0.0.1:{free_port()}"},
            "dns": {"nameservers": ["127.0.0.1:9"], "timeout_s": 0.5, "tries": 1},
            "store": {"backup_interval_s": 0},
            "logging": {"format": "json"},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        for section in data.values():
            for key in [k for k, v in section.items() if v is None]:
                del section[key]
        path = self.home / "cdnreq.toml"
        path.write_text(tomli_w.dumps(data), encoding="utf-8")
        give(path)
        return path


def give(*paths: Path, mode: int | None = None) -> None:
    """`paths` to the user cdnreq runs as (with `mode`)."""
    for path in paths:
        if ROOT:
            os.chown(path, RUNNER, RUNNER)
        if mode is not None:
            path.chmod(mode)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A directory the runner owns (not under root's private pytest directory)."""
    if not ROOT:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="cdnreq-preflight-", dir="/tmp"))
    try:
        path.chmod(0o755)
        give(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def site(home: Path) -> Site:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no answer

    client, other = ca.issue_cert("slappart0.example.org"), ca.issue_cert("other.example.org")
    files = {"ca.crt": ca.cert_pem, "partition.crt": client.cert_chain_pems[0],
             "partition.key": client.private_key_pem, "other.key": other.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(home / name))
        give(home / name, mode=0o600)

    calls: list[tuple[str, dict | None]] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append((request.match_info["name"], request.transport.get_extra_info("peercert")))
        if request.match_info["name"] == LIST_HOSTED:
            return web.json_response({"result_list": []})
        return web.json_response({"status": 404, "title": "not here"}, status=404)

    app = web.Application()
    app.router.add_post("/{name}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_context)
    try:
        yield Site(home, str(server.make_url("/")), home / "ca.crt", home / "partition.crt",
                   home / "partition.key", home / "other.key", ca, calls)
    finally:
        await server.close()


async def cdnreq(command: str, config: Path, timeout: float = 60) -> tuple[int, str, str]:
    argv = [sys.executable, "-m", "cdnreq.cli", command, "--config", str(config)]
    if ROOT:
        argv = ["setpriv", f"--reuid={RUNNER}", f"--regid={RUNNER}", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k != "CDNREQ_CONFIG"}
    env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=config.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


# -- the refusals ---------------------------------------------------------------------------------

Case = Callable[[Site], tuple[Path, list[str]]]


def _garbage(site: Site, name: str) -> Path:
    path = site.home / name
    path.write_text("this is not PEM\n")
    give(path, mode=0o600)
    return path


def _unreadable(path: Path) -> Path:
    if ROOT:
        os.chown(path, 0, 0)  # root's, mode 0600: nobody cannot read it
    else:
        path.chmod(0)
    return path


def wrong_key(site: Site):
    return site.config(master={"key_file": str(site.other_key)}), [
        "[master].key_file:", str(site.other_key), "not the key of the certificate"]


def cert_not_pem(site: Site):
    path = _garbage(site, "garbage.crt")
    return site.config(master={"cert_file": str(path)}), ["[master].cert_file:", str(path), "no PEM certificate"]


def key_not_pem(site: Site):
    path = _garbage(site, "garbage.key")
    return site.config(master={"key_file": str(path)}), ["[master].key_file:", str(path), "not a PEM private key"]


def ca_not_pem(site: Site):
    path = _garbage(site, "garbage-ca.crt")
    return site.config(master={"ca_file": str(path)}), ["[master].ca_file:", str(path), "no PEM certificate"]


def key_unreadable(site: Site):
    return site.config(), ["[master].key_file:", str(_unreadable(site.key_file)), "not readable"]


def cert_missing(site: Site):
    path = site.home / "missing.crt"
    return site.config(master={"cert_file": str(path)}), ["[master].cert_file:", str(path), "does not exist"]


def http_with_cert(site: Site):
    url = site.url.replace("https://", "http://")
    return site.config(master={"url": url}), ["[master].url:", url, "not https://", "cert_file"]


def http_with_ca_only(site: Site):
    url = site.url.replace("https://", "http://")
    return (site.config(master={"url": url, "cert_file": None, "key_file": None}),
            ["[master].url:", url, "not https://", "ca_file"])


def token_empty(site: Site):
    path = site.home / "token"
    path.write_text("\n")
    give(path, mode=0o600)
    return site.config(daemon={"token_file": str(path)}), ["[daemon].token_file:", str(path), "is empty"]


def token_unreadable(site: Site):
    path = site.home / "token"
    path.write_text("t" * 32)
    give(path, mode=0o600)
    _unreadable(path)
    return site.config(daemon={"token_file": str(path)}), ["[daemon].token_file:", str(path), "not readable"]


def listen_without_token(site: Site):
    listen = f"0.0.0.0:{free_port()}"
    return site.config(daemon={"listen": listen}), ["[daemon].listen:", listen, "token_file"]


def secret_world_readable(site: Site):
    path = site.home / "domain-secret"
    path.write_text("s" * 64 + "\n")
    give(path, mode=0o644)
    return site.config(domain={"secret_file": str(path)}), ["[domain].secret_file:", str(path), "0644"]


def secret_too_short(site: Site):
    path = site.home / "domain-secret"
    path.write_text("short\n")
    give(path, mode=0o600)
    return site.config(domain={"secret_file": str(path)}), ["[domain].secret_file:", str(path), "too short"]


def database_dir_read_only(site: Site):
    state = site.home / "state"
    state.mkdir()
    give(state, mode=0o555)
    return site.config(), ["[daemon].database:", str(state / "cdnreq.db"), "not writable"]


def backup_dir_read_only(site: Site):
    backups = site.home / "backups"
    backups.mkdir()
    give(backups, mode=0o555)
    return site.config(store={"backup_dir": str(backups)}), ["[store].backup_dir:", str(backups), "not writable"]


CASES = [wrong_key, cert_not_pem, key_not_pem, ca_not_pem, key_unreadable, cert_missing, http_with_cert,
         http_with_ca_only, token_empty, token_unreadable, listen_without_token, secret_world_readable,
         secret_too_short, database_dir_read_only, backup_dir_read_only]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_check_config_once_and_run_refuse_alike(site: Site, case: Case) -> None:
    config, words = case(site)
    results = dict(zip(("check-config", "once", "run"),
                       await asyncio.gather(*(cdnreq(c, config) for c in ("check-config", "once", "run")))))
    for command, (code, out, err) in results.items():
        assert code == 2, f"{command}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err, err
        assert err.startswith(HEADER), f"{command}:\n{err}"
        for word in words:
            assert word in err, f"{command}: {word!r} not in:\n{err}"
    # the same words, whichever command met them
    assert results["check-config"][2] == results["once"][2] == results["run"][2]
    assert site.calls == [], "nothing may reach the master"
    assert not (site.home / "state" / "cdnreq.db").exists(), "nothing may be written"


# -- what works ----------------------------------------------------------------------------------


async def test_once_works_over_tls_with_the_right_client_certificate(site: Site) -> None:
    config = site.config()
    code, out, err = await cdnreq("check-config", config)
    assert code == 0, err
    assert str(site.cert_file) in out
    code, _, err = await cdnreq("once", config)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    names = [name for name, _ in site.calls]
    assert names == [LIST_HOSTED]
    peer = site.calls[0][1]
    assert peer is not None and ("DNS", "slappart0.example.org") in peer["subjectAltName"]


async def test_a_missing_secret_is_accepted_when_its_directory_is_writable(site: Site) -> None:
    """The default secret is created (0600) at the first tick: a fresh machine starts."""
    code, _, err = await cdnreq("check-config", site.config())
    assert code == 0, err
    (site.home / "state").mkdir()
    give(site.home / "state", mode=0o555)
    code, _, err = await cdnreq("check-config", site.config())
    assert code == 2 and "[domain].secret_file (default: beside [daemon].database):" in err, err


async def test_a_reload_that_run_would_refuse_is_refused(site: Site) -> None:
    """SIGHUP with a certificate replaced by garbage: refused in the log with
    the check-config words, and the running configuration keeps working."""
    config = site.config()
    argv = [sys.executable, "-m", "cdnreq.cli", "run", "--config", str(config)]
    if ROOT:
        argv = ["setpriv", f"--reuid={RUNNER}", f"--regid={RUNNER}", "--clear-groups", *argv]
    env = {k: v for k, v in os.environ.items() if k != "CDNREQ_CONFIG"}
    env.update(PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    log = site.home / "run.log"
    with open(log, "wb") as sink:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=sink, stderr=sink)
    try:
        await _until(lambda: len(site.calls) >= 1, process, log)
        new_cert = _garbage(site, "replaced.crt")
        config = site.config(master={"cert_file": str(new_cert)})
        _, expected, _ = await cdnreq("check-config", config)
        process.send_signal(signal.SIGHUP)
        await _until(lambda: "configuration refused" in log.read_text(), process, log)
        seen = len(site.calls)
        await _until(lambda: len(site.calls) > seen, process, log)  # still ticking, over TLS
        text = log.read_text()
        assert "[master].cert_file:" in text and str(new_cert) in text and "no PEM certificate" in text
        problem = expected.removeprefix(HEADER).strip()
        assert problem.replace("\\", "\\\\").replace('"', '\\"') in text, (problem, text[-3000:])
        assert all(peer is not None for _, peer in site.calls)

        # the certificate renewed in place (same paths): a reload takes it
        renewed = site.ca.issue_cert("renewed.example.org")
        renewed.cert_chain_pems[0].write_to_path(str(site.cert_file))
        renewed.private_key_pem.write_to_path(str(site.key_file))
        site.config()
        process.send_signal(signal.SIGHUP)
        await _until(lambda: any(_san(peer) == "renewed.example.org" for _, peer in site.calls), process, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 60)
    assert process.returncode == 0, log.read_text()[-3000:]


def _san(peer: dict | None) -> str | None:
    return dict((peer or {}).get("subjectAltName", ())).get("DNS")


async def _until(condition: Callable[[], bool], process, log: Path, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if process.returncode is not None:
            pytest.fail(f"cdnreq exited {process.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


def test_the_unit_runs_check_config_before_run_on_the_same_file() -> None:
    """ExecStartPre refuses to start what run would refuse (as the service user, no '-' prefix)."""
    lines = (REPO / "systemd" / "cdnreq.service").read_text().splitlines()
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStartPre", "ExecStart"):
            values[key] = value.split()
    pre, start = values["ExecStartPre"], values["ExecStart"]
    assert pre[0][0] not in "-+!:@", "a failed check must stop the start, as the service user"
    assert pre[1] == "check-config" and start[1] == "run" and pre[0] == start[0]
    assert pre[pre.index("--config") + 1] == start[start.index("--config") + 1]


# -- the TLS checks, in process --------------------------------------------------------------------


def test_tls_files_in_the_forms_operators_have(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from cdnreq.config import MasterConfig
    from cdnreq.mastertls import client_context, tls_problems

    ca = trustme.CA()
    cert = ca.issue_cert("slappart0.example.org")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    (tmp_path / "enc.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))

    def master(**files: Path) -> MasterConfig:
        return MasterConfig(url="https://master.example/", instance_guid="g", **{k: str(v) for k, v in files.items()})

    combined = master(cert_file=tmp_path / "both.pem", key_file=tmp_path / "k.pem")  # key and chain in one file
    assert tls_problems(combined) == [] and client_context(combined) is not None
    assert tls_problems(master(cert_file=tmp_path / "c.pem", key_file=tmp_path / "enc.pem")) == [
        f"[master].key_file: {tmp_path / 'enc.pem'} is encrypted; cdnreq needs an unencrypted key"]
    assert tls_problems(master(cert_file=tmp_path, key_file=tmp_path / "k.pem")) == [
        f"[master].cert_file: {tmp_path} is a directory, not a file"]
    assert "no PEM certificate" in tls_problems(master(ca_file=tmp_path / "k.pem"))[0]
    upper = MasterConfig(url="HTTPS://master.example/", instance_guid="g", ca_file=str(tmp_path / "c.pem"))
    assert tls_problems(upper) == [] and client_context(upper) is not None
