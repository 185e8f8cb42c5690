"""The configuration file (docs/config-spec.md): parsed, validated, refused.

Configuration is refused loudly and early. A daemon that destroys entries on a
technical CDN must never run on a value it guessed: a typo'd key (`urll`), a
string where a number belongs (`timeout_s = "30"`) or a half-given pair
(`cert_file` without `key_file`) must never silently fall back to a default.
So every model forbids unknown keys, types are strict (no "30" -> 30.0
coercion), and every problem is reported at once, one line each, as
``<file>: [section].key: <problem> (got <value>)`` -- never as a pydantic
traceback.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit


from cdnreq.dns.names import parse_nameserver
from cdnreq.model import ChangeKind
from cdnreq.listen import TcpListen, parse_listen
from cdnreq.validate.policy import DEFAULT_BACKEND_DENY, ValidationPolicy, networks
from cdnreq.decide.guards import CONFIRM_TICKS
from cdnreq.decide.leadership import timing_error
from cdnreq.store.url import SqliteAt, StoreUrlError, parse_store_url
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "Config",
    "DaemonConfig",
    "LoggingConfig",
    "MasterConfig",
    "TechnicalCdnConfig",
    "TcpListen",
    "ValidationConfig",
    "config_json_schema",
]

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)

ChangeKindName = Literal[tuple(k.value for k in ChangeKind)]  # type: ignore[valid-type]


def _fail(key: str | tuple[str, ...], problem: str, value: Any) -> PydanticCustomError:
    """A cross-field error, pinned to `key` (the loc of a model validator is
    the model itself) and carrying the offending value."""
    escaped = problem.replace("{", "{{").replace("}", "}}")
    return PydanticCustomError("cdnreq", escaped, {"cdnreq_key": key, "cdnreq_value": value})


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths are relative to the configuration file's directory
    (passed as validation context by load_config); without a context they are
    left as given."""
    if value is None:
        return None
    if str(value) in ("", "."):
        raise PydanticCustomError("empty_path", "must not be empty")
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        value = Path(os.path.normpath(os.path.join(base, value)))
    return value


# --------------------------------------------------------------------------
# models


