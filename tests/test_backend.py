"""Backend addresses (issue 10, property 6): the deny-list, its allow-list, its
configuration, and a reload that changes it.

Pure functions only: no test here opens a connection to any address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from cdnreq.configfile import ConfigError, load_config
from cdnreq.model import SharedInstance
from cdnreq.reconcile.domains import Domains
from cdnreq.decide.gate import DomainPolicy, Status
from cdnreq.wiring import domain_policy_of
from cdnreq.validate.backend import NotAnAddress, host_addresses
from cdnreq.validate.policy import DEFAULT_BACKEND_DENY, ValidationPolicy, networks
from cdnreq.validate.verdict import validate

DENIED = "is not allowed ([validation].backend_deny)"
RUN: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def count_hostile():
    yield
    print(f"\ntest_backend: {len(RUN)} hostile backend addresses refused")


# every spelling of a denied address a URL parser or inet_aton accepts
HOSTILE_URLS = [
    ("http://127.0.0.1/", "127.0.0.1"),
    ("http://127.0.0.1:8080/admin", "127.0.0.1"),
    ("http://2130706433/", "127.0.0.1"),
    ("http://017700000001/", "127.0.0.1"),
    ("http://0x7f000001/", "127.0.0.1"),
    ("http://0x7f.0.0.1/", "127.0.0.1"),
    ("http://0x7F.1/", "127.0.0.1"),
    ("http://0177.0.0.1/", "127.0.0.1"),
    ("http://0177.1/", "127.0.0.1"),
    ("http://127.1/", "127.0.0.1"),
    ("http://127.0.1/", "127.0.0.1"),
    ("http://127.0.0.1./", "127.0.0.1"),
    ("http://%31%32%37.0.0.1/", "127.0.0.1"),
    ("http://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/", "127.0.0.1"),
    ("http://localhost/", "127.0.0.1"),
    ("http://LOCALHOST.:8080/", "127.0.0.1"),
    ("http://app.localhost/", "127.0.0.1"),
    ("http://localhost.localdomain/", "127.0.0.1"),
    ("http://user:pw@127.0.0.1/", "127.0.0.1"),
    ("http://backend.example@127.0.0.1/", "127.0.0.1"),
    ("http://a@b@10.0.0.1/", "10.0.0.1"),
    ("http://127.0.0.1\\@backend.example/", "127.0.0.1"),
    ("http://backend.example\\@127.0.0.1/", "127.0.0.1"),
    ("http://[::1]/", "::1"),
    ("http://[0:0:0:0:0:0:0:1]:80/", "::1"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "127.0.0.1"),
    ("http://[::127.0.0.1]/", "127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),
    ("http://[2002:a9fe:a9fe::1]/", "169.254.169.254"),
    ("http://[fe80::1%25eth0]/", "fe80::1"),
    ("http://[::]/", "::"),
    ("http://0.0.0.0/", "0.0.0.0"),
    ("http://0/", "0.0.0.0"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://2852039166/", "169.254.169.254"),
    ("http://10.1.2.3/", "10.1.2.3"),
    ("http://172.16.0.1/", "172.16.0.1"),
    ("http://172.31.255.255/", "172.31.255.255"),
    ("http://192.168.1.1/", "192.168.1.1"),
    ("http://100.64.0.1/", "100.64.0.1"),
    ("http://224.0.0.1/", "224.0.0.1"),
    ("http://255.255.255.255/", "255.255.255.255"),
    ("http://[fd00:ec2::254]/", "fd00:ec2::254"),
    ("http://[ff02::1]/", "ff02::1"),
    ("ftp://127.0.0.1/", "127.0.0.1"),
]
FIELDS = ["url", "https-url", "health-check-failover-url", "health-check-failover-https-url"]


@pytest.mark.parametrize(("url", "address"), HOSTILE_URLS)
@pytest.mark.parametrize("field", FIELDS)
def test_a_denied_backend_is_refused_in_any_spelling_naming_field_and_address(field, url, address) -> None:
    if field.endswith("https-url"):
        url = "https" + url[url.index("://"):]
    params = {"url": "https://backend.example", field: url}
    RUN.append(url)
    errors = validate(params).errors
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}: backend address {address} (") and errors[0].endswith(DENIED), errors


NETLOC_FIELDS = ["url-netloc-list", "https-url-netloc-list", "health-check-failover-url-netloc-list",
                 "health-check-failover-https-url-netloc-list"]


@pytest.mark.parametrize("field", NETLOC_FIELDS)
def test_every_netloc_entry_is_checked(field) -> None:
    params = {"url": "https://backend.example", field: "192.0.2.10:80 10.0.0.1:80 [::ffff:7f00:1]:443 a.localhost:8080"}
    RUN.extend(["10.0.0.1", "::ffff:7f00:1", "a.localhost"])
    assert validate(params).errors == (
        f'{field}: backend address 10.0.0.1 ("10.0.0.1:80") {DENIED}',
        f'{field}: backend address 127.0.0.1 ("[::ffff:7f00:1]:443") {DENIED}',
        f'{field}: backend address 127.0.0.1 ("a.localhost:8080") {DENIED}',
    )


@pytest.mark.parametrize(
    "url",
    ["https://backend.example", "https://192.0.2.10/", "https://198.51.100.7:8443/x", "https://[2001:db8::1]/",
     "https://8.8.8.8/", "https://127.example/", "https://localhost.example/", "https://x.127.0.0.1.nip.example/",
     "https://1.2.3.4.example/", "https://0x7f.example/", "https://user@backend.example/"],
)
def test_public_and_named_backends_pass(url) -> None:
    assert validate({"url": url}).ok, validate({"url": url}).errors


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.1.1.1", "1.2.3.256.", "0x1.0x100.1.1", "09.1.1.1", "4294967296", "1..1"])
def test_a_number_that_is_not_an_address_is_refused(host) -> None:
    with pytest.raises(NotAnAddress):
        host_addresses(host)
    RUN.append(host)
    (error,) = validate({"url": f"http://{host}/"}).errors
    assert error.startswith(f'url: host "{host}" (') and "is not an IPv4 address" in error


def test_names_are_not_resolved() -> None:
    """Only numeric hosts and localhost names are checked; names need DNS, which validation never asks."""
    assert host_addresses("backend.example") == ()
    assert host_addresses("4294967295") == (ipaddress.IPv4Address("255.255.255.255"),)


def test_the_allow_list_overrides_the_deny_list() -> None:
    policy = ValidationPolicy(backend_allow=networks(["10.20.0.0/16", "::1/128"]))
    assert validate({"url": "http://10.20.3.4/", "url-netloc-list": "[::1]:80"}, policy).ok
    assert validate({"url": "http://[::ffff:10.20.3.4]/"}, policy).ok
    (error,) = validate({"url": "http://10.21.0.1/"}, policy).errors
    assert error == f'url: backend address 10.21.0.1 ("http://10.21.0.1/") {DENIED}'
    custom = ValidationPolicy(backend_deny=networks(["192.0.2.0/24"]))
    assert validate({"url": "http://127.0.0.1/"}, custom).ok
    assert not validate({"url": "http://192.0.2.1/"}, custom).ok


# -- configuration ------------------------------------------------------------------------

MINIMAL = """
[master]
url = "http://127.0.0.1:8080"
instance_guid = "SOFTINST-1"

