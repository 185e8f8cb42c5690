"""The ``ciphers`` parameter: an ordered, space-separated list of TLS ciphers.

Customers may write the names some older front-ends used (``RSA-AES256-CBC-SHA``);
those are rewritten to the OpenSSL spelling with a warning. A name outside the
supported set is an error. Duplicates are dropped, keeping the first position,
because the order is the server's preference order.

Pure: no I/O, never raises.
"""

from __future__ import annotations

from cdnreq.validate.hosts import quote_value

__all__ = [
    "LEGACY_NAMES",
    "MAX_ENTRIES",
    "SUPPORTED_CIPHERS",
    "check_ciphers",
]

#: OpenSSL names the CDN front-end accepts, in the recommended order.
SUPPORTED_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA",
    "AES256-SHA",
    "AES128-SHA",
    "ECDHE-RSA-DES-CBC3-SHA",
    "DES-CBC3-SHA",
)

#: Older spellings still seen in customer requests -> the OpenSSL name.
LEGACY_NAMES: dict[str, str] = {
    "ECDHE-ECDSA-WITH-CHACHA20-POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-WITH-CHACHA20-POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-CBC-SHA": "ECDHE-RSA-AES256-SHA",
    "ECDHE-RSA-AES128-CBC-SHA": "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-CBC-SHA": "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-CBC-SHA": "ECDHE-ECDSA-AES128-SHA",
    "RSA-AES256-CBC-SHA": "AES256-SHA",
    "RSA-AES128-CBC-SHA": "AES128-SHA",
    "ECDHE-RSA-3DES-EDE-CBC-SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "RSA-3DES-EDE-CBC-SHA": "DES-CBC3-SHA",
}

#: More entries than this is refused outright (there are only 14 ciphers).
MAX_ENTRIES = 100

#: How many unknown names one error message lists before summarising.
_MAX_LISTED_UNKNOWN = 10

_SUPPORTED_SET = frozenset(SUPPORTED_CIPHERS)
_SUPPORTED_TEXT = " ".join(SUPPORTED_CIPHERS)


def check_ciphers(raw: str) -> tuple[str, list[str], list[str]]:
    """Check and normalise a ``ciphers`` value.

    Returns ``(normalised, warnings, errors)``. ``normalised`` is the OpenSSL
    names in the customer's order, duplicates removed, joined by one space;
    it is only meaningful when ``errors`` is empty.
    """
    if not isinstance(raw, str):  # typed as str, but never trust the caller
        return "", [], ["ciphers: must be a string"]
    entries = raw.split()
    if not entries:
        return "", [], []
    if len(entries) > MAX_ENTRIES:
        return "", [], [
            f"ciphers: {len(entries)} entries given; at most {MAX_ENTRIES} are allowed"
        ]

    warnings: list[str] = []
    unknown: list[str] = []
    kept: list[str] = []
    seen: set[str] = set()
    warned_legacy: set[str] = set()
    warned_duplicate: set[str] = set()

    for entry in entries:
        name = LEGACY_NAMES.get(entry, entry)
        if name != entry and entry not in warned_legacy:
            warned_legacy.add(entry)
            warnings.append(f"ciphers: {quote_value(entry)} is an old name, used as {quote_value(name)}")
        if name not in _SUPPORTED_SET:
            if entry not in unknown:
                unknown.append(entry)
            continue
        if name in seen:
            if name not in warned_duplicate:
                warned_duplicate.add(name)
                warnings.append(
                    f"ciphers: {quote_value(name)} is listed more than once; its first position is kept"
                )
            continue
        seen.add(name)
        kept.append(name)

    errors: list[str] = []
    if unknown:
        listed = ", ".join(quote_value(u) for u in unknown[:_MAX_LISTED_UNKNOWN])
        if len(unknown) > _MAX_LISTED_UNKNOWN:
            listed += f" and {len(unknown) - _MAX_LISTED_UNKNOWN} more"
        verb = "is" if len(unknown) == 1 else "are"
        errors.append(f"ciphers: {listed} {verb} not supported (supported: {_SUPPORTED_TEXT})")
    return " ".join(kept), warnings, errors