class MasterConfig(BaseModel):
    """The SlapOS master whose JSON API lists the customers' shared instances."""

    model_config = _MODEL_CONFIG

    url: str = Field(
        description="http or https base URL of the master's JSON API (https when cert_file or"
        " ca_file is set)",
        examples=["https://slap.example.org/api/"],
        json_schema_extra={"pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+"},
    )
    instance_guid: str = Field(
        min_length=1,
        description="the requester instance hosting the customers' shared instances",
        examples=["SOFTINST-100"],
    )
    computer_id: str | None = Field(
        default=None, min_length=1, description="with partition_id, sends the slapproxy header",
        examples=["COMP-1"],
    )
    partition_id: str | None = Field(
        default=None, min_length=1, description="with computer_id, sends the slapproxy header",
        examples=["slappart0"],
    )
    cert_file: Path | None = Field(
        default=None, strict=False,
        description="TLS client certificate, PEM (needs key_file and an https url)",
        examples=["/etc/cdnreq/partition.crt"],
    )
    key_file: Path | None = Field(
        default=None, strict=False,
        description="TLS client key, unencrypted PEM, matching cert_file",
        examples=["/etc/cdnreq/partition.key"],
    )
    ca_file: Path | None = Field(
        default=None,
        strict=False,
        description="CA bundle (PEM) to verify the master (default: system CAs)",
        examples=["/etc/cdnreq/master-ca.crt"],
    )
    timeout_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="seconds one call to the master may take"
    )
    max_listing_bytes: int = Field(
        default=1 << 30,
        ge=1024,
        description="the largest answer read from the master (the listing is the largest);"
        " a larger listing fails the tick",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
            parts.port  # raises ValueError on a bad port
        except ValueError as exc:
            raise PydanticCustomError("url", "not a valid URL: {reason}", {"reason": str(exc)})
        if parts.scheme not in ("http", "https"):
            raise PydanticCustomError("url_scheme", "must be an http:// or https:// URL")
        if not host:
            raise PydanticCustomError("url_host", "URL has no host")
        return value

    _resolve = field_validator("cert_file", "key_file", "ca_file")(_resolve_path)

    @model_validator(mode="after")
    def _check_pairs(self) -> MasterConfig:
        if (self.cert_file is None) != (self.key_file is None):
            if self.cert_file is not None:
                raise _fail("cert_file", "needs key_file as well", str(self.cert_file))
            raise _fail("key_file", "needs cert_file as well", str(self.key_file))
        if (self.computer_id is None) != (self.partition_id is None):
            if self.computer_id is not None:
                raise _fail("computer_id", "needs partition_id as well", self.computer_id)
            raise _fail("partition_id", "needs computer_id as well", self.partition_id)
        return self

    def partition_header(self) -> str | None:
        """The slapproxy `Authorization` header value, when both ids are set."""
        if self.computer_id is None or self.partition_id is None:
            return None
        return (
            f"X-SlapPartition computer_id={self.computer_id}, "
            f"computer_partition_id={self.partition_id}"
        )


class TechnicalCdnConfig(BaseModel):
    """The technical CDN (rapid-cdn) the requester orders entries on."""

    model_config = _MODEL_CONFIG

    software_release_uri: str = Field(
        min_length=1,
        description="the software release of the technical CDN (rapid-cdn) entries are requested on",
        examples=["https://lab.example.org/software/rapid-cdn/software.cfg"],
    )
    software_type: str = Field(
        default="default", min_length=1, description="software type of the technical entries"
    )
    request_prefix: str = Field(
        default="cdnreq-",
        description="titles are request_prefix + customer instance_guid",
    )
    sla: dict[str, str] = Field(
        default_factory=dict, description="table of strings; sent as sla_parameters",
        examples=[{"computer_guid": "COMP-1"}],
    )
    host_instance_guid: str | None = Field(
        default=None,
        min_length=1,
        description="the technical CDN instance that hosts the entries: `cdnreq orphans` and"
        " `cdnreq import-legacy` list what it hosts (read-only)",
        examples=["SOFTINST-42"],
    )


class DaemonConfig(BaseModel):
    """The daemon: its schedule, its store, its HTTP endpoint and its guards."""

    model_config = _MODEL_CONFIG

    tick_interval_s: float = Field(
        default=60.0, gt=0, allow_inf_nan=False,
        description="seconds from the start of one tick to the start of the next",
    )
    concurrency: int = Field(default=8, ge=1, le=1024, description="calls to the master in flight")
    admit_per_tick: int = Field(
        default=20_000, ge=0,
        description="never-seen instances one tick takes on at most; the rest wait, first seen first,"
        " for the next tick, which starts at once (bounds a first reconcile's memory); 0: no limit",
    )
    read_backs_per_tick: int = Field(
        default=2_000, ge=1, le=10_000_000,
        description="periodic read-backs (of live entries, and of customers' instances) one tick makes at most;"
        " the others wait for the next ticks, so a daemon back from a long stop, or a verify_interval_s made"
        " shorter, spreads them instead of one tick making them all",
    )
    database: Path = Field(
        default=Path("/var/lib/cdnreq/cdnreq.db"), strict=False,
        description="the SQLite store; its directory must be writable",
    )
    listen: str = Field(
        default="127.0.0.1:9780",
        description="host:port, [v6]:port, or an absolute unix socket path",
    )
    allow_empty: bool = Field(
        default=False, description="allow destroying everything when the master lists nothing"
    )
    max_destroy_fraction: float = Field(
        default=0.5, gt=0, le=1,
        description="removals are held when the instances gone (over removal_window_s) reach this"
        " fraction of the known ones",
    )
    removal_window_s: float = Field(
        default=3600.0, ge=0, allow_inf_nan=False,
        description="departures decided this long ago still count against max_destroy_fraction",
    )
    max_update_fraction: float = Field(
        default=0.2, gt=0, le=1,
        description="updates of live instances asked by the master in one tick are held when they reach"
        " this fraction of the live ones (and min_update_hold); so are removals when the entries listed"
        " destroyed reach it",
    )
    min_update_hold: int = Field(
        default=2, ge=1,
        description="fewer updates in one tick than this are never a mass change (one customer's"
        " own edit never waits on the guard)",
    )
    confirm_ticks: int = Field(
        default=CONFIRM_TICKS, ge=1,
        description="a held update is applied once seen for this many consecutive ticks (or on"
        " `cdnreq approve`); a host an instance stops naming is released after as many",
    )
    retry_base_s: float = Field(
        default=60.0, gt=0, allow_inf_nan=False, description="first backoff after a failed call"
    )
    retry_max_s: float = Field(
        default=3600.0, gt=0, allow_inf_nan=False, description="backoff cap, >= retry_base_s"
    )
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False,
        description="at SIGTERM, how long the calls in flight may finish before they are cancelled",
    )
    verify_interval_s: float = Field(
        default=86400.0,
        ge=0,
        allow_inf_nan=False,
        description="how often a live technical entry is read back to check it is still there, and a"
        " customer's instance to check it still holds what it was told (live or not); 0 disables",
    )
    token_file: Path | None = Field(
        default=None,
        strict=False,
        description="bearer token the HTTP endpoint requires (but for /healthz); needed when"
        " listen is not loopback",
        examples=["/etc/cdnreq/token"],
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, allow_inf_nan=False,
        description="the endpoint cuts a connection whose request head is not complete this long"
        " after it was accepted (or after the head's first byte)",
    )
    http_idle_timeout_s: float = Field(
        default=15.0, gt=0, le=3600, allow_inf_nan=False,
        description="the endpoint closes a keep-alive connection idle this long",
    )
    http_max_connections: int = Field(
        default=256, ge=1, le=65536,
        description="connections the endpoint keeps open at most; a new one takes the place of"
        " the oldest that has not sent a request yet (lowered at start to fit RLIMIT_NOFILE)",
    )

    _resolve = field_validator("database", "token_file")(_resolve_path)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @model_validator(mode="after")
    def _check_retry(self) -> DaemonConfig:
        if self.retry_max_s < self.retry_base_s:
            raise _fail(
                "retry_max_s",
                f"must be >= retry_base_s ({self.retry_base_s!r})",
                self.retry_max_s,
            )
        return self

    def listen_endpoint(self) -> TcpListen | Path:
        """`listen` parsed: (host, port) for TCP, or the unix socket path."""
        return parse_listen(self.listen)