[technical_cdn]
software_release_uri = "http://sr.invalid/software.cfg"
"""


def test_validation_section_defaults_and_policy(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL)
    config = load_config(path)
    assert config.validation.backend_deny == list(DEFAULT_BACKEND_DENY)
    assert config.validation.forward_unknown is False
    assert domain_policy_of(config).validation == ValidationPolicy()
    path.write_text(MINIMAL + '[validation]\nforward_unknown = true\nbackend_allow = ["10.0.0.0/8"]\n')
    policy = domain_policy_of(load_config(path)).validation
    assert policy.forward_unknown and policy.backend_allow == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(("key", "value"), [("backend_deny", "10.0.0.0/33"), ("backend_allow", "10.0.0.1/8"),
                                            ("backend_allow", "not-a-network")])
def test_a_bad_network_is_refused_naming_key_and_value(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(MINIMAL + f'[validation]\n{key} = ["192.0.2.0/24", "{value}"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert f"[validation].{key}: " in message and repr(value) in message, message


# -- a reload with another policy re-validates every instance ---------------------------------


class NoDns:
    async def txt_many(self, names):
        raise AssertionError(f"no DNS expected, asked {list(names)}")

    async def addresses(self, name):
        raise AssertionError("no DNS expected")

    async def close(self):
        pass


async def test_a_new_deny_or_allow_list_rechecks_settled_and_cached_instances() -> None:
    private = SharedInstance.of("SOFTINST-private", {"url": "http://10.1.2.3/"})
    public = SharedInstance.of("SOFTINST-public", {"url": "https://backend.example"})
    allowing = DomainPolicy(validation=ValidationPolicy(backend_allow=networks(["10.0.0.0/8"])))
    domains = Domains(policy=allowing, secret=b"backend-test-secret-0123456789", resolver=NoDns())
    step = await domains.step([private, public], {}, 1_000.0)
    assert step.gates[private.guid].ok and step.gates[public.guid].ok
    # the same parameters next tick: settled, nothing validated again
    step = await domains.step([private, public], {}, 1_060.0)
    assert step.gates[private.guid].ok
    # the operator reloads without the allow-list: the settled gate is decided again
    domains.policy = DomainPolicy()
    step = await domains.step([private, public], {}, 1_120.0)
    assert step.gates[private.guid].status is Status.INVALID
    assert step.gates[private.guid].error.endswith(f'url: backend address 10.1.2.3 ("http://10.1.2.3/") {DENIED}')
    assert step.gates[public.guid].ok
    # invalid verdicts are cached by parameter hash: a reload allowing it again is seen too
    domains.policy = replace(DomainPolicy(), validation=ValidationPolicy(backend_deny=()))
    step = await domains.step([private, public], {}, 1_180.0)
    assert step.gates[private.guid].ok


async def test_a_reload_without_the_allow_list_refuses_a_live_private_backend(tmp_path: Path, opened) -> None:
    """What the daemon's SIGHUP does (a new Config on the reconciler), through real ticks."""
    from cdnreq.config import Config
    from test_tick_stages import Dns, reconciler

    def cfg(**validation) -> Config:
        return Config.model_validate({
            "master": {"url": "http://master.invalid", "instance_guid": "REQUESTER"},
            "technical_cdn": {"software_release_uri": "http://sr.invalid/cdn"},
            "daemon": {"database": str(tmp_path / "cdnreq.db")},
            "domain": {"secret_file": str(tmp_path / "domain-secret")},
            "validation": validation,
        })

    private = SharedInstance.of("PRIV", {"url": "http://10.1.2.3/"})
    public = SharedInstance.of("PUB", {"url": "https://pub.example"})
    r, master = await reconciler(opened, cfg(backend_allow=["10.0.0.0/8"]), [private, public], Dns({}))
    first = await r.tick()
    assert first.ok and sorted(master.titles()) == ["cdnreq-PRIV", "cdnreq-PUB"]
    second = await r.tick()
    assert second.planned.get("gate_invalid", 0) == 0
    r.config = cfg()  # reloaded: the default deny-list, no allow-list
    third = await r.tick()
    assert third.ok and third.planned.get("gate_invalid") == 1, third.planned
    assert r.known["PRIV"].published_error.endswith(f'url: backend address 10.1.2.3 ("http://10.1.2.3/") {DENIED}')
    assert r.known["PUB"].published_error is None
    assert sorted(master.titles()) == ["cdnreq-PRIV", "cdnreq-PUB"]  # nothing new requested, nothing destroyed
    assert master.titles("destroyed") == []


@pytest.fixture
async def opened():
    stores = []
    yield stores
    for store in stores:
        await store.close()
