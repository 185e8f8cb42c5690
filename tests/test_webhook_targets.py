"""Which addresses a webhook may be sent to (cdnreq.decide.deliveries.allowed_address):
IPv6 forms that Python counts as global but that lead to a private IPv4
address are judged by that address."""

from __future__ import annotations

import pytest

from cdnreq.decide.deliveries import allowed_address


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "::1", "::", "169.254.169.254", "fe80::1%eth0", "ff02::1", "224.0.0.1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::127.0.0.1", "::10.0.0.1",  # IPv4-compatible: Python calls them global
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",  # NAT64 of loopback and of the metadata address: global to Python
    "2002:7f00:1::", "2002:a00:1::1",  # 6to4 of loopback and of 10.0.0.1: global to Python
    "64:ff9b:1::a00:1",
])
def test_private_addresses_in_any_form_are_refused(address: str) -> None:
    assert not allowed_address(address, [])


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808",
                                     "2002:808:808::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert allowed_address(address, [])


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1"])
def test_allow_networks_lets_an_operator_reach_loopback_in_any_form(address: str) -> None:
    assert allowed_address(address, ["127.0.0.0/8"])
    assert not allowed_address(address, ["10.0.0.0/8"])