class LoggingConfig(BaseModel):
    """Log lines on stderr."""

    model_config = _MODEL_CONFIG

    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise"
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="case-insensitive"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class DomainConfig(BaseModel):
    """Proof of domain ownership, re-checks, and how long a removed entry keeps its hosts."""

    model_config = _MODEL_CONFIG

    secret_file: Path | None = Field(
        default=None,
        strict=False,
        description="HMAC secret for challenge tokens (16+ bytes, mode 0600); default:"
        " domain-secret beside the database, created (mode 0600) when missing",
        examples=["/var/lib/cdnreq/domain-secret"],
    )
    challenge_label: str = Field(
        default="_slapos-challenge",
        pattern=r"^_?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="the TXT record is <challenge_label>.<host>",
    )
    recheck_interval_s: float = Field(
        default=86400.0, gt=0, allow_inf_nan=False,
        description="how often a proven host is checked again (challenge or cdn_targets)",
    )
    cdn_targets: list[str] = Field(
        default_factory=list,
        description="CNAME targets and addresses of the CDN; when set, a re-check passes"
        " if the host points at one of them",
        examples=[["cdn.example.net", "192.0.2.10"]],
    )
    grace_s: float = Field(
        default=7 * 86400.0, ge=0, allow_inf_nan=False,
        description="how long a re-check may fail before the host can be released (see"
        " release_on_recheck_failure)",
    )
    release_on_recheck_failure: bool = Field(
        default=False,
        description="release a host whose re-checks failed for grace_s (its entry goes back to"
        " pending); default: keep it and warn the customer",
    )
    retention_s: float = Field(
        default=90 * 86400.0,
        ge=0,
        allow_inf_nan=False,
        description="how long an instance gone from the master keeps its technical entry and hosts",
    )

    _resolve = field_validator("secret_file")(_resolve_path)


