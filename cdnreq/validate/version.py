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
from importlib.metadata import PackageNotFoundError, version

VALIDATOR_VERSION = 1

#: where the rules of a verdict and of a settled gate are written (package-relative)
SOURCES = (
    "validate/*.py",
    "schemas/shared-instance.schema.json",
    "decide/gate.py",
)
#: their digest when VALIDATOR_VERSION was last set (see tests/test_decisions.py)
SOURCES_DIGEST = "b061000e40e58e6060eb5eca86c37f264be482f7aded0c5e4eba8146897c8e38"


def _suffix_list_version() -> str:
    """Which public suffix list decides the registrable domains."""
    try:
        return version("publicsuffixlist")
    except PackageNotFoundError:  # pragma: no cover - a dependency
        return "unknown"


_SUFFIXES = _suffix_list_version()


def stamp(policy: object) -> str:
    """The stamp of verdicts and gates decided under `policy` (the domain
    policy, which holds the validation policy) by this version of the rules."""
    text = f"{VALIDATOR_VERSION}|{_SUFFIXES}|{policy!r}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
