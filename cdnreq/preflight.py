"""Every start-up check beyond the file's own syntax: the one home of them.

`check-config` (the unit's ExecStartPre), `once`, `run` and a SIGHUP reload
all call `check()`, so a file that `check-config` accepts is one `run`
accepts, with the same messages and exit code 2 when it is not. Each
message names the key and the value (`[domain].secret_file: /x is ...`).
The checks read files and ask the kernel about access; they write nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cdnreq.config import Config
from cdnreq.configfile import ConfigError
from cdnreq.consumers import read_consumers
from cdnreq.listen import needs_token
from cdnreq.fsaccess import open_mode, read_file, unwritable_dir
from cdnreq.mastertls import TlsConfigError, client_context, tls_problems

TOKEN_MIN_CHARS = 16
SECRET_MIN_BYTES = 16


def read_token(config: Config) -> str | None:
    """The bearer token of the HTTP endpoint, when one is configured; ConfigError otherwise."""
    path = config.daemon.token_file
    if path is None:
        return None
    data, why = read_file(path)
    if why is not None:
        raise ConfigError(str(path), [f"[daemon].token_file: {why}"])
    token = (data or b"").decode("utf-8", "replace").strip()
    if not token:
        raise ConfigError(str(path), [f"[daemon].token_file: {path} is empty"])
    if len(token) < TOKEN_MIN_CHARS:
        raise ConfigError(
            str(path), [f"[daemon].token_file: the token in {path} is shorter than {TOKEN_MIN_CHARS} characters"]
        )
    return token


def problems(config: Config) -> list[str]:
    """Everything `run` would refuse or trip on, one line each; [] when none."""
    found = list(tls_problems(config.master))
    found += _endpoint(config)
    found += _secret(config)
    found += _directories(config)
    found += _consumers(config)
    return found


def check(config: Config, path: str | Path) -> ssl.SSLContext | None:
    """Raise ConfigError (exit 2) listing every problem, or return the TLS
    context for the master (None for http://), built once here so that no
    tick ever trips on a certificate."""
    found = problems(config)
    if found:
        raise ConfigError(str(path), found)
    return _context(config, path)


def master_context(config: Config, path: str | Path) -> ssl.SSLContext | None:
    """Only the master's TLS context, for the commands that create nothing
    (`plan`, a local `forget`) and so skip the checks of what `run` writes:
    a bad certificate is refused naming the key (exit 2), not found by the
    first call as an SSLError inside a tick."""
    return _context(config, path)


def _context(config: Config, path: str | Path) -> ssl.SSLContext | None:
    try:
        return client_context(config.master)
    except TlsConfigError as error:
        raise ConfigError(str(path), error.problems) from None


def _endpoint(config: Config) -> list[str]:
    try:
        token = read_token(config)
    except ConfigError as error:
        return list(error.problems)
    listen = config.daemon.listen_endpoint()
    if token is None and needs_token(listen):
        return [
            f"[daemon].listen: {config.daemon.listen} is not loopback; set [daemon].token_file"
            " (the endpoint would be open to the network without a token)"
        ]
    if isinstance(listen, Path):  # run binds the socket there and creates no directory
        if not listen.parent.is_dir():
            return [f"[daemon].listen: {listen}: its directory {listen.parent} does not exist"]
        why = unwritable_dir(listen.parent)
        if why is not None:
            return [f"[daemon].listen: {listen}: its directory {why}"]
    return []


def _consumers(config: Config) -> list[str]:
    try:
        token = read_token(config)
    except ConfigError:
        token = None  # said by _endpoint
    return read_consumers(config, token)[1]


def _secret(config: Config) -> list[str]:
    path = config.secret_path()
    key = "[domain].secret_file" + ("" if config.domain.secret_file else " (default: beside [daemon].database)")
    if not path.exists() and not path.is_symlink():
        why = unwritable_dir(path.parent)
        return [] if why is None else [f"{key}: {path} does not exist and cannot be created: {why}"]
    data, why = read_file(path)
    if why is not None:
        return [f"{key}: {why}"]
    found = []
    if len((data or b"").strip()) < SECRET_MIN_BYTES:
        found.append(f"{key}: {path} is too short (at least {SECRET_MIN_BYTES} bytes)")
    mode = open_mode(path)
    if mode is not None:
        found.append(f"{key}: {path} has mode {mode}: others than its owner may read it; chmod 600 it")
    return found


def _directories(config: Config) -> list[str]:
    found = []
    why = unwritable_dir(config.daemon.database.parent)
    if why is not None:
        found.append(f"[daemon].database: {config.daemon.database}: its directory {why}")
    backups = config.backup_path()
    why = unwritable_dir(backups)
    if why is not None:
        key = "[store].backup_dir" + ("" if config.store.backup_dir else " (default: backups/ beside [daemon].database)")
        found.append(f"{key}: {why}")
    return found