class LegacyConfig(BaseModel):
    """The cron requester cdnreq replaces (recipes of slapos.cookbook): what `cdnreq import-legacy` and `cdnreq orphans` need to know of it."""

    model_config = _MODEL_CONFIG

    request_prefix: str | None = Field(
        default=None,
        min_length=1,
        description="its request-name-prefix: its titles are this prefix + the customer's"
        " reference; `cdnreq orphans` looks under it too",
        examples=["_cdnreq_"],
    )
    reference_style: Literal["guid", "slapproxy"] = Field(
        default="guid",
        description="how its references name customers: guid (a production master: the"
        " reference is the instance_guid) or slapproxy (`<requested_by>_<title>` for the guid"
        " `<title>___<requested_by>___1`)",
    )


class DnsConfig(BaseModel):
    """The resolver used for challenges."""

    model_config = _MODEL_CONFIG

    nameservers: list[str] = Field(
        default_factory=list,
        description="ip or ip:port ([v6]:port); empty: the system resolver",
        examples=[["192.0.2.53", "[2001:db8::53]:53"]],
    )
    concurrency: int = Field(default=256, ge=1, le=4096, description="lookups in flight")
    timeout_s: float = Field(default=2.0, gt=0, allow_inf_nan=False, description="per try")
    tries: int = Field(default=2, ge=1, le=10, description="tries per lookup")

    @field_validator("nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for server in value:
            try:
                parse_nameserver(server)
            except ValueError as error:
                raise PydanticCustomError("nameserver", "{reason}", {"reason": str(error)}) from None
        return value


class StoreConfig(BaseModel):
    """Where the store is (SQLite, or PostgreSQL for several nodes with one
    leader), its backups (what proves which customer owns which host) and how
    long its history is kept."""

    model_config = _MODEL_CONFIG

    url: str | None = Field(
        default=None,
        description="sqlite:///ABSOLUTE/PATH (default: [daemon].database) or"
        " postgresql://USER@HOST[:PORT]/DATABASE: every node pointed at one database, one leads",
        examples=["postgresql://cdnreq@db.example.net/cdnreq"],
    )
    password_file: Path | None = Field(
        default=None, strict=False,
        description="PostgreSQL: a file whose first line is the password (never in the URL)",
        examples=["/etc/cdnreq/db-password"],
    )
    sslmode: Literal["disable", "require", "verify-ca", "verify-full"] = Field(
        default="verify-full",
        description="PostgreSQL: TLS to the server, as libpq's sslmode (disable only on loopback or a"
        " trusted network)",
    )
    ssl_ca_file: Path | None = Field(
        default=None, strict=False,
        description="PostgreSQL: the CA certificates verifying the server (default: the system's)",
        examples=["/etc/cdnreq/db-ca.pem"],
    )
    lease_s: float = Field(
        default=15.0, gt=0, le=600, allow_inf_nan=False,
        description="PostgreSQL: the leader lease; a node that cannot renew it stops calling the master"
        " before it expires, and another node takes over after it",
    )
    renew_s: float = Field(
        default=5.0, gt=0, le=300, allow_inf_nan=False,
        description="PostgreSQL: how often the leader renews its lease and a standby tries to take it",
    )
    loop_stall_s: float = Field(
        default=120.0, gt=0, le=3600, allow_inf_nan=False,
        description="PostgreSQL: the leader's lease is renewed from a thread of its own while a big tick keeps"
        " the event loop busy, but no longer once the loop has not answered for this long (hung): another node"
        " then takes over. At most the systemd WatchdogSec",
    )
    node_name: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="PostgreSQL: this node's name in the lease and /status (default: the host name)",
        examples=["cdnreq-1"],
    )

    backup_dir: Path | None = Field(
        default=None,
        strict=False,
        description="where online backups of the database go; default: backups/ beside the database",
        examples=["/var/backups/cdnreq"],
    )
    backup_interval_s: float = Field(
        default=6 * 3600.0, ge=0, allow_inf_nan=False, description="0 disables scheduled backups"
    )
    backup_keep: int = Field(default=14, ge=1, le=10000, description="how many backups to keep")
    events_retention_days: int = Field(
        default=30,
        ge=0,
        le=3650,
        description="events and ticks older than this many days are deleted, in small batches"
        " off the tick's path (an instance's newest event of each action and the last 10 ticks"
        " are kept); 0 keeps everything",
    )

    _resolve = field_validator("backup_dir", "password_file", "ssl_ca_file")(_resolve_path)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_store_url(value)
            except StoreUrlError as error:
                raise PydanticCustomError("store_url", "{reason}", {"reason": str(error)}) from None
        return value

    @model_validator(mode="after")
    def _check_lease(self) -> StoreConfig:
        problem = timing_error(self.lease_s, self.renew_s)
        if problem is not None:
            raise _fail("renew_s", problem, self.renew_s)
        return self


