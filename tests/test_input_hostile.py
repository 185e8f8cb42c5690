"""Issue 10, items 1, 10 and 11, end to end: hostile listing entries next to
healthy ones, through `cdnreq once` against the master double.

The double lists what any master could deliver: NaN, Infinity, 1e400, a lone
surrogate in a key and in a value, an unknown parameter nested 250 and 1,100
levels deep, an integer beyond 64 bits, a byte that is not UTF-8, an entry
without parameters, one without state, and a guid listed twice with
different content. Each hostile instance is told its error, once; the
healthy ones are requested with values a master may spell differently
(-0.0, 1.0, 2**64-1), and the next tick requests nothing: they read back
equal. A live instance whose entry turns hostile keeps its technical entry.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.double import Double
from cdnreq.decide.titles import technical_title
from test_faults_hostile import CDNREQ, PREFIX, ThreadedDouble, write_config

pytestmark = pytest.mark.faults

POST = "slapos.post.v0.software_instance"
ERROR = "slapos.put.v0.software_instance_error"
GOOD = {
    f"SOFTINST-ok-{n}": {"url": f"https://ok-{n}.example", "x-zero": -0.0, "x-one": 1.0, "x-big": 2**64 - 1, "x-tiny": 1e-7}
    for n in range(4)
}
# placeholder value in the double -> what the listing really holds
RAW = {
    '"@NAN@"': b"NaN",
    '"@INF@"': b"Infinity",
    '"@1E400@"': b"1e400",
    '"@SURROGATE@"': b'"a\\ud800"',
    '"@SURROGATE-KEY@"': b'{"\\udc00": 1}',
    '"@DEEP-250@"': b"[" * 250 + b"]" * 250,
    '"@DEEP-1100@"': b"[" * 1100 + b"]" * 1100,
    '"@2**70@"': b"%d" % 2**70,
    '"@FF@"': b'"\xff"',
}
HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "SOFTINST-bad-nan": ({"x": "@NAN@"}, "x: NaN is not a JSON number (only finite numbers are)"),
    "SOFTINST-bad-inf": ({"x": "@INF@"}, "x: Infinity is not a JSON number (only finite numbers are)"),
    "SOFTINST-bad-1e400": ({"x": "@1E400@"}, "x: Infinity is not a JSON number (only finite numbers are)"),
    "SOFTINST-bad-surrogate": ({"x": "@SURROGATE@"}, "x: the value holds a lone surrogate ('\\ud800' at character 1)"),
    "SOFTINST-bad-surrogate-key": ({"x": "@SURROGATE-KEY@"}, "x: the name holds a lone surrogate ('\\udc00' at character 0)"),
    "SOFTINST-bad-deep-250": ({"x": "@DEEP-250@"}, "x: nested deeper than 32 levels"),
    "SOFTINST-bad-deep-1100": ({"x": "@DEEP-1100@"}, "parameters: nested deeper than 512 levels"),
    "SOFTINST-bad-2**70": ({"x": "@2**70@"}, "x: the number 1.1805916207174113e+21 is beyond the 64-bit integer range"),
    "SOFTINST-bad-ff": ({"x": "@FF@"}, "parameters: not valid UTF-8 at byte 34"),
    "SOFTINST-bad-no-parameters": ({}, "parameters: missing from the listing"),
    "SOFTINST-bad-no-state": ({}, "state: missing from the listing"),
    "SOFTINST-bad-twice": ({}, "listed twice with different content"),
}


class HostileDouble(Double):
    """The double, listing raw bytes no JSON encoder would write."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.extra: list[bytes] = []  # raw entries appended to result_list

    def list_body(self) -> bytes:
        body = super().list_body()
        for placeholder, raw in RAW.items():
            body = body.replace(placeholder.encode(), raw)
        if self.extra:
            body = body[: -len(b"]}")] + b"," + b",".join(self.extra) + b"]}"
        return body


def hostile_double() -> HostileDouble:
    double = HostileDouble(publish_after="immediately")
    for guid, params in GOOD.items():
        double.add(guid, params)
    for guid, (params, _) in HOSTILE.items():
        double.add(guid, {"url": "https://bad.example", **params})
    del double.customers["SOFTINST-bad-no-parameters"]["parameters"]
    del double.customers["SOFTINST-bad-no-state"]["state"]
    double.extra.append(json.dumps({"instance_guid": "SOFTINST-bad-twice", "state": "started",
                                    "parameters": {"url": "https://other.example"}}).encode())
    double.invalidate()
    return double


def once(config: Path) -> dict[str, Any]:
    result = subprocess.run([CDNREQ, "once", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return next(json.loads(line) for line in result.stderr.splitlines() if '"tick done"' in line)


def test_hostile_listing_entries_are_their_own_errors_and_nothing_more(tmp_path: Path) -> None:
    double = hostile_double()
    with ThreadedDouble(double) as served:
        # unknown keys forwarded, so the odd numbers below reach the master and are read back
        config = write_config(tmp_path / "c.toml", {"url": served.url}, tmp_path / "state" / "cdnreq.db",
                              validation={"forward_unknown": True})
        first = once(config)
        second = once(config)
        technical, published, errors, calls = served.run(
            lambda: (json.loads(json.dumps(double.technical)), dict(double.published), dict(double.errors), dict(double.calls)))

        # the healthy ones are requested, as listed, and read back equal
        assert set(technical) == {technical_title(PREFIX, g) for g in GOOD}
        for guid, params in GOOD.items():
            assert technical[technical_title(PREFIX, guid)]["parameters"] == params
            assert published[guid].get("domain"), published[guid]
        # each hostile one is told its own error, once
        for guid, (_, problem) in HOSTILE.items():
            assert json.loads(published[guid]["request-error-list"]) == [problem], guid
            assert errors[guid] == f"The CDN could not accept this entry: {problem}"
        assert first["planned"]["unusable"] == 5 and second["planned"]["unusable"] == 5
        assert calls[ERROR] == len(HOSTILE)
        # the second tick reads back and requests nothing
        assert calls[POST] == len(GOOD)
        assert "request" not in second["planned"] and "update" not in second["planned"]

        # a live entry turned hostile keeps its technical entry, untouched, and is told why
        live = "SOFTINST-ok-0"
        served.run(lambda: double.change(live, {**GOOD[live], "x-one": "@FF@"}))
        before = served.run(lambda: json.dumps(double.technical[technical_title(PREFIX, live)], sort_keys=True))
        third = once(config)
        after, destroyed, message = served.run(lambda: (
            json.dumps(double.technical.get(technical_title(PREFIX, live)), sort_keys=True),
            sum(double.destroyed.values()), double.errors.get(live)))
        assert after == before and destroyed == 0
        assert message is not None and "not valid UTF-8" in message
        assert third["planned"]["unusable"] == 6 and "update" not in third["planned"]
        assert served.run(lambda: double.calls[POST]) == len(GOOD)
    print(f"\nhostile listing entries end to end: {len(HOSTILE)} hostile instances next to {len(GOOD)} good ones, "
          f"plus one live instance turned hostile; ticks planned {first['planned']} then {second['planned']}")
