"""The Public Suffix List the rules run on, and its digest.

The list is the copy bundled with the ``publicsuffixlist`` package, read
once at import. `python -m publicsuffixlist.update` rewrites that copy in
place, the package's version unchanged: the stamp of kept verdicts and
settled gates (validate/version.py) names the list by the digest of the
very bytes read, so a restart after such an update decides every instance
again, as it does after an upgrade of the package.
"""

from __future__ import annotations

import hashlib

import publicsuffixlist
from publicsuffixlist import PublicSuffixList

__all__ = ["DIGEST", "PSL", "load"]


def load() -> tuple[PublicSuffixList, str]:
    """The list, ICANN and private sections, and the sha256 of its text."""
    with open(publicsuffixlist.PSLFILE, "rb") as source:
        data = source.read()
    return PublicSuffixList(data), hashlib.sha256(data).hexdigest()


PSL, DIGEST = load()