class ValidationConfig(BaseModel):
    """What customers' parameters may hold before they reach the technical CDN."""

    model_config = _MODEL_CONFIG

    forward_unknown: bool = Field(
        default=False,
        description="forward parameters the schema does not know (default: dropped, with a"
        " warning); names that can carry a host (domain, alias, host, server-name) are"
        " refused either way",
    )
    max_parameters_bytes: int = Field(
        default=65536,
        ge=1024,
        description="the largest parameters of one instance, known and unknown keys together,"
        " as compact JSON; larger ones are refused for that instance",
    )
    backend_deny: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BACKEND_DENY),
        description="CIDR networks a backend address (url, https-url, failover urls,"
        " *-netloc-list) may not be in; numeric hosts and localhost names only, no DNS",
    )
    backend_allow: list[str] = Field(
        default_factory=list,
        description="CIDR networks allowed even when backend_deny covers them",
    )

    @field_validator("backend_deny", "backend_allow")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        try:
            networks(value)
        except ValueError as error:
            raise PydanticCustomError("cidr", "{reason}", {"reason": str(error)}) from None
        return value

    def policy(self) -> ValidationPolicy:
        return ValidationPolicy(
            forward_unknown=self.forward_unknown,
            max_parameters_bytes=self.max_parameters_bytes,
            backend_deny=networks(self.backend_deny),
            backend_allow=networks(self.backend_allow),
        )


class ConsumerConfig(BaseModel):
    """A system that follows the change feed (one [[consumer]] table each): the token it reads GET /changes with, what it may see, and where its webhooks go."""

    model_config = _MODEL_CONFIG

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", description="the consumer's name, in /status,"
                      " metrics and `cdnreq webhooks`", examples=["billing"])
    token_file: Path | None = Field(default=None, strict=False, description="a file whose first line is the bearer"
                                    " token this"
                                    " consumer reads GET /changes with (it sees only its scope there)",
                                    examples=["/etc/cdnreq/consumers/billing.token"])
    kinds: list[ChangeKindName] = Field(default_factory=list, description="the kinds of change it receives"
                                        " (empty: every kind)", examples=[["live", "destroyed"]])
    instances: list[str] = Field(default_factory=list, description="the instance guids it may see (with"
                                 " instance_prefixes; both empty: every instance)", examples=[["SOFTINST-1"]])
    instance_prefixes: list[str] = Field(default_factory=list, description="guid prefixes it may see",
                                         examples=[["SOFTINST-9"]])
    title_prefixes: list[str] = Field(default_factory=list, description="prefixes of the customers' titles it may"
                                      " see, e.g. a reseller's naming. A customer chooses its title: scope by title"
                                      " only where the master keeps others from taking a reseller's prefix",
                                      examples=[["reseller-a/"]])
    url: str | None = Field(default=None, description="where its webhooks are POSTed (http or https); not set:"
                            " it only reads GET /changes", examples=["https://billing.example.net/hooks/cdn"])
    secret_file: Path | None = Field(default=None, strict=False, description="a file holding its Standard Webhooks"
                                     " signing"
                                     " secret (whsec_ then base64); required with url",
                                     examples=["/etc/cdnreq/consumers/billing.whsec"])
    max_retry_hours: float = Field(default=72.0, gt=0, le=720, description="how long a delivery is retried"
                                   " (exponential backoff with jitter) before it is dead-lettered")
    concurrency: int = Field(default=4, ge=1, le=64, description="deliveries in flight to it at once (one per"
                             " instance at a time, so each instance's changes arrive in order)")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="how long one delivery may take")

    _resolve = field_validator("token_file", "secret_file")(_resolve_path)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _fail(("consumer", "url"), "must be an http:// or https:// URL with a host", url)
            if parts.username or parts.password:
                raise _fail(("consumer", "url"), "must not hold credentials (the signature authenticates cdnreq)",
                            url)
        return url

    @field_validator("instances", "instance_prefixes", "title_prefixes")
    @classmethod
    def _no_empty_guid(cls, values: list[str], info: ValidationInfo) -> list[str]:
        field = ("consumer", str(info.field_name))
        if "" in values:
            raise _fail(field, "an empty guid or prefix would match every instance", values)
        longest = 200 if info.field_name == "title_prefixes" else 1000  # titles are kept to 256 characters
        odd = [v for v in values if len(v) > longest or not v.isprintable()]
        if odd:
            raise _fail(field, f"at most {longest} printable characters each", odd[0][:60])
        return values

    @model_validator(mode="after")
    def _something_to_get(self) -> ConsumerConfig:
        if self.url is not None and self.secret_file is None:
            raise _fail(("consumer", "secret_file"), f"consumer {self.name!r} has a url: its webhooks need a"
                        " secret_file", None)
        if self.url is None and self.token_file is None:
            raise _fail(("consumer", "token_file"), f"consumer {self.name!r} has neither url nor token_file",
                        None)
        return self

    def scoped(self) -> bool:
        """Whether it sees only some instances (otherwise every one)."""
        return bool(self.instances or self.instance_prefixes or self.title_prefixes)

    def covers(self, guid: str) -> bool:
        """Whether instance `guid` is in this consumer's scope of guids (titles are matched by the store)."""
        if not self.scoped():
            return True
        return guid in self.instances or any(guid.startswith(p) for p in self.instance_prefixes)


