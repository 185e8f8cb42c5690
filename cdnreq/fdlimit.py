"""The process's file descriptor limit, raised at start and shared out.

Every master call, endpoint connection and database file takes a
descriptor; past the soft RLIMIT_NOFILE each of them fails. At start the
soft limit is raised to the hard one (the unit sets LimitNOFILE=65536), and
`[daemon].concurrency` and `[daemon].http_max_connections` are lowered,
with a warning, when they would not fit under it (cdnreq.resources.fit_fds).
"""

from __future__ import annotations

import resource

import structlog

from cdnreq.config import Config
from cdnreq.endpoint import ConnectionLimits
from cdnreq.resources import fit_fds

log = structlog.get_logger("cdnreq.daemon")

# When the hard limit is unlimited, the soft one is raised this far.
UNLIMITED_TARGET = 65536


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("cannot raise RLIMIT_NOFILE", soft=soft, hard=hard, error=str(error))
    return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft


def fit_config(config: Config, limit: int) -> Config:
    """`config` with concurrency and the endpoint's connection cap lowered to fit `limit`."""
    daemon = config.daemon
    fit = fit_fds(limit, daemon.concurrency, daemon.http_max_connections)
    if not fit.capped:
        return config
    for reason in fit.capped:
        log.warning("lowered to fit the file descriptor limit", reason=reason, rlimit_nofile=limit)
    daemon = daemon.model_copy(
        update={"concurrency": fit.concurrency, "http_max_connections": fit.http_connections}
    )
    return config.model_copy(update={"daemon": daemon})


def limits_of(config: Config) -> ConnectionLimits:
    daemon = config.daemon
    return ConnectionLimits(
        header_timeout_s=daemon.http_header_timeout_s,
        idle_timeout_s=daemon.http_idle_timeout_s,
        max_connections=daemon.http_max_connections,
    )
