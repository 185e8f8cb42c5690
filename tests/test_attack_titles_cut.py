"""Attack on issue 16: a customer's title is cut to MAX_TITLE only when it is
stored, so the listing keeps every title whole through validation and
planning (the tick's peak): a hostile master or customers with huge titles
add up to the body's size in live strings, where before titles were dropped
as each entry was read."""

from __future__ import annotations

import orjson

from cdnreq.decide.names import MAX_TITLE
from cdnreq.listing import read_listing


def test_listed_titles_are_cut_when_read():
    entries = [{"instance_guid": f"G{n}", "state": "started", "parameters": {}, "title": "t" * 1_000_000}
               for n in range(20)]
    listing = read_listing(orjson.dumps({"result_list": entries}))
    held = sum(len(i.title or "") for i in listing.instances)
    assert held <= 20 * MAX_TITLE, f"{held} characters of titles held by the listing"
