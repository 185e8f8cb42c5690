"""Host names: the single source of truth for what a customer may claim.

cdnreq must never serve a host name to someone who does not own it, so every
host name that enters the system (``custom_domain``, each ``server-alias``
entry) goes through :func:`normalise_host` first, and ownership questions
(which DNS names may carry the challenge, which registrable domain a name
belongs to, whether two claims collide) are answered only here.

Pure: no I/O (the Public Suffix List is the copy bundled with the
``publicsuffixlist`` package, loaded once at import: validate/psl.py), deterministic, and
:func:`normalise_host` raises nothing but :class:`HostError`; the other
functions never raise.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

import idna

from cdnreq.validate.psl import PSL as _PSL
from cdnreq.validate.quoting import quote_value

__all__ = [
    "MAX_ALIASES",
    "MAX_HOST_LENGTH",
    "MAX_LABEL_LENGTH",
    "HostError",
    "covers",
    "normalise_host",
    "overlaps",
    "parse_aliases",
    "proof_names",
    "quote_value",
    "registrable_domain",
]

#: Longest host name, in octets of its ASCII (A-label) form, without the final dot.
MAX_HOST_LENGTH = 253
#: Longest label, in octets of its ASCII (A-label) form.
MAX_LABEL_LENGTH = 63
#: More ``server-alias`` entries than this is refused outright.
MAX_ALIASES = 100

#: Raw input longer than this is refused before any IDNA work. A valid host
#: is at most 253 octets as A-labels; its Unicode spelling is never longer,
#: except for characters UTS #46 ignores (soft hyphens...), which no honest
#: customer types by the hundred.
_MAX_RAW_LENGTH = 1024

# _PSL: the whole Public Suffix List, ICANN and private sections (github.io
# is a suffix). Unknown TLDs follow the list's implicit "*" rule.

_LDH_CHARS = re.compile(r"[a-z0-9-]*", re.ASCII)
# Last labels that URL parsers (WHATWG) read as a number, making the whole
# name an IPv4 address: decimal, or 0x-prefixed hexadecimal.
_NUMERIC_LABEL = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)", re.ASCII)
# Signs of an unexpanded template ({{ x }}, ${X}, {% x %}, <%= x %>).
_TEMPLATE_MARKERS = ("{", "}", "$", "<%", "%>")


class HostError(ValueError):
    """A value that is not an acceptable host name.

    ``str(error)`` is stable and may be shown to the customer as is; it names
    the offending value, quoted and truncated by :func:`quote_value`.
    ``value`` is the raw value, ``reason`` the part after the colon.
    """

    def __init__(self, value: Any, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"{quote_value(value, bare=True)} is not a valid host name: {reason}")


def _invisible(char: str) -> bool:
    """Control and format characters, except the two joiners IDNA allows in context.

    UTS #46 would silently drop some of them (soft hyphen, zero-width space,
    word joiner...); a customer value containing them is refused instead.
    """
    category = unicodedata.category(char)
    return category == "Cc" or (category == "Cf" and char not in "\u200c\u200d")


def _check_shape(raw: str) -> None:
    """Refuse, with a specific reason, things that are not even shaped like a host."""
    if raw == "":
        raise HostError(raw, "it is empty")
    if len(raw) > _MAX_RAW_LENGTH:
        raise HostError(raw, f"it is longer than {MAX_HOST_LENGTH} characters")
    if any(char.isspace() for char in raw):
        raise HostError(raw, "it contains whitespace")
    if any(marker in raw for marker in _TEMPLATE_MARKERS):
        raise HostError(raw, "it contains template text; give the final host name")
    if any(_invisible(char) for char in raw):
        raise HostError(raw, "it contains control or invisible characters")
    if "://" in raw:
        raise HostError(raw, "it contains a URL scheme; give only the host name")
    if "/" in raw or "\\" in raw:
        raise HostError(raw, "it contains a path; give only the host name")
    if "@" in raw:
        raise HostError(raw, "it contains user information; give only the host name")
    if "?" in raw or "#" in raw:
        raise HostError(raw, "it contains a query or fragment; give only the host name")
    if "[" in raw or "]" in raw or raw.count(":") > 1:
        raise HostError(raw, "IP addresses are not accepted; give a host name")
    if ":" in raw:
        raise HostError(raw, "it contains a port; give only the host name")


def _idna_reason(exc: Exception) -> str:
    """A stable reason for an IDNA failure (the library's own text varies and echoes input)."""
    if isinstance(exc, idna.InvalidCodepoint):
        return "contains a character that is not allowed in host names"
    if isinstance(exc, idna.InvalidCodepointContext):
        return "contains a joiner or similar character where it is not allowed"
    if isinstance(exc, idna.IDNABidiError):
        return "mixes right-to-left and left-to-right text in a way host names may not"
    return "is not a valid internationalised label, or is too long once encoded"


def _a_label(raw: str, label: str) -> str:
    """One label (never ``*``) in lower-case ASCII form, or HostError."""
    if label == "":
        raise HostError(raw, "it has an empty label (two dots in a row, or a leading dot)")
    if not label.isascii():
        try:
            label = idna.encode(label, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise HostError(raw, f"label {quote_value(label)} {_idna_reason(exc)}") from None
        if "." in label:
            raise HostError(raw, "it contains a character that stands for a dot; use \".\"")
    label = label.lower()
    shown = quote_value(label)
    if len(label) > MAX_LABEL_LENGTH:
        raise HostError(raw, f"label {shown} is longer than {MAX_LABEL_LENGTH} characters")
    if not _LDH_CHARS.fullmatch(label):
        raise HostError(
            raw, f"label {shown} may contain only letters, digits and hyphens"
        )
    if label.startswith("-") or label.endswith("-"):
        raise HostError(raw, f"label {shown} must not start or end with a hyphen")
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise HostError(
                raw, f"label {shown} has \"--\" in third and fourth position, which is reserved"
            )
        try:
            unicode = idna.decode(label)
            again = idna.encode(unicode).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            raise HostError(raw, f"label {shown} is not valid punycode") from None
        if again != label:
            raise HostError(raw, f"label {shown} is not the canonical punycode form")
    return label


def normalise_host(raw: str, *, wildcard: bool = False) -> str:
    """Return the canonical form of a host name, or raise :class:`HostError`.

    Canonical: lower-case ASCII, Unicode labels as IDNA A-labels (UTS #46
    mapping), no final dot, at least two labels, the last one not a number.
    With ``wildcard=True`` a first label ``*`` is allowed and kept
    (``*.example.com``). Nothing is stripped: whitespace, a scheme, a port or a
    path anywhere is an error, not something to clean up.
    """
    if not isinstance(raw, str):
        raise HostError(raw, "it is not a string")
    if _already_canonical(raw):
        return raw
    _check_shape(raw)
    host = raw[:-1] if raw.endswith(".") else raw
    if host == "":
        raise HostError(raw, "it is empty")
    labels = host.split(".")

    star = False
    if "*" in host:
        if not wildcard:
            raise HostError(raw, "wildcards (\"*\") are not allowed here")
        if labels[0] != "*" or any("*" in label for label in labels[1:]):
            raise HostError(raw, "\"*\" is only allowed as the whole first label, as in *.example.com")
        star = True
        labels = labels[1:]

    ascii_labels = [_a_label(raw, label) for label in labels]
    if len(ascii_labels) < 2:
        if star:
            raise HostError(raw, "a wildcard needs at least two labels after \"*.\"")
        raise HostError(raw, "it needs at least two labels, as in example.com")
    if _NUMERIC_LABEL.fullmatch(ascii_labels[-1]):
        raise HostError(raw, "IP addresses are not accepted; give a host name")
    if star:
        ascii_labels.insert(0, "*")
    result = ".".join(ascii_labels)
    if len(result) > MAX_HOST_LENGTH:
        raise HostError(raw, f"it is longer than {MAX_HOST_LENGTH} characters once encoded")
    return result


_CANONICAL = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def _already_canonical(raw: str) -> bool:
    """The common case, answered without IDNA work: a lower-case LDH name
    that normalisation would return unchanged (no `--` anywhere, so no
    A-label or reserved label needs checking)."""
    return (
        len(raw) <= MAX_HOST_LENGTH
        and "--" not in raw
        and _CANONICAL.fullmatch(raw) is not None
        and _NUMERIC_LABEL.fullmatch(raw.rpartition(".")[2]) is None
    )


def _base(host: str) -> str:
    """``host`` without a leading ``*.``."""
    return host[2:] if host.startswith("*.") else host


def registrable_domain(host: str) -> str | None:
    """The registrable domain ("public suffix + one label") of ``host``.

    Uses the whole Public Suffix List, including the private section
    (``alice.github.io`` -> ``alice.github.io``; ``a.b.shop.co.uk`` ->
    ``shop.co.uk``). A wildcard is judged by the part after ``*.``. ``None``
    when the host is itself a public suffix (``co.uk``, ``github.io``), has no
    registrable part, or is not a valid host name. Never raises.
    """
    try:
        host = normalise_host(host, wildcard=True)
    except HostError:
        return None
    try:
        result = _PSL.privatesuffix(_base(host))
    except Exception:  # pragma: no cover - the library is not expected to raise
        return None
    return result if isinstance(result, str) and result else None


def proof_names(host: str, registrable: str) -> list[str]:
    """The names whose challenge record may prove ``host``, most specific first.

    ``host`` itself (without a leading ``*.``), then each parent down to and
    including ``registrable``: ``a.b.example.com`` under ``example.com`` gives
    ``["a.b.example.com", "b.example.com", "example.com"]``. Both arguments
    must be normalised; if ``host`` is not ``registrable`` or below it, the
    answer is ``[]`` (nothing can prove it). Never raises.
    """
    if not isinstance(host, str) or not isinstance(registrable, str) or not registrable:
        return []
    base = _base(host)
    if base != registrable and not base.endswith("." + registrable):
        return []
    names = [base]
    name = base
    while name != registrable:
        name = name.split(".", 1)[1]
        names.append(name)
    return names


def challenge_names(label: str, host: str, registrable: str) -> list[str]:
    """The TXT record names that may prove ``host`` (its proof names under
    the challenge ``label``), most specific first, without those longer than
    DNS allows: a host near 253 octets is proven at a shorter parent (its
    own record could neither be created nor looked up)."""
    return [name for n in proof_names(host, registrable) if len(name := f"{label}.{n}") <= MAX_HOST_LENGTH]


def covers(wildcard: str, host: str) -> bool:
    """Whether the wildcard ``*.d`` covers ``host`` (both normalised).

    ``*.d`` covers every name strictly below ``d`` at any depth, and any
    wildcard ``*.x.d`` (or ``*.d`` itself); it does not cover ``d``. A
    non-wildcard first argument covers nothing. Never raises.
    """
    if not isinstance(wildcard, str) or not isinstance(host, str):
        return False
    if not wildcard.startswith("*.") or len(wildcard) <= 2:
        return False
    domain = wildcard[2:]
    if host.startswith("*."):
        return _base(host) == domain or host.endswith("." + domain)
    return host.endswith("." + domain)


def overlaps(a: str, b: str) -> bool:
    """Whether two normalised hosts may not belong to two different shared instances.

    True when they are equal, when one covers the other, and also for
    ``*.d`` against ``d``: like the reference requester, a claim is judged
    with its ``*.`` stripped, so the apex and its wildcard go to one owner.
    Never raises.
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return _base(a) == _base(b) or covers(a, b) or covers(b, a)


def _alias_error(value: Any, reason: str) -> str:
    return f"server-alias: {quote_value(value)} {reason}"


def parse_aliases(raw: str, custom_domain: str | None) -> tuple[list[str], list[str]]:
    """Check a ``server-alias`` value against ``custom_domain``.

    Returns ``(aliases, errors)``. Entries are separated by any run of
    whitespace; each is normalised (wildcards allowed) and must lie under the
    same registrable domain as ``custom_domain``. Duplicates and an alias
    equal to ``custom_domain`` are dropped silently, first position kept.
    Aliases that fail are left out and reported; the caller decides whether
    the instance is refused (it should be when ``errors`` is not empty).
    Never raises.
    """
    if raw is None:
        return [], []
    if not isinstance(raw, str):
        return [], ["server-alias: must be a string"]
    # Bounded work whatever the size: at most MAX_ALIASES + 1 pieces.
    entries = raw.split(maxsplit=MAX_ALIASES)
    if not entries:
        return [], []
    if len(entries) > MAX_ALIASES:
        return [], [f"server-alias: more than {MAX_ALIASES} entries given; at most {MAX_ALIASES} are allowed"]

    main, problem = _main_domain(custom_domain)
    if main is None:
        return [], [problem]
    aliases: list[str] = []
    errors: list[str] = []
    seen: set[str] = {main[0]}
    for entry in entries:
        alias, error = _check_alias(entry, main[1])
        if alias is not None:
            if alias not in seen:  # a duplicate, or custom_domain itself: dropped silently
                seen.add(alias)
                aliases.append(alias)
        elif error not in errors:
            errors.append(error)
    return aliases, errors


def _main_domain(custom_domain: str | None) -> tuple[tuple[str, str] | None, str]:
    """((custom_domain normalised, its registrable domain), "") when aliases
    can be checked against it; else (None, why not)."""
    if custom_domain is None or custom_domain == "":
        return None, "server-alias: aliases require a custom_domain; set custom_domain or remove server-alias"
    try:
        main = normalise_host(custom_domain, wildcard=True)
    except Exception:  # a HostError; anything else too, since parse_aliases never raises
        return None, "server-alias: cannot be checked because custom_domain is not a valid host name"
    main_registrable = registrable_domain(main)
    if main_registrable is None:
        return None, (
            "server-alias: cannot be checked because custom_domain has no registrable domain "
            "(it is a public suffix)"
        )
    return (main, main_registrable), ""


def _check_alias(entry: str, main_registrable: str) -> tuple[str | None, str]:
    """(the alias normalised, "") when it lies under `main_registrable`; else
    (None, the error)."""
    try:
        alias = normalise_host(entry, wildcard=True)
    except HostError as exc:
        return None, f"server-alias: {exc}"
    except Exception:  # pragma: no cover - defensive: parse_aliases never raises
        return None, _alias_error(entry, "could not be checked as a host name")
    registrable = registrable_domain(alias)
    if registrable is None:
        return None, _alias_error(entry, "is a public suffix or directly under one; nobody can own all of it")
    if registrable != main_registrable:
        return None, _alias_error(
            entry, f"is not under {main_registrable}, the registrable domain of custom_domain"
        )
    return alias, ""