class WebhooksConfig(BaseModel):
    """Webhook deliveries of the change feed: what every consumer's url shares."""

    model_config = _MODEL_CONFIG

    allow_networks: list[str] = Field(default_factory=list, description="networks (CIDR) a webhook target may"
                                      " resolve to although not public (loopback, private, link-local, ...:"
                                      " refused by default)", examples=[["10.20.0.0/16"]])

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise _fail(("webhooks", "allow_networks"), "is not a network (CIDR, e.g. 10.20.0.0/16)",
                            value) from None
        return values


class Config(BaseModel):
    """The whole configuration file."""

    model_config = _MODEL_CONFIG

    master: MasterConfig = Field(description=MasterConfig.__doc__)
    technical_cdn: TechnicalCdnConfig = Field(description=TechnicalCdnConfig.__doc__)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description=DaemonConfig.__doc__)
    domain: DomainConfig = Field(default_factory=DomainConfig, description=DomainConfig.__doc__)
    dns: DnsConfig = Field(default_factory=DnsConfig, description=DnsConfig.__doc__)
    store: StoreConfig = Field(default_factory=StoreConfig, description=StoreConfig.__doc__)
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description=ValidationConfig.__doc__)
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description=LoggingConfig.__doc__)
    legacy: LegacyConfig = Field(default_factory=LegacyConfig, description=LegacyConfig.__doc__)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig, description=WebhooksConfig.__doc__)
    consumer: list[ConsumerConfig] = Field(default_factory=list, description=ConsumerConfig.__doc__)

    @model_validator(mode="after")
    def _consumers_apart(self) -> Config:
        names = [c.name for c in self.consumer]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise _fail(("consumer", "name"), "is given to two consumers", twice[0])
        return self

    @model_validator(mode="after")
    def _one_sqlite_file(self) -> Config:
        """A SQLite URL names the database [daemon].database would: both set must agree."""
        if self.store.url is not None:
            at = parse_store_url(self.store.url)
            if isinstance(at, SqliteAt):
                if "database" in self.daemon.model_fields_set and self.daemon.database != at.path:
                    raise _fail(("store", "url"), f"names another file than [daemon].database ({self.daemon.database})",
                                self.store.url)
                object.__setattr__(self.daemon, "database", at.path)
        return self

    def secret_path(self) -> Path:
        return self.domain.secret_file or self.daemon.database.parent / "domain-secret"

    def backup_path(self) -> Path:
        return self.store.backup_dir or self.daemon.database.parent / "backups"


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the configuration (validation mode)."""
    return Config.model_json_schema()
