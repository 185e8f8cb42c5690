"""The customers of the double: deterministic guids and parameters, padded on demand."""

from __future__ import annotations

from bench.double.wire import dumps


def customer_guid(index: int) -> str:
    return f"SOFTINST-{index}"


def customer_parameters(index: int, with_domains: bool = False, revision: int = 0) -> dict[str, str]:
    """The deterministic parameters of customer `index` (a `revision` changes the backend URL)."""
    url = f"https://backend-{index}.example" + (f"/r{revision}" if revision else "")
    parameters = {"url": url}
    if with_domains:
        parameters["custom_domain"] = f"www.d{index}.example"
    return parameters


def padded(parameters: dict[str, str], size: int, index: int, piece: int = 4000) -> dict[str, str]:
    """`parameters` grown to about `size` bytes of JSON (never more) with
    unknown keys of `piece` characters each (4,000: a certificate chain's
    worth of text; a few: the many small keys that cost the most as Python
    objects), distinct per customer."""
    pieces = max(0, size - len(dumps(parameters))) // (piece + 20)  # a key and its quotes: 20 bytes
    for n in range(pieces):
        parameters[f"x-pad-{n:05d}"] = (f"{index:08d}-{n:05d}-" * (piece // 15 + 1))[:piece]
    return parameters


def index_of(guid: str) -> str:
    return guid.removeprefix("SOFTINST-")
