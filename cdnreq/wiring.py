"""What each part of a tick is built from in the configuration: the
master client, the resolver, the planner's and the domain step's policies,
the executor's settings. One home, read by the daemon, `once`, `plan` and
the commands alike."""

from __future__ import annotations

import ssl
from typing import Awaitable, Callable

from cdnreq.config import Config
from cdnreq.decide.gate import DomainPolicy
from cdnreq.decide.plan import Policy, spec_hash
from cdnreq.dns.resolver import Resolver
from cdnreq.master import MasterClient, TlsFiles
from cdnreq.metrics import Metrics
from cdnreq.reconcile.execute import Settings


def master_client(
    config: Config, metrics: Metrics | None = None, ssl_context: ssl.SSLContext | None = None,
    may_call: Callable[[], str | None] | None = None,
    before_call: Callable[[], Awaitable[None]] | None = None,
) -> MasterClient:
    """The client for [master]; `ssl_context` is the one preflight.check built
    at start-up (without it, the TLS files are loaded at the first call)."""
    master = config.master
    return MasterClient(
        url=str(master.url),
        timeout_s=master.timeout_s,
        partition_header=master.partition_header(),
        ssl_context=ssl_context,
        tls=TlsFiles(
            cert_file=_path(master.cert_file),
            key_file=_path(master.key_file),
            ca_file=_path(master.ca_file),
        ),
        max_connections=config.daemon.concurrency + 2,
        max_listing_bytes=master.max_listing_bytes,
        max_parameters_bytes=config.validation.max_parameters_bytes,
        observer=metrics.master_call if metrics is not None else None,
        may_call=may_call,
        before_call=before_call,
    )


def master_inputs(config: Config) -> tuple:
    """What master_client builds the client from: a reload that changes
    any of it needs a new client (the TLS files aside: read again anyway)."""
    return config.master, config.daemon.concurrency, config.validation.max_parameters_bytes


def _path(value: object) -> str | None:
    return None if value is None else str(value)


def policy_of(config: Config) -> Policy:
    cdn = config.technical_cdn
    return Policy(
        request_prefix=cdn.request_prefix,
        spec_hash=spec_hash(cdn.software_release_uri, cdn.software_type, cdn.sla),
        allow_empty=config.daemon.allow_empty,
        max_destroy_fraction=config.daemon.max_destroy_fraction,
        max_update_fraction=config.daemon.max_update_fraction,
        min_update_hold=config.daemon.min_update_hold,
        retention_s=config.domain.retention_s,
        verify_interval_s=config.daemon.verify_interval_s,
        read_backs_per_tick=config.daemon.read_backs_per_tick,
        retry_max_s=config.daemon.retry_max_s,
    )


def domain_policy_of(config: Config) -> DomainPolicy:
    domain = config.domain
    return DomainPolicy(
        label=domain.challenge_label,
        recheck_interval_s=domain.recheck_interval_s,
        grace_s=domain.grace_s,
        release_on_recheck_failure=domain.release_on_recheck_failure,
        cdn_targets=tuple(domain.cdn_targets),
        validation=config.validation.policy(),
    )


def resolver_of(config: Config) -> Resolver:
    dns = config.dns
    return Resolver(
        nameservers=dns.nameservers or None,
        timeout_s=dns.timeout_s,
        tries=dns.tries,
        concurrency=dns.concurrency,
    )


def settings_of(config: Config) -> Settings:
    cdn = config.technical_cdn
    return Settings(
        software_release_uri=cdn.software_release_uri,
        software_type=cdn.software_type,
        sla=dict(cdn.sla),
        spec_hash=spec_hash(cdn.software_release_uri, cdn.software_type, cdn.sla),
        retry_base_s=config.daemon.retry_base_s,
        retry_max_s=config.daemon.retry_max_s,
    )
