"""What a SIGHUP changes: decided from the running and the new
configuration alone, applied by the daemon from the next tick."""

from __future__ import annotations

from dataclasses import dataclass

from cdnreq.config import Config
from cdnreq.fdlimit import limits_of
from cdnreq.wiring import master_inputs


@dataclass(frozen=True)
class Reload:
    """`config` runs from the next tick; `restart` names the changed keys
    that apply only after a restart (kept at their running values); the
    flags say which clients must be built again."""

    config: Config
    restart: tuple[str, ...]
    new_master: bool
    new_resolver: bool
    new_logging: bool


def reload_of(running: Config, new: Config) -> Reload:
    restart = tuple(
        key
        for key, old, now in (
            ("[daemon].database", running.daemon.database, new.daemon.database),
            ("[store].url and its connection", _connection(running), _connection(new)),
            ("[daemon].listen", running.daemon.listen, new.daemon.listen),
            ("[daemon].token_file", running.daemon.token_file, new.daemon.token_file),
            ("[domain].secret_file", running.domain.secret_file, new.domain.secret_file),
            ("[daemon].http_*", limits_of(running), limits_of(new)),
        )
        if old != now
    )
    if restart:
        new = keep_running(new, running)
    # TLS files are read again at each reload: a renewed certificate at the same path is taken
    renewed = new.master.cert_file is not None or new.master.ca_file is not None
    return Reload(
        config=new,
        restart=restart,
        new_master=renewed or master_inputs(new) != master_inputs(running),
        new_resolver=new.dns != running.dns,
        new_logging=new.logging != running.logging,
    )


def keep_running(new: Config, running: Config) -> Config:
    """`new` with the keys that apply only after a restart at their running
    values: what is derived from them (the domain secret's path, the
    backups' directory) must not move under the open store, or the next
    reload of the store's state would read, or create, another secret."""
    store = new.store.model_copy(update={k: getattr(running.store, k) for k in _CONNECTION})
    daemon = new.daemon.model_copy(update={
        "database": running.daemon.database, "listen": running.daemon.listen,
        "token_file": running.daemon.token_file,
    })  # fmt: skip
    domain = new.domain.model_copy(update={"secret_file": running.domain.secret_file})
    return new.model_copy(update={"daemon": daemon, "domain": domain, "store": store})


_CONNECTION = ("url", "password_file", "sslmode", "ssl_ca_file", "node_name")


def _connection(config: Config) -> tuple:
    """What the open store was connected with: changed, it applies after a restart."""
    return tuple(getattr(config.store, k) for k in _CONNECTION)
