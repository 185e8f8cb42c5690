"""The validator's version: a stored verdict or settled gate is trusted only
under the rules and the configuration it was computed with.

A restarted daemon reuses the verdicts and settled gates of the instances
whose parameters did not change, instead of validating 100,000 instances
again. That is only right while the rules are the same: VALIDATOR_VERSION
names them. tests/test_decisions.py holds a digest of the sources the rules
live in (SOURCES) and fails when they change without a new version.
"""

from __future__ import annotations

import hashlib
import platform
import unicodedata
from dataclasses import fields, is_dataclass
from importlib.metadata import PackageNotFoundError, version

from cdnreq.validate import psl

VALIDATOR_VERSION = 6

#: where the rules of a verdict and of a settled gate are written (package-relative)
SOURCES = (
    "validate/*.py",
    "schemas/shared-instance.schema.json",
    "decide/gate.py",
    "decide/hostindex.py",
)
#: their digest when VALIDATOR_VERSION was last set, or when they last changed
#: without a rule changing (then say so in the commit; see tests/test_decisions.py).
#: Last: version 5, a URL's user and password are masked (***) wherever a message quotes a value (validate/quoting.py);
#: "_" that is not valid JSON is refused naming where, not quoting what; a query parameter named like a secret is masked,
#: an unknown parameter named like one is not quoted (validate/quoting.quote_named).
#: Since: validate/policy.networks orders the deny and allow lists (same rules).
#: Since: validate/quoting.py masks in one pass, not by regular expressions (same rule; a hostile value read once).
#: Since: validate/quoting._START masks after a special scheme without its two slashes too ("https:/user:pw@"), part of
#: version 5's rule (not released without it).
#: Since: validate/quoting.quote_named escapes the key it names (a nested key was named raw), part of version 5's rule.
#: Since: validate/quoting.SECRET_WORDS, one list with scrub.py, and "pwd" in it, part of version 5's rule.
#: Since: validate/quoting._BARE_HEAD reads to the first ":" without backtracking (same rule; speed only).
#: Since: validate/quoting._SECRET_NAME (parameters named like a secret) is SECRET_WORDS too, part of version 5's rule.
#: Since: a fragment's secret (#access_token=), "pass", and "name[]=" are masked too, part of version 5's rule.
#: Since: decide/gate.py HostIndex.apply, a contested host just claimed is not taken again in the same tick (no verdict nor settled
#: gate changes: a kept gate is trusted only with its claims).
#: Last: version 6, masking's known gaps closed (validate/quoting.py): a query parameter named like a secret once its
#: name is decoded (?tok%65n=), a bare user name holding an "@" (alice@corp:pw@host), a value longer than what is read
#: masked as if an "@" followed the cut; a message already published with one of these unmasked is told again, masked.
#: Since: validate/schema.py quotes a long value's head through quoting.masked_head (the one rule; its own _MASKED gone).
#: Since: decide/gate.py decide, a pending instance decided without DNS answers (its lookups not due) skips
#: looking for them (the same gate, sooner).
#: Since: decide/hostindex.py holds HostIndex and Claims, moved out of decide/gate.py whole (same rules); a pending gate
#: made of the same verdict, challenge and policy (the same objects) as the last tick's is that gate (gate._pending; the
#: same gate, sooner).
#: Since: validate/quoting.py masks a password holding an unencoded "#", "?" or "/" (an authority whose ":" has no
#: port: to the last "@" after it) and a query secret named with an index or a number (?password[0]=, ?token1=), part
#: of version 6's rule (not released without it; were 6 out, these would need version 7).
#: Since: validate/schema.show_name masks a URL's password in a parameter name as in a value, part of version 6's rule.
#: Since: validate/quoting.masked_head quotes a PEM block's label only, never its body (a private key in the wrong
#: field), part of version 6's rule.
SOURCES_DIGEST = "d63b3eb5bb0fae9fc628e57598273a86f0c2c44c24ade12832c3e68dc9202f28"


#: the libraries a verdict is made by, besides cdnreq's own sources: the public
#: suffix list (registrable domains; its content too, see validate/psl.py),
#: idna (host names, UTS 46), cryptography (certificates and keys),
#: jsonschema (the instance schema); an upgrade of any of them, like one of Python (its Unicode tables: unicodedata,
#: stringprep), decides every instance afresh
LIBRARIES = ("publicsuffixlist", "idna", "cryptography", "jsonschema")


def _library_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"


def _openssl() -> str:
    """The OpenSSL that parses certificates and keys: cryptography's own in
    its wheels, the system's in a distribution's build (upgraded beneath an
    unchanged cryptography version)."""
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except (ImportError, AttributeError):  # pragma: no cover - another cryptography
        return "unknown"


def _runtime() -> str:
    """What the rules run on: the libraries' versions, the public suffix
    list's content (updated in place, its package's version unchanged, by
    publicsuffixlist.update), OpenSSL's version and Python's, with its
    Unicode database."""
    libraries = ",".join(f"{name}={_library_version(name)}" for name in LIBRARIES)
    return (
        f"{libraries}|psl={psl.DIGEST}|openssl={_openssl()}|python={platform.python_version()}"
        f"|unicode={unicodedata.unidata_version}"
    )


_RUNTIME = _runtime()


#: the domain policy's fields no verdict nor settled gate is decided by: they
#: time and judge the re-checks of proven hosts (decide/recheck.py), which
#: every tick runs with today's policy, waking the owners they make due. Moving
#: one must not decide 100,000 instances again. A field added counts unless named here.
RECHECK_ONLY = frozenset({"recheck_interval_s", "grace_s", "cdn_targets"})


def stamp(policy: object) -> str:
    """The stamp of verdicts and gates decided under `policy` (the domain
    policy, which holds the validation policy; its RECHECK_ONLY fields left
    out) by this version of the rules, running on these libraries."""
    if is_dataclass(policy):
        policy = tuple((f.name, getattr(policy, f.name)) for f in fields(policy) if f.name not in RECHECK_ONLY)
    text = f"{VALIDATOR_VERSION}|{_RUNTIME}|{policy!r}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
